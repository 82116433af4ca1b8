"""Idle sequences' KV state parked in memory, so that their cells leave the attention window.

llama.cpp's unified KV cache computes attention over every cell up to the highest one in use (`used_max_p1`,
padded to 256), for every token of every step, whether a cell belongs to the token's sequence or not. Cells
that idle sequences keep for prefix reuse are paid for by every running stream: after a burst of 16 streams of
SmolLM2, 8 streams decoded over 2,105 cells instead of about 1,100 (bench/README.md, "Idle sequences parked out
of the window").

So when a job starts, every other idle sequence's state is copied out (`llama_state_seq_get_data`) and its cells
freed, as llama-server does with its idle slots (`--cache-ram` with `--cache-idle-slots`, both on by default);
and a sequence taken for a prompt that shares little with what it holds is copied out before it is overwritten
(the executor decides which). A later prompt that starts with a parked sequence's tokens, where the KV cache
holds less of it, gets the state copied back (`llama_state_seq_set_data`) instead of being prefilled: about
23 KB a token for SmolLM2, a copy of microseconds, against milliseconds of prefill per token on a CPU.

Parked states are kept within `max_bytes` (for one model), the least recently parked dropped first. Everything
here runs on the decode thread, which alone owns the llama context.
"""

from __future__ import annotations

import ctypes
import logging
from collections import OrderedDict
from dataclasses import dataclass

import llama_cpp

from gateway.engine.prefix_cache import common_prefix

log = logging.getLogger("gateway.engine")

MIN_GAIN = 16  # a parked state is copied back only if it holds this many prompt tokens more than the cache does


@dataclass
class Parked:
    tokens: list[int]
    state: ctypes.Array


class ParkedStates:
    """See the module docstring."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.counts = {"parked": 0, "restored": 0, "restored_tokens": 0, "evicted": 0, "refused": 0}
        self.version = 0  # raised at every change, so that a runner sends the numbers only when they moved
        self._entries: OrderedDict[int, Parked] = OrderedDict()  # by a number of their own, oldest use first
        self._next = 0

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> dict:
        return {**self.counts, "entries": len(self._entries), "bytes": self.bytes, "max_bytes": self.max_bytes}

    def park(self, ctx, seq_id: int, tokens: list[int]) -> bool:
        """Copy out sequence `seq_id`'s state, which holds exactly `tokens`; False when it does not fit (the
        caller then leaves the cells where they are)."""
        size = llama_cpp.llama_state_seq_get_size(ctx, seq_id)
        if size <= 0 or size > self.max_bytes:
            return False
        state = (ctypes.c_uint8 * size)()
        if llama_cpp.llama_state_seq_get_data(ctx, state, size, seq_id) != size:
            return False
        for number, entry in list(self._entries.items()):  # a state whose tokens this one extends holds nothing more
            if len(entry.tokens) <= len(tokens) and tokens[:len(entry.tokens)] == entry.tokens:
                self._drop(number)
        self._entries[self._next] = Parked(list(tokens), state)
        self._next += 1
        self.bytes += size
        self.counts["parked"] += 1
        while self.bytes > self.max_bytes:
            self._drop(next(iter(self._entries)))
            self.counts["evicted"] += 1
        self.version += 1
        return True

    def restore(self, ctx, seq_id: int, prompt: list[int], have: int) -> list[int] | None:
        """Give sequence `seq_id` the parked state sharing the longest prefix with `prompt`, where that is at least
        `MIN_GAIN` tokens more than `have` (what the KV cache offers); returns the tokens the sequence then holds
        (the state's own, which may go on past the shared prefix), None when nothing was restored (the sequence
        is then as it was, or empty where llama.cpp refused the state). A restored state leaves the park: its
        sequence holds it now."""
        best, number = have + MIN_GAIN - 1, None
        for key, entry in self._entries.items():
            n = common_prefix(entry.tokens, prompt)
            if n > best:
                best, number = n, key
        if number is None:
            return None
        entry = self._entries[number]
        self._drop(number)
        self.version += 1
        mem = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_seq_rm(mem, seq_id, -1, -1)
        size = len(entry.state)
        if llama_cpp.llama_state_seq_set_data(ctx, entry.state, size, seq_id) != size:
            log.warning("llama.cpp refused a parked state of %d tokens; the prompt is prefilled", len(entry.tokens))
            llama_cpp.llama_memory_seq_rm(mem, seq_id, -1, -1)
            self.counts["refused"] += 1
            return []
        self.counts["restored"] += 1
        self.counts["restored_tokens"] += best
        return entry.tokens

    def _drop(self, number: int) -> None:
        entry = self._entries.pop(number)
        self.bytes -= len(entry.state)
