"""vLLM family: the extra request fields vLLM accepts on the OpenAI routes (`apply_extras`, called by the OpenAI
adapter), and vLLM's own endpoints: /tokenize, /detokenize, /version and the legacy demo server's /generate.

Messages follow vLLM's wording (`SamplingParams._verify_args`, the protocol validators) with the field in
backticks; errors use vLLM's body `{"error": {"message", "type", "param", "code": <status>}}`
(shared/API-SPEC.md §4). Fields that would change the answer but that llama.cpp cannot honour (beam search,
allowed/bad words, prompt logprobs, structural tags, a per-request chat template) are refused, not ignored.

`POST /generate` and `POST /tokenize` are shared with TGI, whose routes accept only bodies with `inputs`; these
routes have no `accepts` and take every other body.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from adapters.base import (
    Frame,
    RequestContext,
    Route,
    expect_object,
    get_number,
    get_typed,
    type_name,
)
from adapters.openai import parse_messages, parse_tools
from gateway.types import (
    Constraint,
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
    ErrorKind.TOO_LARGE: (413, "Request Entity Too Large"),
    ErrorKind.OVERLOADED: (429, "Too Many Requests"),
    ErrorKind.UNAVAILABLE: (503, "Service Unavailable"),
    ErrorKind.INTERNAL: (500, "InternalServerError"),
}

UNSUPPORTED = ("use_beam_search", "allowed_token_ids", "bad_words", "prompt_logprobs", "logits_processors",
               "structural_tag")
"""Fields refused when set to anything but their no-op default (null, false or an empty list)."""

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
# Extras on the OpenAI chat and completions bodies


def apply_extras(body: dict[str, Any], req: InternalRequest) -> None:
    """Read vLLM's extra fields from an OpenAI chat or completions body into `req`, already parsed by the OpenAI
    adapter (which reads `top_k`, `min_p`, `typical_p` and `echo` for completions itself). A guided-decoding
    field replaces a `response_format` constraint, as in vLLM."""
    _reject_unsupported(body)
    _apply_sampling_extras(body, req.sampling)
    _apply_truncation(body, req)
    if req.kind == "chat":
        _apply_chat_extras(body, req)
    constraint = parse_structured_outputs(body)
    if constraint is not None:
        req.constraint = constraint


def _reject_unsupported(body: dict[str, Any]) -> None:
    for key in UNSUPPORTED:
        value = body.get(key)
        if not (value is None or value is False or value == []):
            raise invalid(f"`{key}` is not supported by this server.", key)


def _apply_sampling_extras(body: dict[str, Any], sampling: SamplingParams) -> None:
    penalty = get_number(body, "repetition_penalty")
    if penalty is not None:
        if penalty <= 0:
            raise invalid(f"`repetition_penalty` must be greater than zero, got {penalty}.", "repetition_penalty")
        sampling.repeat_penalty = penalty
    sampling.ignore_eos = get_typed(body, "ignore_eos", bool, "a boolean", default=sampling.ignore_eos)
    sampling.min_tokens = _min_tokens(body, sampling.max_tokens)
    sampling.stop_token_ids = _token_ids(body, "stop_token_ids", default=sampling.stop_token_ids)
    sampling.include_stop_str = get_typed(body, "include_stop_str_in_output", bool, "a boolean",
                                          default=sampling.include_stop_str)
    sampling.skip_special_tokens = get_typed(body, "skip_special_tokens", bool, "a boolean",
                                             default=sampling.skip_special_tokens)


def _min_tokens(body: dict[str, Any], max_tokens: int | None) -> int:
    value = get_number(body, "min_tokens", integer=True)
    if value is None:
        return 0
    if value < 0:
        raise invalid(f"`min_tokens` must be greater than or equal to 0, got {value}.", "min_tokens")
    if max_tokens is not None and value > max_tokens:
        raise invalid(f"`min_tokens` must be less than or equal to max_tokens={max_tokens}, got {value}.",
                      "min_tokens")
    return value


def _token_ids(body: dict[str, Any], key: str, default: list[int]) -> list[int]:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(_is_token(t) for t in value):
        raise invalid(f"Invalid value for `{key}`: expected an array of token ids (non-negative integers).", key)
    return list(value)


def _is_token(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _apply_truncation(body: dict[str, Any], req: InternalRequest) -> None:
    """`truncate_prompt_tokens`: keep the last N prompt tokens; -1 (vLLM: "the model's limit") sets no limit of
    its own, so a prompt longer than the context is still an error."""
    value = get_number(body, "truncate_prompt_tokens", integer=True)
    if value is None or value == -1:
        return
    if value < 1:
        raise invalid(f"`truncate_prompt_tokens` must be -1 or at least 1, got {value}.", "truncate_prompt_tokens")
    req.truncate_tokens = value


def _apply_chat_extras(body: dict[str, Any], req: InternalRequest) -> None:
    """vLLM's chat `echo` prepends the last message's content when that message has the role being generated:
    the assistant, or with `add_generation_prompt: false` whatever role the last message has."""
    apply_chat_template_fields(body, req)
    special = get_typed(body, "add_special_tokens", bool, "a boolean")
    if special is not None:
        req.add_special_tokens = special
    echo = get_typed(body, "echo", bool, "a boolean", default=False)
    last_role = req.messages[-1].role if req.messages else None
    req.echo = echo and (not req.add_generation_prompt or last_role == "assistant")


def apply_chat_template_fields(body: dict[str, Any], req: InternalRequest) -> None:
    """Fields that shape how messages are rendered, shared by chat completions and chat-form /tokenize.
    `continue_final_message` turns the generation prompt off unless the body also sets it, which is refused."""
    if body.get("chat_template") is not None:
        raise invalid("`chat_template` is not supported: each model uses the template in its GGUF file.",
                      "chat_template")
    continue_final = get_typed(body, "continue_final_message", bool, "a boolean", default=False)
    generation_prompt = get_typed(body, "add_generation_prompt", bool, "a boolean")
    if continue_final and generation_prompt:
        raise invalid("Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                      "continue_final_message")
    req.continue_final_message = continue_final
    req.add_generation_prompt = generation_prompt if generation_prompt is not None else not continue_final
    req.template_kwargs = get_typed(body, "chat_template_kwargs", dict, "an object", default=req.template_kwargs)


# ---------------------------------------------------------------------------------------------------------------
# Guided decoding / structured outputs


def _json_constraint(value: Any, name: str) -> Constraint:
    """A schema given as an object or as a string holding one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise invalid(f"Invalid value for `{name}`: expected a JSON schema, got a string that is not JSON "
                          f"({exc}).", name) from None
    if not isinstance(value, dict):
        raise invalid(f"Invalid value for `{name}`: expected a JSON schema object, got {type_name(value)}.", name)
    return Constraint("json_schema", value)


def _text_constraint(kind: str) -> Callable[[Any, str], Constraint]:
    def parse(value: Any, name: str) -> Constraint:
        if not isinstance(value, str) or not value:
            raise invalid(f"Invalid value for `{name}`: expected a non-empty string.", name)
        return Constraint(kind, value)

    return parse


def _choice_constraint(value: Any, name: str) -> Constraint:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise invalid(f"Invalid value for `{name}`: expected a non-empty array of strings.", name)
    return Constraint("choice", list(value))


def _json_object_constraint(value: Any, name: str) -> Constraint | None:
    if not isinstance(value, bool):
        raise invalid(f"Invalid type for `{name}`: expected a boolean, got {type_name(value)}.", name)
    return Constraint("json") if value else None


def _unsupported_constraint(value: Any, name: str) -> Constraint:
    raise invalid(f"`{name}` is not supported by this server.", name)


ConstraintParser = Callable[[Any, str], "Constraint | None"]

GUIDED: dict[str, ConstraintParser] = {
    "guided_json": _json_constraint,
    "guided_regex": _text_constraint("regex"),
    "guided_choice": _choice_constraint,
    "guided_grammar": _text_constraint("gbnf"),
}
"""Older vLLM's top-level fields; `guided_decoding_backend` and `guided_whitespace_pattern` are ignored."""

STRUCTURED: dict[str, ConstraintParser] = {
    "json": _json_constraint,
    "regex": _text_constraint("regex"),
    "choice": _choice_constraint,
    "grammar": _text_constraint("gbnf"),
    "json_object": _json_object_constraint,
    "structural_tag": _unsupported_constraint,
}
"""Newer vLLM's `structured_outputs` object; its `disable_*` and `whitespace_pattern` options are ignored."""


def parse_structured_outputs(body: dict[str, Any]) -> Constraint | None:
    """At most one constraint across `guided_*` and `structured_outputs`, as vLLM requires."""
    found: list[tuple[str, Constraint]] = []
    for key, parse in GUIDED.items():
        _collect(found, key, body.get(key), parse)
    options = get_typed(body, "structured_outputs", dict, "an object", default={})
    for key, parse in STRUCTURED.items():
        _collect(found, f"structured_outputs.{key}", options.get(key), parse)
    if len(found) > 1:
        names = ", ".join(f"`{name}`" for name, _ in found)
        raise invalid(f"You can only use one kind of structured outputs constraint but multiple are specified: "
                      f"{names}.", found[1][0])
    return found[0][1] if found else None


def _collect(found: list[tuple[str, Constraint]], name: str, value: Any, parse: ConstraintParser) -> None:
    if value is None:
        return
    constraint = parse(value, name)
    if constraint is not None:
        found.append((name, constraint))


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
    if not isinstance(tokens, list) or not all(_is_token(t) for t in tokens):
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


class GenerateStream:
    """One line per new text, each holding every choice's cumulative text, prompt included. Keep-alives repeat
    the current line (a blank line would break line-by-line clients, and the text is cumulative anyway); a
    generation that produced no text still sends one line at the end."""

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        self.texts = [str(req.prompts[0])] * req.n
        self.sent = False
        self.closed = False

    def start(self) -> list[Frame]:
        return []

    def feed(self, event: OutputEvent) -> list[Frame]:
        if self.closed:
            return []
        if isinstance(event, TextDelta) and event.text:
            self.texts[event.index] += event.text
            self.sent = True
            return [self._line()]
        if isinstance(event, Done):
            self.closed = True
            return [] if self.sent else [self._line()]
        return []

    def error(self, err: GatewayError) -> list[Frame]:
        if self.closed:
            return []
        self.closed = True
        return [legacy_line(render_error(err)[1])]

    def keepalive(self) -> list[Frame]:
        return [] if self.closed else [self._line()]

    def _line(self) -> Frame:
        return legacy_line({"text": self.texts})


# ---------------------------------------------------------------------------------------------------------------
# Routes


ROUTES: list[Route] = [
    Route("POST", "/tokenize", FAMILY, parse_tokenize, render_tokenize, render_error, name="vllm.tokenize"),
    Route("POST", "/detokenize", FAMILY, parse_detokenize, render_detokenize, render_error, name="vllm.detokenize"),
    Route("GET", "/version", FAMILY, parse_version, render_version, render_error, body="none", name="vllm.version"),
    Route("POST", "/generate", FAMILY, parse_generate, render_generate, render_error, stream=GenerateStream,
          media_type="application/x-ndjson", name="vllm.generate"),
]
