"""A LoRA adapter in GGUF for the embedded SmolLM2, written from scratch: llama.cpp's `convert_lora_to_gguf.py`
needs a PEFT checkpoint, and no adapter ships with the model. Rank-1 deltas on every layer's `ffn_down`, large
enough that the adapter visibly changes greedy output, so a test can tell whether it reached llama.cpp."""

from __future__ import annotations

import random
import struct
from pathlib import Path

from gateway.models.gguf import read_metadata

ALIGNMENT = 32
F32 = 0  # ggml type
STRING, FLOAT32 = 8, 6  # GGUF value types


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _kv(key: str, kind: int, value: bytes) -> bytes:
    return _string(key) + struct.pack("<I", kind) + value


def write_lora(path: Path, base_model: str, seed: int = 1) -> Path:
    """Write the adapter for the GGUF model at `base_model` to `path` (tensor shapes come from its header)."""
    meta = read_metadata(base_model)
    arch = meta.architecture
    n_layer = int(meta.kv[f"{arch}.block_count"])
    n_embd, n_ff = int(meta.kv[f"{arch}.embedding_length"]), int(meta.kv[f"{arch}.feed_forward_length"])
    rng = random.Random(seed)
    tensors: list[tuple[str, tuple[int, int], bytes]] = []  # name, ggml dims (ne0, ne1), data
    for layer in range(n_layer):
        name = f"blk.{layer}.ffn_down.weight"
        # ffn_down maps n_ff → n_embd: A is (ne0 n_ff, ne1 rank), B is (ne0 rank, ne1 n_embd)
        for suffix, dims in ((".lora_a", (n_ff, 1)), (".lora_b", (1, n_embd))):
            values = [rng.uniform(-1, 1) for _ in range(dims[0] * dims[1])]
            tensors.append((name + suffix, dims, struct.pack(f"<{len(values)}f", *values)))
    kvs = (_kv("general.architecture", STRING, _string(arch)) + _kv("general.type", STRING, _string("adapter"))
           + _kv("adapter.type", STRING, _string("lora")) + _kv("adapter.lora.alpha", FLOAT32, struct.pack("<f", 1.0)))
    infos, data, offset = b"", b"", 0
    for name, (ne0, ne1), raw in tensors:
        infos += _string(name) + struct.pack("<I2QIQ", 2, ne0, ne1, F32, offset)
        padded = raw + bytes(-len(raw) % ALIGNMENT)
        data += padded
        offset += len(padded)
    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), 4) + kvs + infos
    path.write_bytes(head + bytes(-len(head) % ALIGNMENT) + data)
    return path
