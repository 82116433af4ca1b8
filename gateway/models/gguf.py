"""GGUF header reader: model facts for listings and templates without loading any weights.

Listing endpoints must answer in milliseconds for every model on disk, and loading a model through llama.cpp
to learn its context length would cost seconds and gigabytes. The header holds everything we show, so we
parse it ourselves (format: ggml-org/ggml docs/gguf.md, versions 2 and 3, little-endian) through a
memory map, which touches only the pages we read. Token tables are skipped, not decoded.
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
MAX_KEPT_ARRAY = 1024
# Bounds of a sane header: a hostile file (a pulled layer, a path in config) must be refused quickly, not walked
# for minutes or into a RecursionError. Real models stay far below: ~50 keys, ~1,000 tensors, 262,144 tokens.
MAX_KV = 65_536
MAX_TENSORS = 1_048_576
MAX_DIMS = 8
MAX_ARRAY = 16_777_216
MAX_NESTING = 4
"""Arrays longer than this (token lists, merges, scores) keep only their length: nobody lists them, and
decoding 150k strings per model would make listings slow."""

_STRING = 8
_ARRAY = 9
_SCALARS: dict[int, struct.Struct] = {
    0: struct.Struct("<B"),
    1: struct.Struct("<b"),
    2: struct.Struct("<H"),
    3: struct.Struct("<h"),
    4: struct.Struct("<I"),
    5: struct.Struct("<i"),
    6: struct.Struct("<f"),
    7: struct.Struct("<?"),
    10: struct.Struct("<Q"),
    11: struct.Struct("<q"),
    12: struct.Struct("<d"),
}
_U32 = _SCALARS[4]
_U64 = _SCALARS[10]

# llama.cpp's enum llama_ftype (llama.h), the value converters write to general.file_type.
FILE_TYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    4: "Q4_1_SOME_F16",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
    39: "NVFP4",
    40: "Q1_0",
    41: "Q2_0",
}


class GGUFError(ValueError):
    """The file is not a readable GGUF header; the message names the file and what was wrong."""


@dataclass
class GGUFMetadata:
    """Everything listing and templating need from one GGUF header."""

    path: str
    version: int
    kv: dict[str, Any]
    array_lengths: dict[str, int] = field(default_factory=dict)
    tensor_count: int = 0
    parameter_count: int = 0

    @property
    def architecture(self) -> str:
        return str(self.kv.get("general.architecture", ""))

    @property
    def name(self) -> str:
        return str(self.kv.get("general.name", ""))

    @property
    def context_length(self) -> int:
        return int(self.kv.get(f"{self.architecture}.context_length", 0))

    @property
    def pooling_type(self) -> int | None:
        """Set by embedding models; its presence tells the engine to pool rather than generate."""
        return self.kv.get(f"{self.architecture}.pooling_type")

    @property
    def chat_template(self) -> str | None:
        return self.kv.get("tokenizer.chat_template")

    @property
    def quantization(self) -> str:
        file_type = self.kv.get("general.file_type")
        if file_type is None:
            return ""
        return FILE_TYPES.get(int(file_type), f"unknown ({file_type})")

    @property
    def parameter_size(self) -> str:
        return format_parameter_size(self.parameter_count)

    def kv_cache_bytes(self, n_ctx: int, k_bytes: float = 2.0, v_bytes: float = 2.0) -> int:
        """K and V (F16 unless the element sizes say otherwise) for `n_ctx` cells over every layer: with the
        weights, what a loaded model costs, so the pool can refuse or make room before loading rather than after."""
        arch = self.architecture
        n_layer = int(self.kv.get(f"{arch}.block_count", 0))
        n_embd = int(self.kv.get(f"{arch}.embedding_length", 0))
        n_head = _largest(self.kv.get(f"{arch}.attention.head_count", 1)) or 1
        n_head_kv = _largest(self.kv.get(f"{arch}.attention.head_count_kv", n_head)) or n_head
        key = int(self.kv.get(f"{arch}.attention.key_length", n_embd // n_head))
        value = int(self.kv.get(f"{arch}.attention.value_length", n_embd // n_head))
        return int(n_ctx * n_layer * n_head_kv * (key * k_bytes + value * v_bytes))


def _largest(value: Any) -> int:
    """Per-layer arrays (some architectures vary head counts by layer) count at their largest."""
    return int(max(value)) if isinstance(value, list) and value else int(value or 0)


def format_parameter_size(count: int) -> str:
    """Ollama's short form ('135M', '1.2B'), because Ollama clients show it verbatim."""
    if count >= 1_000_000_000:
        return f"{count / 1_000_000_000:.1f}B"
    if count >= 1_000_000:
        return f"{round(count / 1_000_000)}M"
    if count >= 1_000:
        return f"{round(count / 1_000)}K"
    return str(count)


def read_metadata(path: str | os.PathLike[str]) -> GGUFMetadata:
    """Read a GGUF header; cached per file and modification time, so a replaced file is read again."""
    real = os.path.realpath(path)
    try:
        stat = os.stat(real)
    except OSError as exc:
        raise GGUFError(f"{path}: cannot read GGUF file: {exc.strerror}") from exc
    return _read_cached(real, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=256)
def _read_cached(path: str, mtime_ns: int, size: int) -> GGUFMetadata:
    if size == 0:
        raise GGUFError(f"{path}: not a GGUF file (empty)")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return _Parser(path, mm).parse()


class _Parser:
    """A cursor over the mapped file; every read checks bounds so truncation gives a clear error."""

    def __init__(self, path: str, data: mmap.mmap):
        self.path = path
        self.data = data
        self.pos = 0

    def parse(self) -> GGUFMetadata:
        magic = bytes(self.data[:4])
        if magic != GGUF_MAGIC:
            raise GGUFError(f"{self.path}: not a GGUF file (magic {magic!r}, expected {GGUF_MAGIC!r})")
        self.pos = 4
        version = self._unpack(_U32)
        if version not in SUPPORTED_VERSIONS:
            raise GGUFError(f"{self.path}: GGUF version {version} is not supported (only 2 and 3)")
        tensor_count = self._bounded(self._unpack(_U64), MAX_TENSORS, "tensors")
        kv_count = self._bounded(self._unpack(_U64), MAX_KV, "metadata keys")
        meta = GGUFMetadata(path=self.path, version=version, kv={}, tensor_count=tensor_count)
        for _ in range(kv_count):
            self._read_kv(meta)
        meta.parameter_count = sum(self._read_tensor_elements() for _ in range(tensor_count))
        return meta

    def _read_kv(self, meta: GGUFMetadata) -> None:
        key = self._read_string()
        value_type = self._unpack(_U32)
        if value_type != _ARRAY:
            meta.kv[key] = self._read_value(value_type)
            return
        item_type = self._unpack(_U32)
        length = self._bounded(self._unpack(_U64), MAX_ARRAY, f"items in `{key[:64]}`")
        if length > MAX_KEPT_ARRAY:
            meta.array_lengths[key] = length
            self._skip_items(item_type, length)
        else:
            meta.kv[key] = [self._read_value(item_type) for _ in range(length)]

    def _read_tensor_elements(self) -> int:
        self._read_string()
        n_dims = self._bounded(self._unpack(_U32), MAX_DIMS, "tensor dimensions")
        dims = [self._unpack(_U64) for _ in range(n_dims)]
        self._unpack(_U32)  # ggml type
        self._unpack(_U64)  # data offset
        return math.prod(dims)

    def _read_value(self, value_type: int, depth: int = 0) -> Any:
        if value_type == _STRING:
            return self._read_string()
        if value_type == _ARRAY:
            self._bounded(depth + 1, MAX_NESTING, "levels of nested arrays")
            item_type = self._unpack(_U32)
            length = self._bounded(self._unpack(_U64), MAX_KEPT_ARRAY, "items in a nested array")
            return [self._read_value(item_type, depth + 1) for _ in range(length)]
        return self._unpack(self._scalar(value_type))

    def _skip_items(self, item_type: int, count: int, depth: int = 0) -> None:
        if item_type == _STRING:
            for _ in range(count):
                self._advance(self._unpack(_U64))
        elif item_type == _ARRAY:
            self._bounded(depth + 1, MAX_NESTING, "levels of nested arrays")
            for _ in range(count):
                item = self._unpack(_U32)
                self._skip_items(item, self._bounded(self._unpack(_U64), MAX_ARRAY, "items"), depth + 1)
        else:
            self._advance(self._scalar(item_type).size * count)

    def _bounded(self, count: int, limit: int, what: str) -> int:
        if count > limit:
            raise GGUFError(f"{self.path}: not a usable GGUF header ({count} {what}; at most {limit})")
        return count

    def _scalar(self, value_type: int) -> struct.Struct:
        try:
            return _SCALARS[value_type]
        except KeyError:
            raise GGUFError(f"{self.path}: unknown GGUF value type {value_type} at byte {self.pos}") from None

    def _read_string(self) -> str:
        length = self._unpack(_U64)
        start = self.pos
        self._advance(length)
        return bytes(self.data[start : self.pos]).decode("utf-8", errors="replace")

    def _unpack(self, fmt: struct.Struct) -> Any:
        start = self.pos
        self._advance(fmt.size)
        return fmt.unpack_from(self.data, start)[0]

    def _advance(self, n: int) -> None:
        if self.pos + n > len(self.data):
            raise GGUFError(f"{self.path}: truncated GGUF header (needed {n} bytes at byte {self.pos})")
        self.pos += n
