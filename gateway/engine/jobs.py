"""The engine's contract: what a request thread submits and what it reads back.

A `GenerationJob` is already validated and tokenized; the engine never sees API fields. Events come back on the
job's own queue, so a request thread blocks only on its own output and never on the decode loop.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field
from typing import Callable, Literal, Union

from gateway.engine.reasoning_budget import ReasoningBudget
from gateway.types import ErrorKind, GatewayError, SamplingParams, TokenLogprob


@dataclass
class GenerationJob:
    prompt: list[int]
    sampling: SamplingParams
    max_tokens: int
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # None: off; N: the chosen token plus the top N alternatives
    grammar: str | None = None  # GBNF with a `root` rule: what the output must match
    grammar_triggers: tuple[str, ...] = ()  # regexes: the grammar applies only once one matches (lazy)
    reasoning: ReasoningBudget | None = None  # end reasoning after a number of tokens
    cache_prefix: int = 0  # tokens of the prompt worth saving in the persistent prompt cache (0: none)


@dataclass
class Started:
    """The job got a sequence; `cached_tokens` of its prompt were already in the KV cache."""

    prompt_tokens: int
    cached_tokens: int


@dataclass
class Prefilled:
    """Prompt tokens now in the cache (cached ones included), after each prefill step: progress for trackers."""

    done: int


@dataclass
class Piece:
    """One sampled token and the text it made final (empty while a stop string or UTF-8 is held back; the
    tail held back is released by a last Piece at the end)."""

    text: str
    logprobs: list[TokenLogprob] | None = None
    token: bool = True  # False for the last Piece that only releases held-back text: it is no new token


EngineFinish = Literal["stop", "length", "cancelled", "error"]


@dataclass
class Finished:
    reason: EngineFinish
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    stop_sequence: str | None = None
    queued_seconds: float = 0.0
    prompt_seconds: float = 0.0
    generation_seconds: float = 0.0
    error: GatewayError | None = None
    persisted: bool = False  # the job's `cache_prefix` is in the persistent prompt cache (or being written)


EngineEvent = Union[Started, Prefilled, Piece, Finished]


class JobHandle:
    """A submitted job as its request thread sees it. Events go to `sink` tagged with `tag`, so one request
    with several choices (n > 1, several prompts) waits on a single queue for all of them."""

    def __init__(self, job: GenerationJob, cancel: Callable[[JobHandle], None],
                 sink: queue.SimpleQueue | None = None, tag: int = 0):
        self.job = job
        self.sink: queue.SimpleQueue[tuple[int, EngineEvent]] = sink if sink is not None else queue.SimpleQueue()
        self.tag = tag
        self.submitted_at = time.monotonic()
        self._cancel = cancel
        self.finished = False
        self.grammar = None  # the parsed grammar, until a sequence's sampler takes it
        self.refused: GatewayError | None = None  # why the job cannot run (a grammar that does not parse)

    def emit(self, event: EngineEvent) -> None:
        """Called by the executor thread only."""
        if isinstance(event, Finished):
            self.finished = True
        self.sink.put((self.tag, event))

    def cancel(self) -> None:
        if not self.finished:
            self._cancel(self)


def check_fits(n_prompt: int, max_tokens: int, n_ctx: int) -> None:
    """Refuse a job that cannot fit the context: the facts go in `details`, each family words its own message."""
    if n_prompt == 0:
        raise GatewayError(ErrorKind.INVALID_REQUEST, "The prompt is empty after tokenization.", "prompt")
    if n_prompt + max_tokens > n_ctx:
        raise GatewayError(
            ErrorKind.CONTEXT_OVERFLOW,
            f"The prompt ({n_prompt} tokens) and max_tokens ({max_tokens}) exceed the context of {n_ctx} tokens.",
            "messages", details={"limit": n_ctx, "prompt_tokens": n_prompt, "max_tokens": max_tokens})


def check_queue(model: str, waiting: int, max_queue: int) -> None:
    """Refuse a job when `max_queue` jobs already wait for a sequence of `model`."""
    if waiting >= max_queue:
        raise GatewayError(ErrorKind.OVERLOADED, f"The server is busy: {waiting} requests are already waiting for "
                                                 f"`{model}`.", details={"model": model, "waiting": waiting})
