"""Prompt prefixes shared through the KV cache: reuse what a sequence already holds, copy what another holds,
and let identical prompts that arrive together prefill once.

With llama.cpp's unified KV cache, `llama_memory_seq_cp` makes cells shared by several sequences, so a copied
prefix costs no compute and no memory, and every sequence that shares it attends to the very same cells:
identical greedy requests then produce identical text, which separate prefills in differently shaped batches
do not guarantee (llama.cpp's attention kernels round differently for different batch shapes and cell layouts).
"""

from __future__ import annotations

import ctypes

import llama_cpp

from gateway.engine.sequence import Sequence

MIN_SHARED = 8  # a newcomer follows a prefilling leader only if that saves at least this many tokens


def common_prefix(a: list[int], b: list[int]) -> int:
    """Length of the common prefix. Runs on the decode thread for every sequence at every admission, so it
    compares slices (in C) and bisects to the first difference instead of looping over tokens in Python."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[lo:mid] == b[lo:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def held_prefixes(sequences: list[Sequence], prompt: list[int]) -> dict[Sequence, int]:
    """How much of `prompt` each sequence's cache holds: computed once per admission and shared below."""
    return {seq: common_prefix(seq.tokens, prompt) for seq in sequences}


def reuse_prefix(mem: ctypes.c_void_p, seq: Sequence, held: dict[Sequence, int], prompt: list[int]) -> int:
    """Keep the longest prefix of `prompt` that is in the cache (this sequence's own, or copied from another)
    and drop the rest. At least one prompt token is always left to evaluate, so the first token has logits."""
    best, donor = held[seq], None
    for other, n in held.items():
        if other is not seq and n > best:
            best, donor = n, other
    if donor is not None:
        llama_cpp.llama_memory_seq_rm(mem, seq.seq_id, -1, -1)
        llama_cpp.llama_memory_seq_cp(mem, donor.seq_id, seq.seq_id, 0, best)
        seq.tokens = prompt[:best]
    keep = min(best, len(prompt) - 1)
    if not llama_cpp.llama_memory_seq_rm(mem, seq.seq_id, keep, -1):
        llama_cpp.llama_memory_seq_rm(mem, seq.seq_id, -1, -1)
        keep = 0
    seq.tokens = seq.tokens[:keep]
    return keep


def find_leader(held: dict[Sequence, int], prompt: list[int]) -> tuple[Sequence | None, int]:
    """A sequence still prefilling a prompt that shares more with `prompt` than the cache already holds."""
    have = min(max(held.values(), default=0), len(prompt) - 1)
    best, leader = have + MIN_SHARED - 1, None
    for seq in held:
        if seq.handle is not None and seq.pending and seq.leader is None:
            lead_prompt = seq.handle.job.prompt  # the leader evaluates its own last token after the copy
            n = min(common_prefix(lead_prompt, prompt), len(prompt) - 1, len(lead_prompt) - 1)
            if n > best:
                best, leader = n, seq
    return leader, best
