"""The `Backend` interface: everything the service may ask of a loaded model, whatever engine serves it.

The local llama.cpp backend (a runner process per model) is the first implementation; an upstream HTTP engine
is the next. So nothing here names llama.cpp: a generation is a stream of token-level events (`Started`,
`Prefilled`, `Piece`, `Finished` from `gateway.engine.jobs`, plain dataclasses) on one queue, tagged with the
choice they belong to, and failures are `GatewayError`s with facts in `details`.
"""

from __future__ import annotations

import queue
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from gateway.models.registry import ModelSpec
from gateway.output import OutputPlan
from gateway.types import InternalRequest, TokenizeResult, TokenLogprob, ToolCallDelta


@dataclass
class ChoicePlan:
    """One choice of a generation: its index, the prompt text an echo repeats, and whether its prompt counts
    in usage (n > 1 choices share one prompt)."""

    index: int
    prompt_text: str
    count_prompt: bool


@dataclass
class SplitPiece:
    """Output an engine has already split into answer text, reasoning and tool-call fragments (an upstream server
    parses its model's format itself): the output stage passes it through instead of reading markers. The local
    engine sends raw `Piece`s instead. `calls` are fragments of this choice's calls, as the output stage sends
    them (a call's first fragment carries its name; its id may be missing, and one is made up)."""

    text: str = ""
    thinking: str = ""
    calls: list[ToolCallDelta] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None
    token: bool = True  # counts as one generated token for progress (upstream servers send one per chunk)


class GenerationRun(ABC):
    """A submitted generation. Its events arrive on `events` as `(choice index, event)`: `Started`, `Prefilled`,
    `Piece` or `SplitPiece`, and every choice ends with one `Finished`. `close()` cancels whatever still runs; it
    is safe to call more than once."""

    events: queue.SimpleQueue
    choices: list[ChoicePlan]
    max_tokens: int
    output: OutputPlan = OutputPlan()  # what the output stage splits the text into (reasoning, tool calls)

    def next_event(self, timeout: float):
        """The next `(choice index, event)`; `queue.Empty` after `timeout` seconds without one."""
        return self.events.get(timeout=timeout)

    @abstractmethod
    def queue_position(self) -> int:
        """1-based place of the first choice among jobs waiting for a sequence; 0 once it runs."""

    @abstractmethod
    def close(self) -> None: ...


@dataclass
class BackendStatus:
    """What monitors show of a loaded model's engine: its geometry, load, and its health over time."""

    kind: str  # "local" (a llama.cpp runner process), "upstream" (OpenAI-compatible servers elsewhere), "managed"
    n_ctx: int
    parallel: int  # sequences decoded together; 0: no limit of ours (an upstream decides)
    health: str = "ok"  # ok | crashed (the next request starts a fresh engine) | unavailable (no upstream URL)
    pid: int | None = None
    n_threads: int | None = None
    repack: bool | None = None
    huge_pages: bool | None = None  # weights in memory on huge pages (a local runner's)
    huge_page_bytes: int = 0  # how much of the runner's memory is on them, as it reported after loading
    busy: int = 0
    waiting: int = 0
    kv_used: int = 0
    restarts: int = 0
    crashes: list[dict] = field(default_factory=list)  # {"at": epoch seconds, "reason": "signal SIGSEGV"}
    note: str | None = None  # e.g. why weight repacking was turned off
    capabilities: tuple[str, ...] = ("chat", "completion", "embedding", "tokenize")  # request kinds it serves
    endpoints: list[dict] = field(default_factory=list)  # upstream URLs: {url, state, in_flight, last_error}
    prompt_cache: dict | None = None  # the persistent prompt cache: entries, bytes, hits, misses... (None: off)
    parked: dict | None = None  # idle sequences' states parked out of the KV cache: entries, bytes, restored...
    prompt_rules: dict[str, dict[str, int]] = field(default_factory=dict)  # rule → {applied, saved_chars}


class Backend(ABC):
    """One loaded model. Every method may be called from any request thread."""

    name: str
    n_ctx: int
    can_warm: bool = False  # generate() takes `InternalRequest.warm` (prefill only, into a prompt cache)

    @abstractmethod
    def generate(self, req: InternalRequest, spec: ModelSpec) -> GenerationRun:
        """Prepare and submit every choice of a chat or completion. Errors known before decoding (a prompt over
        the window, a full queue, bad token ids) are raised here, so they reach the client as a status code."""

    @abstractmethod
    def embed(self, req: InternalRequest, spec: ModelSpec, on_started=None) -> tuple[list[list[float]], int]:
        """The vectors of `req.prompts` and the number of tokens embedded; `on_started(n_tokens)` is told before
        the work starts."""

    @abstractmethod
    def tokenize(self, req: InternalRequest, spec: ModelSpec) -> TokenizeResult: ...

    @abstractmethod
    def detokenize(self, tokens: list[int]) -> str: ...

    @abstractmethod
    def describe(self) -> BackendStatus: ...

    @abstractmethod
    def close(self) -> None:
        """Stop the engine and give its memory back (a local runner process exits)."""
