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
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def reuse_prefix(mem: ctypes.c_void_p, seq: Sequence, sequences: list[Sequence], prompt: list[int]) -> int:
    """Keep the longest prefix of `prompt` that is in the cache (this sequence's own, or copied from another)
    and drop the rest. At least one prompt token is always left to evaluate, so the first token has logits."""
    best, donor = common_prefix(seq.tokens, prompt), None
    for other in sequences:
        if other is not seq:
            n = common_prefix(other.tokens, prompt)
            if n > best:
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


def cached_prefix(sequences: list[Sequence], prompt: list[int]) -> int:
    return max((common_prefix(s.tokens, prompt) for s in sequences), default=0)


def find_leader(sequences: list[Sequence], prompt: list[int]) -> tuple[Sequence | None, int]:
    """A sequence still prefilling a prompt that shares more with `prompt` than the cache already holds."""
    have = min(cached_prefix(sequences, prompt), len(prompt) - 1)
    best, leader = have + MIN_SHARED - 1, None
    for seq in sequences:
        if seq.handle is not None and seq.pending and seq.leader is None:
            lead_prompt = seq.handle.job.prompt  # the leader evaluates its own last token after the copy
            n = min(common_prefix(lead_prompt, prompt), len(prompt) - 1, len(lead_prompt) - 1)
            if n > best:
                best, leader = n, seq
    return leader, best
