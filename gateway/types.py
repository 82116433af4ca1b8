"""The one vocabulary shared by adapters, the service and the engine.

Adapters translate wire JSON into these types and back; the service and engine never see a family's JSON.
Everything here is plain data: no I/O, no Flask, no llama.cpp.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal, Union


class ErrorKind(str, Enum):
    """What went wrong, independent of any API family; each adapter maps a kind to its status and body."""

    INVALID_REQUEST = "invalid_request"
    NOT_FOUND = "not_found"
    CONTEXT_OVERFLOW = "context_overflow"
    UNAUTHORIZED = "unauthorized"
    TOO_LARGE = "too_large"
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class GatewayError(Exception):
    """A failure a client should see: the kind picks the status, the message names the field and the limit."""

    def __init__(self, kind: ErrorKind, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param
        self.code = code

    def __repr__(self) -> str:
        return f"GatewayError({self.kind.value}, {self.message!r}, param={self.param!r})"


def invalid(message: str, param: str | None = None) -> GatewayError:
    """Shorthand for the most common error: a field with a wrong type or value."""
    return GatewayError(ErrorKind.INVALID_REQUEST, message, param)


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


RequestKind = Literal["chat", "completion", "embedding", "tokenize", "list_models", "show_model", "health"]

Prompt = Union[str, list[int]]


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
    constraint: Constraint | None = None
    stream: bool = False
    n: int = 1
    echo: bool = False
    keep_alive: float | None = None
    think: bool | None = None
    add_generation_prompt: bool = True
    render: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# Output


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, other: Usage) -> None:
        self.prompt_tokens += other.prompt_tokens
        self.completion_tokens += other.completion_tokens
        self.cached_tokens += other.cached_tokens


@dataclass
class Timings:
    """Durations in seconds, measured by the service and engine."""

    load: float = 0.0
    queued: float = 0.0
    prompt: float = 0.0
    generation: float = 0.0
    total: float = 0.0


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


OutputEvent = Union[TextDelta, ThinkingDelta, ToolCallDelta, ChoiceDone, Done]


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


@dataclass
class ModelInfo:
    """What listing endpoints show about a model, read from its GGUF header without loading weights."""

    name: str
    created: int
    path: str = ""
    size: int = 0
    architecture: str = ""
    context_length: int = 0
    parameter_count: int = 0
    quantization: str = ""
    aliases: list[str] = field(default_factory=list)
    loaded: bool = False


@dataclass
class ModelList:
    models: list[ModelInfo]


@dataclass
class HealthResult:
    status: str
    models_loaded: list[str]


Result = Union[GenerationResult, EmbeddingResult, ModelList, ModelInfo, HealthResult]
