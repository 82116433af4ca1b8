"""The one vocabulary shared by adapters, the service and the engine.

Adapters translate wire JSON into these types and back; the service and engine never see a family's JSON.
Everything here is plain data: no I/O, no Flask, no llama.cpp.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Union


class ErrorKind(str, Enum):
    """What went wrong, independent of any API family; each adapter maps a kind to its status and body."""

    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    CONTEXT_OVERFLOW = "context_overflow"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"  # a web page or Host this server does not serve, or a change turned off
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"
    RATE_LIMITED = "rate_limited"  # an API key over its limits: retry after `details["retry_after"]` seconds
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"  # a generation ran past `request_timeout` and was ended
    INTERNAL = "internal"


class GatewayError(Exception):
    """A failure a client should see: the kind picks the status, the message names the field and the limit."""

    def __init__(self, kind: ErrorKind, message: str, param: str | None = None, code: str | None = None,
                 details: dict[str, Any] | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code
        self.details = details or {}  # facts a family words its own message from: model; limit, prompt_tokens...

    def __repr__(self) -> str:
        return f"GatewayError({self.kind.value}, {self.message!r}, param={self.param!r})"

    def __reduce__(self):  # crosses the runner's pipe whole (Exception pickles only `args`)
        return GatewayError, (self.kind, self.message, self.param, self.code, self.details)


def invalid(message: str, param: str | None = None) -> GatewayError:
    """Shorthand for the most common error: a field with a wrong type or value."""
    return GatewayError(ErrorKind.INVALID_REQUEST, message, param)


_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


MAX_DURATION = (2**63 - 1) / 1e9  # seconds: Go's largest time.Duration, what Ollama clamps keep_alive to


def parse_duration(value: Any) -> float:
    """Seconds from a keep_alive value the way Ollama reads one: a number is seconds, a string is a Go duration
    ("5m", "1h30m", "300ms") or a bare number of seconds; anything negative means forever and is returned
    as -1, and anything longer than Go's largest duration is that duration. ValueError otherwise (NaN and
    infinities included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"expected a duration such as \"5m\" or a number of seconds, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        sign = -1.0 if text.startswith("-") else 1.0
        body = text.lstrip("+-")
        if re.fullmatch(r"\d+(\.\d*)?", body):  # a bare number is seconds, as OLLAMA_KEEP_ALIVE reads it
            return -1.0 if sign < 0 else float(body)
        parts = _DURATION_PART.findall(body)
        if not body or "".join(n + u for n, u in parts) != body:
            raise ValueError(f"expected a duration such as \"5m\", \"1h30m\" or \"300ms\", got {value!r}")
        value = sign * sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    if not math.isfinite(value):
        raise ValueError(f"expected a finite duration, got {value!r}")
    return -1.0 if value < 0 else min(float(value), MAX_DURATION)


# ---------------------------------------------------------------------------------------------------------------
# Requests


@dataclass
class ImagePart:
    """An image in a message; kept so the service can refuse it clearly for models without vision."""

    url: str


@dataclass
class ToolCall:
    """A call the assistant made. `arguments` is always a JSON string here; adapters convert to objects."""

    id: str
    name: str
    arguments: str


@dataclass
class Message:
    """One chat turn. `content` is the text; images are kept apart so templates always get a string."""

    role: str
    content: str | None = None
    images: list[ImagePart] = field(default_factory=list)
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None
    thinking: str | None = None


@dataclass
class Tool:
    name: str
    description: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    strict: bool = False


ToolChoice = Union[Literal["auto", "none", "required"], str]
"""'auto' | 'none' | 'required', or the name of the one function that must be called."""


@dataclass
class Constraint:
    """Output restriction: json (any object), json_schema (value is the schema), regex, choice (list), gbnf."""

    kind: Literal["json", "json_schema", "regex", "choice", "gbnf"]
    value: Any = None
    param: str = field(default="", compare=False)  # the request field it came from, named in errors


@dataclass
class SamplingParams:
    """Request-time generation settings. None means 'the model's default'; the engine fills defaults in."""

    temperature: float | None = None
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    typical_p: float | None = None
    repeat_penalty: float | None = None
    repeat_last_n: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)
    seed: int | None = None
    max_tokens: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: bool = False
    top_logprobs: int = 0
    ignore_eos: bool = False  # keep generating past end-of-generation tokens (vLLM)
    min_tokens: int = 0  # end-of-generation tokens and stop strings are not honoured before this many tokens
    stop_token_ids: list[int] = field(default_factory=list)  # extra tokens that end generation
    include_stop_str: bool = False  # return the matched stop string at the end of the text (vLLM)
    skip_special_tokens: bool = True  # leave control tokens (e.g. <|im_end|>) out of the text


MODEL_PARAMETERS: dict[str, str] = {
    "num_predict": "max_tokens", "temperature": "temperature", "top_k": "top_k", "top_p": "top_p",
    "min_p": "min_p", "typical_p": "typical_p", "repeat_penalty": "repeat_penalty",
    "repeat_last_n": "repeat_last_n", "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty", "seed": "seed", "stop": "stop",
}
"""Ollama option / Modelfile PARAMETER names → `SamplingParams` fields: the vocabulary of per-model defaults
(an Ollama store's params layer, `parameters` in config) and of Ollama's `options`."""


RequestKind = Literal[
    "chat", "completion", "embedding",
    "tokenize", "detokenize",  # TokenizeResult / DetokenizeResult
    "list_models", "show_model", "list_running", "health", "version",  # queries: ModelList, ModelInfo, ...
    "load_model", "unload_model",  # LoadResult
    "copy_model", "delete_model", "create_model", "pull_model",  # ModelChange → Progress events
    "get_response", "delete_response",  # a stored Responses API answer (`response.id`): StoredResponse, Deleted
]
"""`tokenize` takes `messages` (rendered with the chat template) or `prompts[0]` (text); `detokenize` takes
`prompts[0]` as token ids; `show_model` with an empty `model` is the default model (TGI's /info)."""

Prompt = Union[str, list[int]]


@dataclass
class ModelChange:
    """A change to the model store. copy: `source` → `name`; delete: `name`; create: `name` from `source` (a GGUF
    path on disk or an existing model name) with `template`, `system`, `parameters` as that model's defaults;
    pull: `name` from its registry (`insecure` allows plain HTTP)."""

    op: Literal["copy", "delete", "create", "pull"]
    name: str
    source: str = ""
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    insecure: bool = False


@dataclass
class InternalRequest:
    """What every adapter produces. `render` holds the adapter's own rendering choices (include_usage,
    encoding_format, ...) that the service carries through untouched and hands back with the result."""

    kind: RequestKind
    model: str = ""
    messages: list[Message] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    sampling: SamplingParams = field(default_factory=SamplingParams)
    tools: list[Tool] = field(default_factory=list)
    tool_choice: ToolChoice = "auto"
    parallel_tool_calls: bool = True  # the model may make several calls in one answer
    tools_in_template: bool = True  # the chat template is given `tools` (not when a system prompt describes them)
    constraint: Constraint | None = None
    stream: bool = False
    n: int = 1
    echo: bool = False
    keep_alive: float | None = None
    think: bool | None = None  # reasoning on or off (reaches the template as enable_thinking); None: the model's way
    keep_think_tags: bool = False  # leave reasoning in the text, tags and all (Ollama with `think` unset)
    think_required: bool = False  # `think` on for a model that cannot reason is a 400 (Ollama), not ignored
    reasoning_budget: int | None = None  # reasoning ends after this many tokens (Anthropic budget_tokens)
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # render the last (assistant) message open, to be continued
    template_kwargs: dict[str, Any] = field(default_factory=dict)  # extra variables for the chat template
    add_special_tokens: bool = True  # tokenize: add BOS where the model wants it
    suffix: str | None = None  # fill-in-the-middle: text after the insertion point
    num_ctx: int | None = None  # cap this request's window (prompt + output) at this many tokens; never reloads
    truncate: Literal["error", "drop_turns"] = "error"  # a chat too long: refuse, or drop oldest turns (Ollama)
    truncate_tokens: int | None = None  # keep only the last N prompt tokens (TGI `truncate`, vLLM)
    clip_max_tokens: bool = False  # a max_tokens beyond the window is cut to fit, not refused (Anthropic)
    load_options: dict[str, int] = field(default_factory=dict)  # n_threads, n_gpu_layers: used if this loads
    change: ModelChange | None = None
    response: ResponseThread | None = None  # the Responses API's stored conversations
    render: dict[str, Any] = field(default_factory=dict)
    warm: bool = False  # POST /api/cache/warm: prefill the prompt into the prompt cache, generate nothing


@dataclass
class ResponseThread:
    """Where a Responses API request sits in its stored conversation. The service puts the conversation of
    `previous_id` before `InternalRequest.messages` (after the request's own instructions, which are not carried
    over, as OpenAI does) and, when `store`, keeps the answer under `id` with the conversation that led to it.
    For get_response / delete_response, `id` is the one asked for."""

    id: str
    previous_id: str | None = None
    store: bool = True
    instructions: bool = False  # messages[0] is this request's instructions: it stays first and is not kept


# ---------------------------------------------------------------------------------------------------------------
# Output


@dataclass
class TokenLogprob:
    """A generated token: text, log-probability, UTF-8 bytes, and the top alternatives as
    (text, logprob, bytes, id). `id` and `special` (a control token) serve TGI's token objects."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[tuple[str, float, list[int], int]] = field(default_factory=list)
    id: int = -1
    special: bool = False


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # of completion_tokens: those the output stage read as reasoning

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens
        self.reasoning_tokens += other.reasoning_tokens


@dataclass
class Timings:
    """Durations in seconds, measured by the service and engine."""

    load: float = 0.0
    queued: float = 0.0
    prompt: float = 0.0
    generation: float = 0.0
    total: float = 0.0


@dataclass
class PromptStarted:
    """The engine took choice `index`'s prompt: its size and the prefix reused from the KV cache. Comes before
    that choice's text; families whose stream opens with usage (Anthropic's message_start) wait for it."""

    index: int
    prompt_tokens: int
    cached_tokens: int


@dataclass
class TextDelta:
    index: int
    text: str
    logprobs: list[TokenLogprob] | None = None


@dataclass
class ThinkingDelta:
    index: int
    text: str


@dataclass
class ToolCallDelta:
    """A fragment of a tool call: the first fragment of a call carries id and name, later ones only arguments."""

    index: int
    call_index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


FinishReason = Literal["stop", "length", "tool_calls", "cancelled", "error"]


@dataclass
class ChoiceDone:
    """One choice (one engine sequence) has ended."""

    index: int
    finish_reason: FinishReason
    stop_sequence: str | None = None
    usage: Usage = field(default_factory=Usage)


@dataclass
class Done:
    """The whole response has ended: totals over all choices."""

    usage: Usage
    timings: Timings = field(default_factory=Timings)




@dataclass
class Choice:
    """A finished choice, as non-streaming renderers see it."""

    index: int
    text: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    finish_reason: FinishReason = "stop"
    stop_sequence: str | None = None
    logprobs: list[TokenLogprob] | None = None


@dataclass
class GenerationResult:
    choices: list[Choice]
    usage: Usage
    timings: Timings = field(default_factory=Timings)


@dataclass
class EmbeddingResult:
    vectors: list[list[float]]
    usage: Usage
    timings: Timings = field(default_factory=Timings)


@dataclass
class ModelInfo:
    """What listing endpoints show about a model, read from its GGUF header without loading weights.
    `metadata`, `template` and `parameters` are filled for `show_model` only (every GGUF key except token
    arrays, the chat template source, the model's default options)."""

    name: str
    created: int
    path: str = ""
    size: int = 0
    architecture: str = ""
    context_length: int = 0  # trained context
    max_model_len: int = 0  # the context this server gives it (loaded, or what it would get)
    context_reason: str = ""  # why max_model_len has that size (trained length, memory...)
    parameter_count: int = 0
    parameter_size: str = ""  # "135M", "1.2B"
    quantization: str = ""  # "Q4_1"
    digest: str = ""  # sha256 hex of the GGUF file (Ollama store: the model layer's digest)
    aliases: list[str] = field(default_factory=list)
    loaded: bool = False
    capabilities: list[str] = field(default_factory=list)  # completion, embedding, vision, tools, insert, thinking
    metadata: dict[str, Any] = field(default_factory=dict)
    template: str = ""
    system: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelList:
    models: list[ModelInfo]


@dataclass
class RunningModel:
    """A loaded model (Ollama's /api/ps). `expires_at` is epoch seconds, None for never."""

    info: ModelInfo
    size: int
    size_vram: int
    expires_at: float | None
    context_length: int
    runner: dict[str, Any] = field(default_factory=dict)  # the engine's health: pid, restarts, crashes, note


@dataclass
class RunningList:
    models: list[RunningModel]


@dataclass
class HealthResult:
    status: str
    models_loaded: list[str]
    gpu_offload: bool = False  # this build of llama.cpp can put layers on a GPU
    devices: list[dict[str, Any]] = field(default_factory=list)  # what llama.cpp sees: name, type, memory


@dataclass
class VersionResult:
    version: str


@dataclass
class TokenizeResult:
    tokens: list[int]
    pieces: Sequence[str]  # each token's text
    max_model_len: int
    model: str


@dataclass
class DetokenizeResult:
    text: str


@dataclass
class LoadResult:
    """A model was loaded (a chat/generate with nothing to say) or unloaded (keep_alive 0)."""

    model: str
    action: Literal["load", "unload"]


@dataclass
class WarmResult:
    """A prompt prefilled into the cache: its size, what of it the cache now holds (`reused`: what it held
    already), how long it took, and whether it is in the persistent prompt cache (or being written there)."""

    model: str
    prompt_tokens: int
    cached_tokens: int
    reused_tokens: int
    seconds: float
    persisted: bool


@dataclass
class StoredResponse:
    """A kept Responses API answer: the conversation that led to it with its own output appended as messages
    (what a later `previous_response_id` continues), the result, and the adapter's `render` values, from which the
    adapter renders the same response object again."""

    id: str
    messages: list[Message]
    result: GenerationResult
    render: dict[str, Any] = field(default_factory=dict)


@dataclass
class Deleted:
    """A stored object was deleted (the Responses API's DELETE)."""

    id: str


@dataclass
class Progress:
    """One step of a model change (pull, create, copy, delete); the last one of a success has status 'success'."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


Result = Union[GenerationResult, EmbeddingResult, ModelList, ModelInfo, HealthResult, RunningList, VersionResult,
               TokenizeResult, DetokenizeResult, LoadResult, Progress, StoredResponse, Deleted, WarmResult]

OutputEvent = Union[PromptStarted, TextDelta, ThinkingDelta, ToolCallDelta, ChoiceDone, Done, Progress]
"""What a stream renderer is fed: generation events, or a model change's progress."""
