"""`SamplingParams` → a llama_sampler chain, so every sampling step runs in C over the logits in place.

The chain follows llama.cpp's own order (bias, penalties, top-k, typical, top-p, min-p, temperature, dist) so a
request gives the same distribution here as in llama-server. The chain owns every sampler added to it; only the
chain is freed.
"""

from __future__ import annotations

import ctypes
import random
from dataclasses import dataclass

import llama_cpp

from gateway.types import ErrorKind, GatewayError, SamplingParams


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request that leaves a field unset gets (llama-server's defaults)."""

    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    typical_p: float = 1.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0


def _or(value, default):
    return default if value is None else value


class SamplerChain:
    """One sequence's sampler; `sample(ctx, row)` picks a token from that batch row and records it."""

    def __init__(self, vocab: ctypes.c_void_p, n_vocab: int, params: SamplingParams,
                 defaults: SamplingDefaults = SamplingDefaults(), grammar: str | None = None):
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self._chain = llama_cpp.llama_sampler_chain_init(chain_params)
        try:
            self._build(vocab, n_vocab, params, defaults, grammar)
        except BaseException:
            self.free()
            raise

    def _add(self, sampler) -> None:
        llama_cpp.llama_sampler_chain_add(self._chain, sampler)

    def _build(self, vocab, n_vocab: int, p: SamplingParams, d: SamplingDefaults, grammar: str | None) -> None:
        if grammar:
            sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode(), b"root")
            if not sampler:
                raise GatewayError(ErrorKind.INVALID_REQUEST, "The grammar could not be parsed.", "grammar")
            self._add(sampler)
        if p.logit_bias:
            items = [(tok, bias) for tok, bias in p.logit_bias.items() if 0 <= tok < n_vocab]
            array = (llama_cpp.llama_logit_bias * len(items))(
                *(llama_cpp.llama_logit_bias(tok, bias) for tok, bias in items))
            self._add(llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(items), array))
        repeat = _or(p.repeat_penalty, d.repeat_penalty)
        freq = _or(p.frequency_penalty, d.frequency_penalty)
        presence = _or(p.presence_penalty, d.presence_penalty)
        if repeat != 1.0 or freq != 0.0 or presence != 0.0:
            last_n = _or(p.repeat_last_n, d.repeat_last_n)
            self._add(llama_cpp.llama_sampler_init_penalties(n_vocab, last_n, repeat, freq, presence))
        temperature = _or(p.temperature, d.temperature)
        if temperature <= 0:
            self._add(llama_cpp.llama_sampler_init_greedy())
            return
        top_k = _or(p.top_k, d.top_k)
        if top_k > 0:
            self._add(llama_cpp.llama_sampler_init_top_k(top_k))
        typical = _or(p.typical_p, d.typical_p)
        if typical < 1.0:
            self._add(llama_cpp.llama_sampler_init_typical(typical, 1))
        top_p = _or(p.top_p, d.top_p)
        if top_p < 1.0:
            self._add(llama_cpp.llama_sampler_init_top_p(top_p, 1))
        min_p = _or(p.min_p, d.min_p)
        if min_p > 0.0:
            self._add(llama_cpp.llama_sampler_init_min_p(min_p, 1))
        self._add(llama_cpp.llama_sampler_init_temp(temperature))
        seed = p.seed if p.seed is not None else random.getrandbits(32)
        self._add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: ctypes.c_void_p, row: int) -> int:
        """Sample from batch row `row`; llama_sampler_sample also accepts the token into the chain."""
        return llama_cpp.llama_sampler_sample(self._chain, ctx, row)

    def free(self) -> None:
        if self._chain:
            llama_cpp.llama_sampler_free(self._chain)
            self._chain = None
