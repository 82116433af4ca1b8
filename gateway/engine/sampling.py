"""`SamplingParams` → a llama_sampler chain, so every sampling step runs in C over the logits in place.

The chain follows llama.cpp's own order (bias, penalties, top-k, typical, top-p, min-p, temperature, dist) so a
request gives the same distribution here as in llama-server. The chain owns every sampler added to it; only the
chain is freed.

A grammar costs ~5 ms per token when applied to all 49k candidates of a small vocabulary, and the decode loop
samples every sequence of a batch in turn, so applied naively one constrained stream would slow every other
stream of the batch by a quarter. As llama.cpp's own `common_sampler` does, a constrained sequence first samples
without the grammar and asks the grammar only whether that one token is allowed; only when it is not does it
resample, and then over the 256 likeliest candidates first (the whole vocabulary only if none of those is
allowed). bench/README.md has the measured cost.
"""

from __future__ import annotations

import ctypes
import math
import random
from collections import OrderedDict
from dataclasses import dataclass

import llama_cpp
import numpy as np

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


NARROW = 256
"""Candidates a rejected sample is retried over before the whole vocabulary (see the module docstring)."""


def _new_chain():
    params = llama_cpp.llama_sampler_chain_default_params()
    params.no_perf = True
    return llama_cpp.llama_sampler_chain_init(params)


class Grammar:
    """One sequence's grammar state (a clone of a cached parse); owned by whoever frees it."""

    def __init__(self, sampler):
        self._sampler = sampler
        self._one = (llama_cpp.llama_token_data * 1)()
        self._one_array = llama_cpp.llama_token_data_array(self._one, 1, -1, False)

    def allows(self, token: int) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        self._one_array.size, self._one_array.selected = 1, -1
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(self._one_array))
        return not math.isinf(self._one[0].logit)

    def apply(self, array: llama_cpp.llama_token_data_array) -> None:
        llama_cpp.llama_sampler_apply(self._sampler, ctypes.byref(array))

    def accept(self, token: int) -> None:
        llama_cpp.llama_sampler_accept(self._sampler, token)

    def free(self) -> None:
        if self._sampler:
            llama_cpp.llama_sampler_free(self._sampler)
            self._sampler = None

    def __del__(self) -> None:  # a job cancelled before it got a sequence never reaches a sampler's free()
        if llama_cpp is not None:
            self.free()


class GrammarCache:
    """Parsed grammars by text and triggers; each job gets a clone. Parsing happens on the thread that submits
    (the runner's receiving thread), never on the decode loop, and a schema used again is not parsed again."""

    def __init__(self, vocab: ctypes.c_void_p, size: int = 32):
        self._vocab = vocab
        self._size = size
        self._parsed: OrderedDict[tuple[str, tuple[str, ...]], object] = OrderedDict()

    def new(self, text: str, triggers: tuple[str, ...] = ()) -> Grammar:
        key = (text, triggers)
        parsed = self._parsed.get(key)
        if parsed is None:
            parsed = self._parse(text, triggers)
            self._parsed[key] = parsed
            if len(self._parsed) > self._size:
                llama_cpp.llama_sampler_free(self._parsed.popitem(last=False)[1])
        self._parsed.move_to_end(key)
        return Grammar(llama_cpp.llama_sampler_clone(parsed))

    def _parse(self, text: str, triggers: tuple[str, ...]):
        if triggers:  # lazy: free text until a trigger pattern matches, the grammar from its first group on
            patterns = (ctypes.c_char_p * len(triggers))(*(t.encode() for t in triggers))
            sampler = llama_cpp.llama_sampler_init_grammar_lazy_patterns(
                self._vocab, text.encode(), b"root", patterns, len(triggers), None, 0)
        else:
            sampler = llama_cpp.llama_sampler_init_grammar(self._vocab, text.encode(), b"root")
        if not sampler:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "The output grammar could not be parsed.", "grammar")
        return sampler

    def free(self) -> None:
        while self._parsed:
            llama_cpp.llama_sampler_free(self._parsed.popitem()[1])


class _Candidates:
    """A reusable llama_token_data_array over the whole vocabulary, refilled from a row of logits."""

    def __init__(self, n_vocab: int):
        self.n_vocab = n_vocab
        self._data = (llama_cpp.llama_token_data * n_vocab)()
        self._view = np.ctypeslib.as_array(self._data).view(
            np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)]))
        self._ids = np.arange(n_vocab, dtype=np.int32)
        self.array = llama_cpp.llama_token_data_array(self._data, n_vocab, -1, False)

    def fill(self, logits) -> llama_cpp.llama_token_data_array:
        self._view["id"] = self._ids
        self._view["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self.array.data = ctypes.cast(self._data, llama_cpp.llama_token_data_p)
        self.array.size, self.array.selected, self.array.sorted = self.n_vocab, -1, False
        return self.array

    def any_allowed(self) -> bool:
        return any(not math.isinf(self.array.data[i].logit) for i in range(self.array.size))

    def selected(self) -> int:
        return self.array.data[self.array.selected].id


class SamplerChain:
    """One sequence's sampler; `sample(ctx, row)` picks a token from that batch row and records it. With a
    grammar the chain is split in two (bias and penalties; then truncation and the draw) so the grammar can sit
    between them; it owns the grammar only if `owns_grammar`."""

    def __init__(self, vocab: ctypes.c_void_p, n_vocab: int, params: SamplingParams,
                 defaults: SamplingDefaults = SamplingDefaults(), grammar: Grammar | None = None,
                 owns_grammar: bool = True):
        self._grammar = grammar
        self._owns_grammar = owns_grammar
        self._pre = _new_chain()
        self._post = _new_chain() if grammar is not None else self._pre
        self._narrow = llama_cpp.llama_sampler_init_top_k(NARROW) if grammar is not None else None
        self._candidates = _Candidates(n_vocab) if grammar is not None else None
        try:
            self._build(n_vocab, params, defaults)
        except BaseException:
            self.free()
            raise

    def _build(self, n_vocab: int, p: SamplingParams, d: SamplingDefaults) -> None:
        if p.logit_bias:
            items = [(tok, bias) for tok, bias in p.logit_bias.items() if 0 <= tok < n_vocab]
            array = (llama_cpp.llama_logit_bias * len(items))(
                *(llama_cpp.llama_logit_bias(tok, bias) for tok, bias in items))
            llama_cpp.llama_sampler_chain_add(self._pre, llama_cpp.llama_sampler_init_logit_bias(
                n_vocab, len(items), array))
        repeat = _or(p.repeat_penalty, d.repeat_penalty)
        freq = _or(p.frequency_penalty, d.frequency_penalty)
        presence = _or(p.presence_penalty, d.presence_penalty)
        if repeat != 1.0 or freq != 0.0 or presence != 0.0:
            last_n = _or(p.repeat_last_n, d.repeat_last_n)
            llama_cpp.llama_sampler_chain_add(self._pre, llama_cpp.llama_sampler_init_penalties(
                n_vocab, last_n, repeat, freq, presence))
        for sampler in _draw(p, d):
            llama_cpp.llama_sampler_chain_add(self._post, sampler)

    def sample(self, ctx: ctypes.c_void_p, row: int) -> int:
        """Sample from batch row `row` and record the token (penalties' history, the grammar's state)."""
        if self._grammar is None:
            return llama_cpp.llama_sampler_sample(self._pre, ctx, row)  # it also accepts the token
        logits = llama_cpp.llama_get_logits_ith(ctx, row)
        token = self._draw_from(self._candidates.fill(logits), narrow=False, constrain=False)
        if not self._grammar.allows(token):
            token = self._draw_from(self._candidates.fill(logits), narrow=True, constrain=True)
            if token < 0:
                token = self._draw_from(self._candidates.fill(logits), narrow=False, constrain=True)
            if not self._grammar.allows(token):  # accepting it would abort llama.cpp
                raise GatewayError(ErrorKind.INVALID_REQUEST, "The output constraint allows no token that the "
                                                              "sampling settings allow (check logit_bias).")
        llama_cpp.llama_sampler_accept(self._pre, token)
        llama_cpp.llama_sampler_accept(self._post, token)
        self._grammar.accept(token)
        return token

    def take(self, token: int) -> bool:
        """Record a token chosen outside the sampler (a forced one), if the grammar allows it; False if not."""
        if self._grammar is not None and not self._grammar.allows(token):
            return False
        llama_cpp.llama_sampler_accept(self._pre, token)
        if self._post is not self._pre:
            llama_cpp.llama_sampler_accept(self._post, token)
        if self._grammar is not None:
            self._grammar.accept(token)
        return True

    def _draw_from(self, array, narrow: bool, constrain: bool) -> int:
        llama_cpp.llama_sampler_apply(self._pre, ctypes.byref(array))
        if narrow:
            llama_cpp.llama_sampler_apply(self._narrow, ctypes.byref(array))
        if constrain:
            self._grammar.apply(array)
            array.sorted = False  # the grammar's -inf breaks the order `narrow` left, which top_k would trust
            if narrow and not self._candidates.any_allowed():
                return -1
        llama_cpp.llama_sampler_apply(self._post, ctypes.byref(array))
        return self._candidates.selected()

    def free(self) -> None:
        if self._post is not None and self._post is not self._pre:
            llama_cpp.llama_sampler_free(self._post)
        if self._pre is not None:
            llama_cpp.llama_sampler_free(self._pre)
        self._pre = self._post = None
        if self._narrow is not None:
            llama_cpp.llama_sampler_free(self._narrow)
            self._narrow = None
        if self._grammar is not None and self._owns_grammar:
            self._grammar.free()
        self._grammar = None


def _draw(p: SamplingParams, d: SamplingDefaults) -> list:
    """Truncation, temperature and the draw (or greedy), in llama.cpp's order."""
    temperature = _or(p.temperature, d.temperature)
    if temperature <= 0:
        return [llama_cpp.llama_sampler_init_greedy()]
    samplers = []
    top_k = _or(p.top_k, d.top_k)
    if top_k > 0:
        samplers.append(llama_cpp.llama_sampler_init_top_k(top_k))
    typical = _or(p.typical_p, d.typical_p)
    if typical < 1.0:
        samplers.append(llama_cpp.llama_sampler_init_typical(typical, 1))
    top_p = _or(p.top_p, d.top_p)
    if top_p < 1.0:
        samplers.append(llama_cpp.llama_sampler_init_top_p(top_p, 1))
    min_p = _or(p.min_p, d.min_p)
    if min_p > 0.0:
        samplers.append(llama_cpp.llama_sampler_init_min_p(min_p, 1))
    samplers.append(llama_cpp.llama_sampler_init_temp(temperature))
    seed = p.seed if p.seed is not None else random.getrandbits(32)
    samplers.append(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return samplers
