"""vLLM family: vLLM's own endpoints, /tokenize, /detokenize, /version and the legacy demo server's /generate.
The extra fields vLLM accepts on the OpenAI routes (also read here by /generate and the chat-form /tokenize) are
in `adapters/vllm_extras.py`, a leaf that the OpenAI adapter imports too.

Messages follow vLLM's wording (`SamplingParams._verify_args`, the protocol validators) with the field in
backticks; errors use vLLM's body `{"error": {"message", "type", "param", "code": <status>}}`
(shared/API-SPEC.md §4).

`POST /generate` and `POST /tokenize` are shared with TGI, whose routes accept only bodies with `inputs`; these
routes have no `accepts` and take every other body.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from adapters.base import (
    BaseStream,
    Frame,
    RequestContext,
    Route,
    expect_object,
    get_number,
    get_typed,
    is_token,
    type_name,
)
from adapters.openai_shapes import parse_messages, parse_tools
from adapters.vllm_extras import apply_chat_template_fields, apply_extras
from gateway.types import (
    DetokenizeResult,
    Done,
    ErrorKind,
    GatewayError,
    GenerationResult,
    InternalRequest,
    OutputEvent,
    SamplingParams,
    TextDelta,
    TokenizeResult,
    VersionResult,
    invalid,
)

FAMILY = "vllm"
LEGACY_DEFAULT_MAX_TOKENS = 16  # SamplingParams' default
MAX_N = 16

ERRORS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_REQUEST: (400, "BadRequestError"),
    ErrorKind.CONTEXT_OVERFLOW: (400, "BadRequestError"),
    ErrorKind.NOT_FOUND: (404, "NotFoundError"),
    ErrorKind.UNAUTHORIZED: (401, "Unauthorized"),
    ErrorKind.FORBIDDEN: (403, "Forbidden"),
    ErrorKind.TOO_LARGE: (413, "Request Entity Too Large"),
    ErrorKind.OVERLOADED: (429, "Too Many Requests"),
    ErrorKind.RATE_LIMITED: (429, "Too Many Requests"),
    ErrorKind.UNAVAILABLE: (503, "Service Unavailable"),
    ErrorKind.TIMEOUT: (504, "Gateway Timeout"),
    ErrorKind.INTERNAL: (500, "InternalServerError"),
}

# The legacy /generate takes SamplingParams keywords: key → (integer, accepted, what the value must be).
LEGACY_NUMBERS: dict[str, tuple[bool, Callable[[float], bool], str]] = {
    "temperature": (False, lambda v: v >= 0, "must be non-negative"),
    "top_p": (False, lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "top_k": (True, lambda v: v >= -1, "must be -1 or 0 (disable), or at least 1"),
    "min_p": (False, lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "presence_penalty": (False, lambda v: -2 <= v <= 2, "must be in [-2, 2]"),
    "frequency_penalty": (False, lambda v: -2 <= v <= 2, "must be in [-2, 2]"),
    "seed": (True, lambda v: True, ""),
    "max_tokens": (True, lambda v: v >= 1, "must be at least 1"),
    "n": (True, lambda v: 1 <= v <= MAX_N, f"must be between 1 and {MAX_N}"),
    "logprobs": (True, lambda v: v >= 0, "must be non-negative"),  # accepted; the response has no place for it
}


# ---------------------------------------------------------------------------------------------------------------
# Parsing: vLLM's own endpoints


def _optional_model(body: dict[str, Any]) -> str:
    """`model` is optional on these endpoints; empty means the default model."""
    return get_typed(body, "model", str, "a string", default="")


def parse_tokenize(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /tokenize: the completion form `{prompt, add_special_tokens=true}` or the chat form
    `{messages, add_generation_prompt, continue_final_message, add_special_tokens=false, tools, ...}`."""
    body = expect_object(body)
    req = InternalRequest(
        kind="tokenize",
        model=_optional_model(body),
        render={"return_token_strs": get_typed(body, "return_token_strs", bool, "a boolean", default=False)},
    )
    if body.get("messages") is not None:
        req.messages = parse_messages(body["messages"])
        req.tools = parse_tools(body.get("tools"))
        req.add_special_tokens = get_typed(body, "add_special_tokens", bool, "a boolean", default=False)
        apply_chat_template_fields(body, req)
        return req
    if body.get("prompt") is None:
        raise invalid("Missing required parameter: `prompt` (text to tokenize) or `messages` (a chat to render and "
                      "tokenize).", "prompt")
    req.prompts = [get_typed(body, "prompt", str, "a string")]
    req.add_special_tokens = get_typed(body, "add_special_tokens", bool, "a boolean", default=True)
    return req


def parse_detokenize(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /detokenize `{model?, tokens}`."""
    body = expect_object(body)
    tokens = body.get("tokens")
    if not isinstance(tokens, list) or not all(is_token(t) for t in tokens):
        got = "nothing" if tokens is None else type_name(tokens)
        raise invalid(f"Invalid value for `tokens`: expected an array of token ids (non-negative integers), got {got}.",
                      "tokens")
    return InternalRequest(kind="detokenize", model=_optional_model(body), prompts=[list(tokens)])


def parse_version(body: Any, ctx: RequestContext) -> InternalRequest:
    return InternalRequest(kind="version")


def parse_generate(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /generate of `vllm.entrypoints.api_server`: `prompt`, `stream` and SamplingParams keywords. Unknown
    keywords are ignored (vLLM would fail with a 500); `model` picks a model, the default when absent."""
    body = expect_object(body)
    prompt = get_typed(body, "prompt", str, "a string", required=True)
    numbers = {key: _legacy_number(body, key) for key in LEGACY_NUMBERS}
    n = numbers.pop("n") or 1
    numbers.pop("logprobs")
    if numbers["top_k"] == -1:
        numbers["top_k"] = 0  # vLLM's "disabled" is llama.cpp's 0
    max_tokens = numbers.pop("max_tokens") or LEGACY_DEFAULT_MAX_TOKENS
    req = InternalRequest(
        kind="completion",
        model=_optional_model(body),
        prompts=[prompt],
        sampling=SamplingParams(**numbers, max_tokens=max_tokens, stop=_legacy_stop(body.get("stop"))),
        stream=get_typed(body, "stream", bool, "a boolean", default=False),
        n=n,
    )
    _check_best_of(body, n)
    apply_extras(body, req)
    return req


def _legacy_number(body: dict[str, Any], key: str) -> Any:
    integer, accepted, rule = LEGACY_NUMBERS[key]
    value = get_number(body, key, integer=integer)
    if value is not None and not accepted(value):
        raise invalid(f"`{key}` {rule}, got {value}.", key)
    return value


def _legacy_stop(value: Any) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
        raise invalid(f"Invalid type for `stop`: expected a string or an array of strings, got {type_name(value)}.",
                      "stop")
    if any(not item for item in items):
        raise invalid("`stop` cannot contain an empty string.", "stop")
    return list(items)


def _check_best_of(body: dict[str, Any], n: int) -> None:
    best_of = get_number(body, "best_of", 1, integer=True)
    if best_of not in (None, 1, n):
        raise invalid(f"`best_of` is not supported: expected null, 1 or the value of `n` ({n}), got {best_of}.",
                      "best_of")


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def render_tokenize(result: TokenizeResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """`token_strs` are the tokens' texts (vLLM shows the tokenizer's raw pieces, such as `ĠHello`)."""
    return {
        "count": len(result.tokens),
        "max_model_len": result.max_model_len,
        "tokens": list(result.tokens),
        "token_strs": list(result.pieces) if req.render.get("return_token_strs") else None,
    }


def render_detokenize(result: DetokenizeResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return {"prompt": result.text}


def render_version(result: VersionResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return {"version": result.version}


def render_generate(result: GenerationResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """`{"text": [prompt + completion, ...]}`, one entry per choice: the demo server includes the prompt."""
    prompt = req.prompts[0]
    return {"text": [f"{prompt}{choice.text}" for choice in sorted(result.choices, key=lambda c: c.index)]}


def render_error(err: GatewayError) -> tuple[int, dict[str, Any]]:
    status, kind = ERRORS.get(err.kind, ERRORS[ErrorKind.INTERNAL])
    return status, {"error": {"message": err.message, "type": kind, "param": err.param, "code": status}}


# ---------------------------------------------------------------------------------------------------------------
# Streaming: the legacy /generate


def legacy_line(obj: Any) -> Frame:
    """The demo server writes `json.dumps(ret) + "\\n"`: Python's default separators and ASCII escapes."""
    return (json.dumps(obj) + "\n").encode()


class GenerateStream(BaseStream):
    """One line per new text, each holding every choice's cumulative text, prompt included. Keep-alives repeat
    the current line (a blank line would break line-by-line clients, and the text is cumulative anyway); a
    generation that produced no text still sends one line at the end."""

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        super().__init__(req, ctx)
        self.texts = [str(req.prompts[0])] * req.n
        self.sent = False

    def event_frames(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, TextDelta) and event.text:
            self.texts[event.index] += event.text
            self.sent = True
            return [self._line()]
        if isinstance(event, Done):
            self.closed = True
            return [] if self.sent else [self._line()]
        return []

    def error_frames(self, err: GatewayError) -> list[Frame]:
        return [legacy_line(render_error(err)[1])]

    def idle_frames(self) -> list[Frame]:
        return [self._line()]

    def _line(self) -> Frame:
        return legacy_line({"text": self.texts})


# ---------------------------------------------------------------------------------------------------------------
# Routes


ROUTES: list[Route] = [
    Route("POST", "/tokenize", FAMILY, parse_tokenize, render_tokenize, render_error, name="vllm.tokenize"),
    Route("POST", "/detokenize", FAMILY, parse_detokenize, render_detokenize, render_error, name="vllm.detokenize"),
    Route("GET", "/version", FAMILY, parse_version, render_version, render_error, body="none", name="vllm.version",
          public=True),
    Route("POST", "/generate", FAMILY, parse_generate, render_generate, render_error, stream=GenerateStream,
          media_type="application/x-ndjson", name="vllm.generate"),
]
