"""One llama sequence id and its state: what its KV cache holds, and the job it is serving, if any.

A sequence is free (no job), following (waiting for a leader to prefill a prompt prefix they share, to copy it
rather than compute it twice), prefilling (prompt tokens pending) or generating (a sampled token to feed next).
"""

from __future__ import annotations

import time

from gateway.engine.detokenize import TextStream
from gateway.engine.jobs import JobHandle
from gateway.engine.reasoning_budget import BudgetTracker
from gateway.engine.sampling import SamplerChain


class Sequence:
    def __init__(self, seq_id: int):
        self.seq_id = seq_id
        self.tokens: list[int] = []  # tokens whose KV entries are in the cache, at positions 0..len-1
        self.handle: JobHandle | None = None
        self.last_used = 0.0
        self.pending: list[int] = []  # prompt tokens still to evaluate
        self.next_token: int | None = None  # sampled, to be fed in the next step
        self.leader: Sequence | None = None
        self.leader_handle: JobHandle | None = None
        self.follow_until = 0  # the leader's cache must hold this many tokens before this sequence copies them
        self.save_at = 0  # the persistent prompt cache saves the cache once it holds this many tokens (0: never)
        self.persisted = False  # the job's `cache_prefix` is saved, or being saved
        self.mark: tuple[int, list[int]] = (0, [])  # tokens/pending before the current step, to roll back

    def begin(self, handle: JobHandle, sampler: SamplerChain, early_sampler: SamplerChain | None = None) -> None:
        """`early_sampler`, if given, samples until the job's `min_tokens` are out (it bans ending tokens)."""
        self.handle = handle
        self.sampler = sampler
        self.early_sampler = early_sampler
        self.pending = []
        self.cached = 0
        self.save_at = 0
        self.persisted = False
        self.text = TextStream(handle.job.stop, handle.job.sampling.include_stop_str)
        self.budget = BudgetTracker(handle.job.reasoning) if handle.job.reasoning else None
        self.next_token = None
        self.generated = 0
        self.started_at = time.monotonic()
        self.first_token_at: float | None = None

    def follow(self, leader: Sequence, until: int) -> None:
        self.leader, self.leader_handle, self.follow_until = leader, leader.handle, until

    def leader_ready(self) -> bool:
        """The leader has the shared prefix in its cache, or has stopped serving the job it was prefilling."""
        lead = self.leader
        return lead is None or lead.handle is not self.leader_handle or len(lead.tokens) >= self.follow_until

    def current_sampler(self) -> SamplerChain:
        if self.early_sampler is not None and self.generated >= self.handle.job.sampling.min_tokens:
            self.early_sampler.free()
            self.early_sampler = None
        return self.early_sampler or self.sampler

    def release(self, now: float) -> None:
        self.sampler.free()
        if self.early_sampler is not None:
            self.early_sampler.free()
            self.early_sampler = None
        self.handle = None
        self.pending = []
        self.leader = self.leader_handle = None
        self.last_used = now
