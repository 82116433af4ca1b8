"""Which models are loaded, for how long, and which one leaves when another needs the room.

Requests hold a `Lease` on a model while they use it; a model with leases is never unloaded. When the last
lease ends the model stays for its keep_alive (the request's, else the model's, else the default), then a
reaper thread unloads it. Loading a model that would exceed `max_loaded_models` or the memory budget (weights
plus KV cache, estimated from the GGUF header before loading) first unloads the least recently used idle
models; if the busy ones leave no room, the load waits for them. Pinned models never expire or leave.

`load_fn` starts a model's backend (for local models, a runner process); it and `estimate_fn` are also the seams
tests use to exercise the policy without llama.cpp.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from gateway.backends.base import Backend
from gateway.backends.context_size import ContextChoice
from gateway.engine import huge_pages
from gateway.engine.cpu import resolve_repack
from gateway.engine.executor import ExecutorSettings
from gateway.engine.llama import ContextParams, LoadParams, devices, supports_gpu_offload
from gateway.models.registry import ModelSpec
from gateway.types import ErrorKind, GatewayError

log = logging.getLogger("gateway.pool")

LoadFn = Callable[[ModelSpec, ExecutorSettings], Backend]
ContextFn = Callable[[ModelSpec, ExecutorSettings, int], ContextChoice | None]  # n_ctx and why; None: as set
EstimateFn = Callable[[ModelSpec, ExecutorSettings], int]
VramFn = Callable[[ModelSpec, ExecutorSettings, int], int]
REAP_WAIT_MAX = 3600.0  # seconds the reaper sleeps at most before looking again


@dataclass
class PoolSettings:
    keep_alive: float = 300.0  # seconds an idle model stays; negative: forever; 0: unload when idle
    max_loaded_models: int = 3  # 0: no limit
    memory_budget: int = 0  # bytes for all loaded models; 0: no limit
    load_timeout: float = 600.0  # how long a load may wait for busy models to make room
    pinned: set[str] = field(default_factory=set)  # names never unloaded (besides specs marked pinned)


@dataclass
class Loaded:
    """One loaded model. Mutable fields change only under the pool's lock."""

    spec: ModelSpec
    backend: Backend
    size: int
    load_seconds: float
    pinned: bool = False
    keep_alive: float = 300.0
    size_vram: int = 0
    in_use: int = 0
    last_used: float = field(default_factory=time.monotonic)
    expires_at: float | None = None  # monotonic; None while in use or kept forever
    context_reason: str = ""  # why its context has the size it has
    file_id: tuple | None = None  # the weights file's (size, mtime) at load: a file copied over it is a new model
    retired: bool = False  # its model changed: out of the pool, closed when its last request ends

    def expires_at_epoch(self) -> float | None:
        """When it will be unloaded if nothing else uses it (the clock starts when its last request ends)."""
        if self.pinned or self.keep_alive < 0:
            return None
        if self.expires_at is None:
            return time.time() + self.keep_alive
        return time.time() + (self.expires_at - time.monotonic())


class Lease:
    """A request's hold on a loaded model; `release` once, with the request's keep_alive in seconds (None keeps
    the model's current one)."""

    def __init__(self, pool: ModelPool, entry: Loaded, load_seconds: float):
        self._pool = pool
        self._entry = entry
        self.backend = entry.backend
        self.load_seconds = load_seconds
        self._released = False

    def release(self, keep_alive: float | None = None) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._entry, keep_alive)


class ModelPool:
    def __init__(self, base: ExecutorSettings, settings: PoolSettings, load_fn: LoadFn, estimate_fn: EstimateFn,
                 vram_fn: VramFn = lambda _spec, _settings, _size: 0, context_fn: ContextFn | None = None):
        self._base = base
        self._context_fn = context_fn or (lambda _spec, _settings, _budget: None)
        self.settings = settings
        self._load_fn = load_fn
        self._estimate_fn = estimate_fn
        self._vram_fn = vram_fn
        self._loaded: dict[str, Loaded] = {}
        self._loading: dict[str, int] = {}  # name → estimated bytes, while a thread loads it
        self._retiring: list[Loaded] = []  # replaced models still finishing requests (they still use memory)
        lock = threading.RLock()
        self._cond = threading.Condition(lock)  # requests waiting for room or for a load
        # The reaper waits on a condition of its own, woken only when an expiry comes before the one it waits
        # for: releases happen on every request, and a wake-up per request is a core taken from the decode.
        self._reaper_cond = threading.Condition(lock)
        self._reap_at = float("inf")  # monotonic time the reaper wakes at by itself
        self._closed = False
        self._reaper = threading.Thread(target=self._reap, name="model-reaper", daemon=True)
        self._reaper.start()

    # -- leases ----------------------------------------------------------------------------------------------

    def acquire(self, spec: ModelSpec, load_options: dict[str, int] | None = None,
                on_loading: Callable[[], None] | None = None) -> Lease:
        """A lease on `spec`'s backend, loading it (and making room) if needed. `load_options` (n_threads,
        n_gpu_layers) apply only if this call loads the model; `on_loading` is told when the caller must wait
        for a load."""
        deadline = time.monotonic() + self.settings.load_timeout
        told = False
        with self._cond:
            while True:
                entry = self._loaded.get(spec.name)
                if entry is not None:
                    entry.in_use += 1
                    entry.expires_at = None
                    return Lease(self, entry, 0.0)
                if not told and on_loading is not None:
                    on_loading()
                    told = True
                if spec.name not in self._loading:
                    settings = self._settings_for(spec, load_options or {})
                    size = self._estimate_fn(spec, settings)
                    victims = self._make_room(spec, size)
                    if victims is not None:
                        self._loading[spec.name] = size
                        break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise GatewayError(ErrorKind.UNAVAILABLE,
                                       f"The model `{spec.name}` could not be loaded: the models in use leave no "
                                       f"room for it (max_loaded_models {self.settings.max_loaded_models}, memory "
                                       f"budget {_gib(self.settings.memory_budget)}).")
                self._cond.wait(min(remaining, 1.0))
        for victim in victims:
            self._close(victim, "to make room for " + spec.name)
        return self._load(spec, settings, size)

    def _load(self, spec: ModelSpec, settings: ExecutorSettings, size: int) -> Lease:
        started = time.monotonic()
        try:
            backend = self._load_fn(spec, settings)
        except Exception as exc:  # whatever failed, the loading state is cleared so the next request tries again
            log.error("loading %s failed: %s", spec.name, exc)
            with self._cond:
                del self._loading[spec.name]
                self._cond.notify_all()
            raise GatewayError(ErrorKind.UNAVAILABLE, f"The model `{spec.name}` could not be loaded.") from exc
        seconds = time.monotonic() - started
        status = backend.describe()
        log.info("loaded %s in %.2fs (%s, pid %s, n_ctx %d: %s; parallel %d, threads %s, weight repacking %s, "
                 "huge pages %s, ~%s)", spec.name, seconds, status.kind, status.pid, status.n_ctx,
                 settings.n_ctx_reason or "as set", status.parallel, status.n_threads, "on" if status.repack else "off",
                 f"on, {status.huge_page_bytes / 2**20:.0f} MiB" if status.huge_pages else "off", _gib(size))
        entry = Loaded(spec, backend, size, seconds, pinned=spec.pinned or spec.name in self.settings.pinned,
                       keep_alive=self.settings.keep_alive if spec.keep_alive is None else spec.keep_alive,
                       size_vram=self._vram_fn(spec, settings, size), in_use=1,
                       context_reason=settings.n_ctx_reason, file_id=_file_id(spec))
        with self._cond:
            del self._loading[spec.name]
            self._loaded[spec.name] = entry
            self._cond.notify_all()
        return Lease(self, entry, seconds)

    def _make_room(self, spec: ModelSpec, size: int) -> list[Loaded] | None:
        """Idle models to unload (least recently used first) so `spec` fits; None if it cannot fit yet. Models
        served upstream neither need room nor count against `max_loaded_models`."""
        budget, limit = self.settings.memory_budget, self.settings.max_loaded_models
        if budget and size > budget:
            raise GatewayError(ErrorKind.UNAVAILABLE,
                               f"The model `{spec.name}` needs about {_gib(size)} but the memory budget is "
                               f"{_gib(budget)}.")
        if spec.backend == "upstream":  # served by other machines: it takes no room here, nor a place in the limit
            return []
        kept = [e for e in self._loaded.values() if e.spec.backend != "upstream"]
        used = sum(e.size for e in kept + self._retiring) + sum(self._loading.values())
        count = len(kept) + len(self._loading)
        victims: list[Loaded] = []
        idle = sorted((e for e in kept if not e.in_use and not e.pinned), key=lambda e: e.last_used)
        while (limit and count + 1 > limit) or (budget and used + size > budget):
            if not idle:
                return None
            victim = idle.pop(0)
            victims.append(victim)
            used -= victim.size
            count -= 1
        for victim in victims:
            del self._loaded[victim.spec.name]
        return victims

    def _release(self, entry: Loaded, keep_alive: float | None) -> None:
        with self._cond:
            entry.in_use -= 1
            entry.last_used = time.monotonic()
            if keep_alive is not None:
                entry.keep_alive = keep_alive
            if entry.in_use or (entry.pinned and not entry.retired):
                return
            if entry.retired:
                self._retiring.remove(entry)
                unload_now, why = True, "its model changed"
            else:
                unload_now, why = entry.keep_alive == 0 and self._loaded.get(entry.spec.name) is entry, "keep_alive 0"
                if unload_now:
                    del self._loaded[entry.spec.name]
                else:
                    entry.expires_at = None if entry.keep_alive < 0 else entry.last_used + entry.keep_alive
                    if entry.expires_at is not None and entry.expires_at < self._reap_at:
                        self._reaper_cond.notify()
            self._cond.notify_all()
        if unload_now:
            self._close(entry, why)

    # -- management ------------------------------------------------------------------------------------------

    def unload(self, name: str) -> bool:
        """Unload now if idle, else as soon as its last request ends (Ollama's keep_alive 0). False if not loaded."""
        with self._cond:
            entry = self._loaded.get(name)
            if entry is None:
                return False
            entry.keep_alive = 0
            entry.pinned = False
            if entry.in_use:
                return True
            del self._loaded[name]
            self._cond.notify_all()
        self._close(entry, "unload requested")
        return True

    def retire_changed(self, current: Callable[[str], ModelSpec | None]) -> list[str]:
        """After the registry changed (a config reload, a model created, copied or pulled over a name): each
        loaded model whose spec or weights file is no longer what `current(name)` says leaves the pool, so the
        next request loads the new one, and is unloaded once its own requests finish. Returns their names."""
        changed: list[Loaded] = []
        with self._cond:
            for name, entry in list(self._loaded.items()):
                spec = current(name)
                if spec is not None and spec == entry.spec and _file_id(spec) == entry.file_id:
                    continue
                del self._loaded[name]
                entry.retired = True
                changed.append(entry)
                if entry.in_use:
                    self._retiring.append(entry)
            self._cond.notify_all()
        for entry in changed:
            if not entry.in_use:
                self._close(entry, "its model changed")
        return [e.spec.name for e in changed]

    def preload(self, spec: ModelSpec) -> None:
        self.acquire(spec).release()

    def loaded(self) -> dict[str, Backend]:
        with self._cond:
            return {name: e.backend for name, e in self._loaded.items()}

    def running(self) -> list[Loaded]:
        with self._cond:
            return list(self._loaded.values())

    def view(self) -> list[dict]:
        """Each loaded model as monitors show it: context, sequences in use, KV cells used, keep-alive left, and
        its engine's health (pid, restarts, crashes; an upstream's URLs with their circuits)."""
        now = time.time()
        out = []
        for entry in self.running():
            status = entry.backend.describe()
            expires = entry.expires_at_epoch()
            out.append({"name": entry.spec.name, "n_ctx": status.n_ctx, "parallel": status.parallel,
                        "busy": status.busy, "waiting": status.waiting, "kv_used": status.kv_used,
                        "size": entry.size, "size_vram": entry.size_vram, "in_use": entry.in_use,
                        "keep_alive_left": None if expires is None else max(0.0, expires - now),
                        "load_seconds": entry.load_seconds, "backend": status.kind, "health": status.health,
                        "pid": status.pid, "repack": status.repack, "huge_pages": status.huge_pages,
                        "huge_page_bytes": status.huge_page_bytes, "restarts": status.restarts,
                        "crashes": len(status.crashes),
                        "last_crash": status.crashes[-1] if status.crashes else None, "note": status.note,
                        "context_reason": entry.context_reason, "endpoints": status.endpoints,
                        "prompt_cache": status.prompt_cache, "parked": status.parked,
                        "prompt_rules": status.prompt_rules})
        return out

    def gpu_offload(self) -> bool:
        """Whether the engine can offload layers to a GPU at all (a CPU-only build cannot)."""
        return supports_gpu_offload()

    def devices(self) -> list[dict]:
        """The devices llama.cpp sees (GPUs first as ggml lists them, then the CPU), for `/health`."""
        return [dataclasses.asdict(d) for d in devices()]

    def compute_summary(self) -> str:
        """One line for the dashboard: whether this build offloads, and to which devices."""
        if not supports_gpu_offload():
            return "CPU only: this llama.cpp build cannot offload to a GPU"
        gpus = [d for d in devices() if d.type != "cpu"]
        if not gpus:
            return "GPU offload built in, but llama.cpp sees no GPU"
        return "GPU offload: " + ", ".join(f"{d.name} ({d.description}, {_gib(d.memory_total)})" for d in gpus)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            entries = list(self._loaded.values()) + self._retiring
            self._loaded.clear()
            self._retiring = []
            self._cond.notify_all()
            self._reaper_cond.notify()
        for entry in entries:
            entry.backend.close()

    # -- internals -------------------------------------------------------------------------------------------

    def _reap(self) -> None:
        """Unload idle models whose keep_alive has run out; wakes at the next expiry, or when a release sets an
        earlier one."""
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                expired = [e for e in self._loaded.values()
                           if not e.in_use and not e.pinned and e.expires_at is not None and e.expires_at <= now]
                for entry in expired:
                    del self._loaded[entry.spec.name]
                if not expired:
                    upcoming = [e.expires_at for e in self._loaded.values()
                                if not e.in_use and e.expires_at is not None]
                    # bounded: a keep_alive of centuries must not overflow the wait (threading.TIMEOUT_MAX)
                    wait = min(min(upcoming) - now, REAP_WAIT_MAX) if upcoming else REAP_WAIT_MAX
                    self._reap_at = now + wait
                    self._reaper_cond.wait(wait)
                    self._reap_at = float("inf")
                    continue
                self._cond.notify_all()
            for entry in expired:
                self._close(entry, "keep_alive expired")

    def _close(self, entry: Loaded, why: str) -> None:
        log.info("unloading %s (%s)", entry.spec.name, why)
        entry.backend.close()

    def context_for(self, spec: ModelSpec) -> tuple[int, str]:
        """The context `spec` has if loaded, else the one it would get, and why (0 and '' if unknown)."""
        with self._cond:
            entry = self._loaded.get(spec.name)
        if entry is not None:
            return entry.backend.n_ctx, entry.context_reason
        settings = self._settings_for(spec, {})
        return settings.n_ctx or 0, settings.n_ctx_reason

    def _settings_for(self, spec: ModelSpec, options: dict[str, int]) -> ExecutorSettings:
        """The server's engine settings with the model's own on top (discovered and store models get the
        server's), then the context sized for them."""
        base = self._base
        server_load = base.load or LoadParams()
        settings = ExecutorSettings(
            parallel=spec.parallel or base.parallel,
            n_ctx=spec.n_ctx or base.n_ctx,
            n_batch=spec.n_batch or base.n_batch,
            prefill_chunk=base.prefill_chunk,
            # a client's num_thread applies only when its request loads the model: never beyond this machine
            n_threads=spec.n_threads or min(options.get("n_threads") or 0, os.cpu_count() or 1) or base.n_threads,
            max_queue=base.max_queue,
            load=LoadParams(n_gpu_layers=_gpu_layers(options, spec, base.load), split_mode=spec.split_mode,
                            main_gpu=spec.main_gpu, tensor_split=spec.tensor_split or server_load.tensor_split,
                            repack=resolve_repack(spec.repack),
                            huge_pages=huge_pages.resolve(server_load.huge_pages if spec.huge_pages is None
                                                          else spec.huge_pages)),
            context=ContextParams(flash_attn=spec.flash_attn or base.context.flash_attn,
                                  cache_type_k=spec.cache_type_k or base.context.cache_type_k,
                                  cache_type_v=spec.cache_type_v or base.context.cache_type_v,
                                  lora=tuple(spec.lora)),
            prompt_cache=base.prompt_cache,
            parked_max_bytes=base.parked_max_bytes,
        )
        choice = self._context_fn(spec, settings, self.settings.memory_budget)
        if choice is not None:
            settings.n_ctx, settings.n_ctx_reason = choice.n_ctx, choice.reason
        return settings


def _gpu_layers(options: dict[str, int], spec: ModelSpec, server: LoadParams | None) -> int:
    """A client's num_gpu applies only where this machine can offload at all (llama.cpp clamps the count to the
    model's layers itself); elsewhere the model's own setting, else the server's (discovered and store models
    included), and nothing on a build that cannot offload."""
    if not supports_gpu_offload():
        return spec.n_gpu_layers or 0
    if "n_gpu_layers" in options:
        return max(-1, options["n_gpu_layers"])
    return spec.n_gpu_layers if spec.n_gpu_layers is not None else (server.n_gpu_layers if server else 0)


def _file_id(spec: ModelSpec) -> tuple | None:
    """What tells a weights file from one copied over it: size and modification time (None: no local file)."""
    try:
        stat = os.stat(spec.path) if spec.path else None
    except OSError:
        return None
    return (stat.st_size, stat.st_mtime_ns) if stat else None


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n else "unlimited"
