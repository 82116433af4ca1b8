"""The park's bookkeeping: which state a prompt gets back, what the bound evicts, what a refused state leaves.

llama.cpp's state calls are replaced by a stand-in that keeps each sequence's "state" as bytes, so the choices
can be checked exactly; tests/integration/test_engine.py parks and restores real KV state on the real model."""

from __future__ import annotations

import ctypes

import pytest

from gateway.engine import parked_states
from gateway.engine.parked_states import MIN_GAIN, ParkedStates


class FakeLlama:
    """Per sequence, the bytes its state would serialize to (one byte per token here)."""

    def __init__(self) -> None:
        self.held: dict[int, bytes] = {}
        self.refuse = False

    def llama_get_memory(self, ctx):
        return ctx

    def llama_state_seq_get_size(self, ctx, seq_id):
        return len(self.held.get(seq_id, b""))

    def llama_state_seq_get_data(self, ctx, dst, size, seq_id):
        data = self.held[seq_id]
        ctypes.memmove(dst, data, len(data))
        return len(data)

    def llama_state_seq_set_data(self, ctx, src, size, seq_id):
        if self.refuse:
            return 0
        self.held[seq_id] = bytes(src)[:size]
        return size

    def llama_memory_seq_rm(self, mem, seq_id, p0, p1):
        self.held.pop(seq_id, None)
        return True


@pytest.fixture
def llama(monkeypatch):
    fake = FakeLlama()
    monkeypatch.setattr(parked_states, "llama_cpp", fake)
    return fake


def hold(llama: FakeLlama, seq_id: int, tokens: list[int]) -> list[int]:
    llama.held[seq_id] = bytes(t % 256 for t in tokens)
    return tokens


def test_a_prompt_gets_back_the_state_sharing_its_longest_prefix(llama):
    park = ParkedStates(10_000)
    short = hold(llama, 0, list(range(40)))
    assert park.park(None, 0, short)
    other = hold(llama, 1, [7] * 60)
    assert park.park(None, 1, other)
    prompt = list(range(50))
    assert park.restore(None, 5, prompt, have=0) == short
    assert llama.held[5] == bytes(range(40))
    assert len(park) == 1 and park.counts["restored"] == 1 and park.counts["restored_tokens"] == 40


def test_nothing_comes_back_unless_it_beats_the_cache_by_min_gain(llama):
    park = ParkedStates(10_000)
    assert park.park(None, 0, hold(llama, 0, list(range(40))))
    assert park.restore(None, 3, list(range(50)), have=40 - MIN_GAIN + 1) is None
    assert 3 not in llama.held and len(park) == 1
    assert park.restore(None, 3, list(range(50)), have=40 - MIN_GAIN) == list(range(40))


def test_the_bound_drops_the_least_recently_parked_and_a_state_over_it_is_not_parked(llama):
    park = ParkedStates(100)
    for seq_id, first in enumerate((1000, 2000, 3000)):
        assert park.park(None, seq_id, hold(llama, seq_id, list(range(first, first + 40))))
    assert len(park) == 2 and park.bytes == 80 and park.counts["evicted"] == 1
    assert park.restore(None, 9, list(range(1000, 1050)), have=0) is None  # the first one went
    assert not park.park(None, 5, hold(llama, 5, list(range(101))))
    assert park.bytes == 80


def test_a_state_that_a_newer_one_extends_is_dropped(llama):
    park = ParkedStates(10_000)
    assert park.park(None, 0, hold(llama, 0, list(range(30))))
    assert park.park(None, 1, hold(llama, 1, list(range(60))))
    assert len(park) == 1 and park.bytes == 60


def test_a_state_llama_cpp_refuses_leaves_the_sequence_empty_and_the_park(llama):
    park = ParkedStates(10_000)
    assert park.park(None, 0, hold(llama, 0, list(range(40))))
    hold(llama, 4, [1, 2, 3])
    llama.refuse = True
    assert park.restore(None, 4, list(range(50)), have=0) == []
    assert 4 not in llama.held and len(park) == 0 and park.counts["refused"] == 1
