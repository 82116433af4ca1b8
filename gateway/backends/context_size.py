"""How long a local model's context is when the config does not say: its trained length when that KV cache fits
the memory the model will have, else the longest that fits. A fixed cap (4K, 8K) either wastes a big machine or
fails to load on a small one; the GGUF header says exactly what each cell costs, so the choice is computed.

The memory is the GPUs' free memory when every layer is offloaded (the KV cache lives beside the layers), else
the pool's memory budget (RAM); the weights and a batch of logits come off first. The choice and its reason are
shown in the log, `/api/show`, `/v1/models` and `/api/ps`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from gateway.engine.executor import ExecutorSettings
from gateway.engine.llama import CACHE_TYPES, devices, supports_gpu_offload
from gateway.models.gguf import GGUFMetadata, read_metadata
from gateway.models.registry import ModelSpec

STEP = 256  # a context that does not fit whole is rounded down to this
MIN_CTX = 512  # below this a model cannot hold a useful conversation: load it so, and say so
FALLBACK_CTX = 4096  # a header that does not say its trained length


@dataclass(frozen=True)
class ContextChoice:
    n_ctx: int
    reason: str


def kv_bytes(meta: GGUFMetadata, n_ctx: int, settings: ExecutorSettings) -> int:
    """The KV cache of `n_ctx` cells with the configured element types."""
    return meta.kv_cache_bytes(n_ctx, CACHE_TYPES[settings.context.cache_type_k][1],
                               CACHE_TYPES[settings.context.cache_type_v][1])


def fixed_bytes(spec: ModelSpec, meta: GGUFMetadata, settings: ExecutorSettings) -> int:
    """What the model costs whatever its context: the weights (the file) and the logits of a full batch."""
    return os.path.getsize(spec.path) + 4 * meta.array_lengths.get("tokenizer.ggml.tokens", 0) * settings.n_batch


def choose_context(spec: ModelSpec, settings: ExecutorSettings, memory_budget: int) -> ContextChoice | None:
    """`settings.n_ctx` when configured; otherwise as the module says. `memory_budget` 0 means no limit (then
    the machine's RAM is the limit). None for a model that is not a local GGUF file (its engine decides)."""
    if not spec.path:
        return None
    meta = read_metadata(spec.path)
    trained = meta.context_length or FALLBACK_CTX
    if settings.n_ctx:
        return ContextChoice(settings.n_ctx, f"configured (trained length {trained})")
    memory, where = _memory(meta, settings, memory_budget)
    room = memory - fixed_bytes(spec, meta, settings)
    need = kv_bytes(meta, trained, settings)
    if need <= room:
        return ContextChoice(trained, f"the trained length; its KV cache ({_mib(need)}) fits {where}")
    per_cell = max(1, kv_bytes(meta, STEP, settings) / STEP)
    fits = int(max(0, room) // per_cell) // STEP * STEP
    if fits < MIN_CTX:
        return ContextChoice(min(MIN_CTX, trained), f"{where} leaves no room for a KV cache; {MIN_CTX} tokens "
                                                    f"anyway (trained length {trained})")
    return ContextChoice(fits, f"the longest KV cache that fits {where}, {_mib(room)} after the weights "
                               f"(trained length {trained} needs {_mib(need)})")


def _memory(meta: GGUFMetadata, settings: ExecutorSettings, memory_budget: int) -> tuple[int, str]:
    layers = settings.load.n_gpu_layers if settings.load else 0
    total_layers = int(meta.kv.get(f"{meta.architecture}.block_count", 0)) + 1
    if (layers < 0 or layers >= total_layers) and supports_gpu_offload():
        gpus = [d for d in devices() if d.type in ("gpu", "igpu")]
        if gpus:
            return sum(d.memory_free for d in gpus), f"the free memory of {len(gpus)} GPU(s)"
    if memory_budget:
        return memory_budget, f"the memory budget ({_mib(memory_budget)})"
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return ram, f"this machine's RAM ({_mib(ram)})"


def _mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"
