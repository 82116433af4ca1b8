"""The persistent prompt cache's files without a model: the format and its checks, the index built at start,
what is removed (truncated, corrupt, stale, orphaned), eviction by least recent use, and a failed write."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from gateway.engine import prompt_store
from gateway.engine.prompt_store import (
    HEADER,
    BadFile,
    PromptCacheSettings,
    PromptStore,
    check_file,
    check_sum,
    model_identity,
    prefix_key,
    token_bytes,
    write_file,
)

STATE = bytes(range(256)) * 40  # stands for llama.cpp's state of a sequence


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF" + b"\0" * 64)
    return str(path)


def settings(folder, **kwargs) -> PromptCacheSettings:
    return PromptCacheSettings(str(folder), **{"min_tokens": 4, "max_bytes": 10**9, **kwargs})


def save(folder, model: str, tokens: list[int], state: bytes = STATE, identity: bytes | None = None) -> str:
    """A file as a runner writes it, named as the store names it."""
    key, ident = model_identity(model)
    data = token_bytes(tokens)
    return write_file(str(folder), f"{key}-{prefix_key(data)}", identity or ident, data, state)


def open_store(folder, model: str, **kwargs) -> PromptStore:
    store = PromptStore(settings(folder, **kwargs), model, bytes_per_token=16)
    store.close()  # the writer is not needed to read the index
    return store


def test_a_file_round_trips_and_every_check_catches_its_fault(tmp_path, model):
    path = save(tmp_path, model, [1, 2, 3, 4, 5])
    with open(path, "rb") as f:
        data = f.read()
    _, identity = model_identity(model)
    assert check_file(data, identity, len(data)) == (5, len(STATE))
    check_sum(data)
    with pytest.raises(BadFile, match="header promises"):
        check_file(data[:-1], identity, len(data) - 1)
    with pytest.raises(BadFile, match="another model"):
        check_file(data, b"x" * 32, len(data))
    with pytest.raises(BadFile, match="shorter than the header"):
        check_file(data[:10], identity, 10)
    flipped = bytearray(data)
    flipped[HEADER.size + 40] ^= 1
    with pytest.raises(BadFile, match="checksum"):
        check_sum(bytes(flipped))


def test_the_index_keeps_good_files_and_removes_truncated_and_stale_ones(tmp_path, model):
    good = save(tmp_path, model, [1, 2, 3, 4, 5])
    truncated = save(tmp_path, model, [1, 2, 3, 4, 5, 6])
    with open(truncated, "r+b") as f:
        f.truncate(os.path.getsize(truncated) - 100)
    stale = save(tmp_path, model, [9, 9, 9, 9, 9], identity=b"s" * 32)  # the model file changed since
    other = tmp_path / f"{'0' * 16}-{'1' * 32}.kvc"  # another model's file is not ours to judge
    other.write_bytes(b"whatever")
    store = open_store(tmp_path, model)
    stats = store.stats()
    assert stats["entries"] == 1 and stats["removed"] == 2
    assert stats["bytes"] == os.path.getsize(good)
    assert os.path.exists(good) and other.exists()
    assert not os.path.exists(truncated) and not os.path.exists(stale)
    assert store.has([1, 2, 3, 4, 5]) and not store.has([1, 2, 3, 4, 5, 6])


def test_a_file_whose_tokens_differ_from_its_name_is_removed(tmp_path, model):
    path = save(tmp_path, model, [1, 2, 3, 4, 5])
    key, _ = model_identity(model)
    wrong = os.path.join(tmp_path, f"{key}-{prefix_key(token_bytes([7, 7, 7, 7, 7]))}.kvc")
    os.rename(path, wrong)
    store = open_store(tmp_path, model)
    assert store.stats()["entries"] == 0 and not os.path.exists(wrong)


def test_temporary_files_of_dead_writers_are_removed_and_live_ones_kept(tmp_path, model):
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f".abc-def.{int(done.stdout)}.tmp"
    live = tmp_path / f".abc-def.{os.getpid()}.tmp"
    dead.write_bytes(b"half")
    live.write_bytes(b"half")
    open_store(tmp_path, model)
    assert not dead.exists() and live.exists()


def test_eviction_removes_the_least_recently_used_files_first(tmp_path, model):
    paths = [save(tmp_path, model, [i] * 5) for i in range(3)]
    now = time.time()
    for age, path in zip((30, 10, 20), paths, strict=True):
        os.utime(path, (now - age, now - age))
    size = os.path.getsize(paths[0])
    store = open_store(tmp_path, model, max_bytes=2 * size)
    store._evict()
    assert [os.path.exists(p) for p in paths] == [False, True, True]
    assert store.stats()["entries"] == 2 and not store.has([0] * 5)


def test_a_failed_write_leaves_nothing_behind(tmp_path, model, monkeypatch):
    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(prompt_store.os, "fsync", full_disk)
    with pytest.raises(OSError):
        save(tmp_path, model, [1, 2, 3, 4, 5])
    assert os.listdir(tmp_path) == ["model.gguf"]


def test_prefixes_too_short_or_already_saved_are_not_wanted(tmp_path, model):
    save(tmp_path, model, [1, 2, 3, 4, 5])
    store = open_store(tmp_path, model, min_tokens=5)
    assert not store.wanted([1, 2, 3, 4])
    assert not store.wanted([1, 2, 3, 4, 5])
    assert store.wanted([1, 2, 3, 4, 6])
