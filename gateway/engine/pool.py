"""Which models are loaded. Models load on first use; two requests for the same model never load it twice.

`load_fn` is the seam tests use to count loads without llama.cpp.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from gateway.engine.executor import Executor, ExecutorSettings
from gateway.engine.llama import LoadParams
from gateway.models.registry import ModelSpec
from gateway.types import ErrorKind, GatewayError

log = logging.getLogger("gateway.engine")

LoadFn = Callable[[ModelSpec, ExecutorSettings], Executor]


def load_executor(spec: ModelSpec, settings: ExecutorSettings) -> Executor:
    return Executor(spec.name, spec.path, settings)


class ModelPool:
    def __init__(self, base: ExecutorSettings, load_fn: LoadFn = load_executor):
        self._base = base
        self._load_fn = load_fn
        self._loaded: dict[str, Executor] = {}
        self._load_seconds: dict[str, float] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def get(self, spec: ModelSpec) -> tuple[Executor, float]:
        """The executor for `spec`, loading it if needed; also returns the seconds this call spent loading."""
        executor = self._loaded.get(spec.name)
        if executor is not None:
            return executor, 0.0
        with self._guard:
            lock = self._locks.setdefault(spec.name, threading.Lock())
        with lock:
            executor = self._loaded.get(spec.name)
            if executor is not None:
                return executor, 0.0
            started = time.monotonic()
            try:
                executor = self._load_fn(spec, self._settings_for(spec))
            except (RuntimeError, OSError) as exc:
                log.error("loading %s failed: %s", spec.name, exc)
                raise GatewayError(ErrorKind.UNAVAILABLE, f"The model `{spec.name}` could not be loaded.") from exc
            seconds = time.monotonic() - started
            log.info("loaded %s in %.2fs (n_ctx %d, parallel %d, threads %d)", spec.name, seconds,
                     executor.n_ctx, executor.parallel, executor.n_threads)
            self._loaded[spec.name] = executor
            self._load_seconds[spec.name] = seconds
            return executor, seconds

    def _settings_for(self, spec: ModelSpec) -> ExecutorSettings:
        base = self._base
        return ExecutorSettings(
            parallel=spec.parallel or base.parallel,
            n_ctx=spec.n_ctx or base.n_ctx,
            n_batch=base.n_batch,
            prefill_chunk=base.prefill_chunk,
            n_threads=spec.n_threads or base.n_threads,
            max_queue=base.max_queue,
            load=LoadParams(n_gpu_layers=spec.n_gpu_layers, split_mode=spec.split_mode, main_gpu=spec.main_gpu,
                            tensor_split=spec.tensor_split),
        )

    def loaded(self) -> dict[str, Executor]:
        return dict(self._loaded)

    def close(self) -> None:
        for executor in list(self._loaded.values()):
            executor.close()
        self._loaded.clear()
