"""The GGUF header reader, against the real embedded model and against small files written here."""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.models.embedded import embedded_model_path
from gateway.models.gguf import GGUFError, format_parameter_size, read_metadata

# GGUF value type codes (ggml docs/gguf.md).
U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FORMATS = {U8: "B", I8: "b", U16: "H", I16: "h", U32: "I", I32: "i", F32: "f", BOOL: "?", U64: "Q", I64: "q", F64: "d"}


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def _value(value_type: int, value: Any) -> bytes:
    if value_type == STRING:
        return _string(value)
    if value_type == ARRAY:
        item_type, items = value
        return struct.pack("<IQ", item_type, len(items)) + b"".join(_value(item_type, v) for v in items)
    return struct.pack("<" + _FORMATS[value_type], value)


def write_gguf(
    path: Path, kvs: list[tuple[str, int, Any]], tensors: Sequence[Sequence[int]] = (), version: int = 3
) -> Path:
    """A header-only GGUF: enough for the reader, which never looks at tensor data."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors), len(kvs))
    for key, value_type, value in kvs:
        out += _string(key) + struct.pack("<I", value_type) + _value(value_type, value)
    for i, dims in enumerate(tensors):
        out += _string(f"blk.{i}.weight") + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, 0, 0)
    path.write_bytes(out)
    return path


ALL_TYPES = [
    ("general.architecture", STRING, "toy"),
    ("general.name", STRING, "Töy model"),
    ("general.file_type", U32, 15),
    ("toy.context_length", U64, 4096),
    ("toy.pooling_type", U32, 1),
    ("v.u8", U8, 255),
    ("v.i8", I8, -128),
    ("v.u16", U16, 65535),
    ("v.i16", I16, -32768),
    ("v.u32", U32, 2**32 - 1),
    ("v.i32", I32, -(2**31)),
    ("v.f32", F32, 0.5),
    ("v.bool", BOOL, True),
    ("v.u64", U64, 2**64 - 1),
    ("v.i64", I64, -(2**63)),
    ("v.f64", F64, 3.25),
    ("v.small_array", ARRAY, (I32, [1, -2, 3])),
    ("v.nested", ARRAY, (ARRAY, [(STRING, ["a", "b"]), (STRING, [])])),
    ("tokenizer.ggml.tokens", ARRAY, (STRING, [f"tok{i}" for i in range(2000)])),
    ("tokenizer.ggml.scores", ARRAY, (F32, [0.0] * 1500)),
    ("tokenizer.chat_template", STRING, "{{ messages }}"),
    ("after.big.arrays", STRING, "still read"),
]


@pytest.fixture
def toy(tmp_path: Path) -> Path:
    return write_gguf(tmp_path / "toy.gguf", ALL_TYPES, tensors=[[4, 8], [3], [2, 3, 5]])


def test_every_value_type_round_trips(toy: Path) -> None:
    meta = read_metadata(toy)
    expected = {k: v for k, t, v in ALL_TYPES if t != ARRAY}
    for key, value in expected.items():
        assert meta.kv[key] == value, key
    assert meta.kv["v.small_array"] == [1, -2, 3]
    assert meta.kv["v.nested"] == [["a", "b"], []]


def test_large_arrays_keep_only_their_length(toy: Path) -> None:
    meta = read_metadata(toy)
    assert meta.array_lengths == {"tokenizer.ggml.tokens": 2000, "tokenizer.ggml.scores": 1500}
    assert "tokenizer.ggml.tokens" not in meta.kv
    assert meta.kv["after.big.arrays"] == "still read"


def test_properties_and_tensor_summary(toy: Path) -> None:
    meta = read_metadata(toy)
    assert meta.version == 3
    assert meta.architecture == "toy"
    assert meta.name == "Töy model"
    assert meta.context_length == 4096
    assert meta.pooling_type == 1
    assert meta.quantization == "Q4_K_M"
    assert meta.chat_template == "{{ messages }}"
    assert meta.tensor_count == 3
    assert meta.parameter_count == 4 * 8 + 3 + 2 * 3 * 5
    assert meta.parameter_size == "65"


def test_missing_keys_give_empty_values(tmp_path: Path) -> None:
    meta = read_metadata(write_gguf(tmp_path / "bare.gguf", [], version=2))
    assert (meta.architecture, meta.context_length, meta.quantization) == ("", 0, "")
    assert meta.chat_template is None
    assert meta.pooling_type is None


@pytest.mark.parametrize(
    ("count", "expected"),
    [(999, "999"), (65_000, "65K"), (134_515_008, "135M"), (1_235_814_400, "1.2B"), (8_030_261_248, "8.0B")],
)
def test_parameter_size_is_ollama_style(count: int, expected: str) -> None:
    assert format_parameter_size(count) == expected


def test_every_truncation_is_a_clear_error(toy: Path, tmp_path: Path) -> None:
    data = toy.read_bytes()
    cut = tmp_path / "cut.gguf"
    for size in [1, 4, 10, 23, 40, 200, len(data) // 2, len(data) - 1]:
        cut.write_bytes(data[:size])
        with pytest.raises(GGUFError, match="truncated|not a GGUF"):
            read_metadata(cut)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"PK\x03\x04" + b"\0" * 40, "not a GGUF file"),
        (b"GGUF" + struct.pack("<IQQ", 1, 0, 0), "version 1 is not supported"),
        (b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + _string("k") + struct.pack("<I", 99), "unknown GGUF value type"),
    ],
)
def test_invalid_files(tmp_path: Path, content: bytes, message: str) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(GGUFError, match=message) as info:
        read_metadata(bad)
    assert isinstance(info.value, ValueError)
    assert str(bad) in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot read"):
        read_metadata(tmp_path / "nope.gguf")


def test_a_rewritten_file_is_read_again(tmp_path: Path) -> None:
    path = write_gguf(tmp_path / "m.gguf", [("general.name", STRING, "one")])
    assert read_metadata(path).name == "one"
    assert read_metadata(path) is read_metadata(path)
    write_gguf(path, [("general.name", STRING, "two")])
    os.utime(path, ns=(0, path.stat().st_mtime_ns + 1_000_000_000))
    assert read_metadata(path).name == "two"


def test_embedded_smollm2() -> None:
    path = embedded_model_path()
    assert path is not None and path.endswith(".gguf")
    meta = read_metadata(path)
    assert meta.architecture == "llama"
    assert meta.context_length == 8192
    assert meta.quantization == "Q4_1"
    assert meta.parameter_size == "135M"
    assert meta.parameter_count == 134_515_008
    assert meta.pooling_type is None
    assert "<|im_start|>" in meta.chat_template
    assert meta.array_lengths["tokenizer.ggml.tokens"] == 49152
    assert meta.kv["tokenizer.ggml.add_bos_token"] is False


def _nested_arrays(depth: int) -> bytes:
    """A metadata value of `depth` arrays each holding the next; the innermost holds one u8."""
    inner = struct.pack("<IQ", U8, 1) + b"\x01"
    for _ in range(depth - 1):
        inner = struct.pack("<IQ", ARRAY, 1) + inner
    return inner


@pytest.mark.parametrize(("header", "words"), [
    (struct.pack("<IQQ", 3, 2**40, 0), "tensors"),
    (struct.pack("<IQQ", 3, 0, 2**40), "metadata keys"),
    (struct.pack("<IQQ", 3, 0, 1) + _string("k") + struct.pack("<IIQ", ARRAY, U8, 2**60), "items in `k`"),
    (struct.pack("<IQQ", 3, 0, 1) + _string("k") + struct.pack("<I", ARRAY) + _nested_arrays(50),
     "levels of nested arrays"),
    (struct.pack("<IQQ", 3, 1, 0) + _string("t") + struct.pack("<I", 2**20), "tensor dimensions"),
])
def test_absurd_headers_are_refused_at_once(tmp_path: Path, header: bytes, words: str) -> None:
    path = tmp_path / "absurd.gguf"
    path.write_bytes(b"GGUF" + header + b"\x00" * 64)
    with pytest.raises(GGUFError, match=words):
        read_metadata(path)
