"""OpenAI family: chat completions, legacy completions, embeddings, models and health.

Parsing is lenient on unknown fields (real clients send vendor extras such as `user`, `store` or
`reasoning_effort`) and strict on the types and ranges of the fields we use: a wrong value is a 400 whose message
names the field. The shapes other families share (messages, tools, response_format) are parsed in
`adapters/openai_shapes.py`, and the fields vLLM clients add to these bodies in `adapters/vllm_extras.py`.
Rendering follows the wire shapes in shared/API-SPEC.md §1 byte for byte, because the OpenAI SDK and its
`.stream()` helper are picky about repeated keys, `usage: null` and the `[DONE]` terminator.
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from adapters.base import (
    BaseStream,
    Frame,
    RequestContext,
    Route,
    expect_object,
    get_number,
    get_typed,
    is_token,
    sse,
    type_name,
)
from adapters.openai_shapes import (
    apply_reasoning_effort,
    parse_messages,
    parse_response_format,
    parse_tool_choice,
    parse_tools,
    render_chat_logprobs,
    render_error,
)
from adapters.vllm_extras import apply_extras
from gateway.types import (
    Choice,
    ChoiceDone,
    Done,
    EmbeddingResult,
    FinishReason,
    GatewayError,
    GenerationResult,
    HealthResult,
    InternalRequest,
    ModelInfo,
    ModelList,
    OutputEvent,
    Prompt,
    SamplingParams,
    TextDelta,
    ThinkingDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
    invalid,
)

FAMILY = "openai"
OWNED_BY = "llm-gateway"
DONE_FRAME: Frame = sse("[DONE]")
COMPLETION_DEFAULT_MAX_TOKENS = 16
MAX_STOP = 4

# key, low, high, integer: the sampling numbers shared by chat and completions. top_k .. repeat_penalty are the
# llama.cpp/vLLM extras that OpenAI-compatible clients send to local servers.
SAMPLING_NUMBERS: tuple[tuple[str, float | None, float | None, bool], ...] = (
    ("temperature", 0, 2, False),
    ("top_p", 0, 1, False),
    ("presence_penalty", -2, 2, False),
    ("frequency_penalty", -2, 2, False),
    ("seed", None, None, True),
    ("top_k", -1, None, True),
    ("min_p", 0, 1, False),
    ("typical_p", 0, 1, False),
    ("repeat_penalty", 0, None, False),
)

FINISH_REASONS: dict[str, str] = {
    "stop": "stop", "length": "length", "tool_calls": "tool_calls", "cancelled": "stop", "error": "stop",
}



# ---------------------------------------------------------------------------------------------------------------
# Parsing: endpoints


def parse_chat(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /v1/chat/completions."""
    body = expect_object(body)
    sampling = parse_sampling(body)
    sampling.logprobs, sampling.top_logprobs = _parse_chat_logprobs(body)
    tools = parse_tools(body.get("tools"))
    req = InternalRequest(
        kind="chat",
        model=_parse_model(body),
        messages=parse_messages(body.get("messages")),
        sampling=sampling,
        tools=tools,
        tool_choice=parse_tool_choice(body.get("tool_choice"), tools),
        constraint=parse_response_format(body.get("response_format")),
        parallel_tool_calls=get_typed(body, "parallel_tool_calls", bool, "a boolean", default=True),
    )
    _parse_reasoning_effort(body, req)
    _parse_stream_fields(body, req)
    apply_extras(body, req)
    return req


def _parse_reasoning_effort(body: dict[str, Any], req: InternalRequest) -> None:
    apply_reasoning_effort(get_typed(body, "reasoning_effort", str, "a string"), "reasoning_effort", req)


def parse_completion(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /v1/completions. Refuses `suffix` and `best_of` instead of ignoring them, since silently dropping
    them would return a different kind of answer than the client asked for."""
    body = expect_object(body)
    _reject_suffix(body)
    sampling = parse_sampling(body, default_max_tokens=COMPLETION_DEFAULT_MAX_TOKENS)
    top = get_number(body, "logprobs", 0, 5, integer=True)
    if top is not None:
        sampling.logprobs, sampling.top_logprobs = True, top
    req = InternalRequest(
        kind="completion",
        model=_parse_model(body),
        prompts=parse_prompts(body.get("prompt"), "prompt", allow_empty_text=True),
        sampling=sampling,
        echo=get_typed(body, "echo", bool, "a boolean", default=False),
    )
    _parse_stream_fields(body, req)
    _reject_best_of(body, req.n)
    apply_extras(body, req)
    return req


def parse_embedding(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /v1/embeddings. `dimensions` is refused because GGUF models have one fixed output size."""
    body = expect_object(body)
    if body.get("dimensions") is not None:
        raise invalid("`dimensions` is not supported: embeddings always have the model's native size.",
                      "dimensions")
    encoding = get_typed(body, "encoding_format", str, "a string", default="float")
    if encoding not in ("float", "base64"):
        raise invalid(f"Invalid value for `encoding_format`: expected 'float' or 'base64', got {encoding!r}.",
                      "encoding_format")
    return InternalRequest(
        kind="embedding",
        model=_parse_model(body),
        prompts=parse_prompts(body.get("input"), "input", allow_empty_text=False),
        render={"encoding_format": encoding},
    )


def parse_list_models(body: Any, ctx: RequestContext) -> InternalRequest:
    return InternalRequest(kind="list_models")


def parse_show_model(body: Any, ctx: RequestContext) -> InternalRequest:
    return InternalRequest(kind="show_model", model=ctx.path_params.get("model", ""))


def parse_health(body: Any, ctx: RequestContext) -> InternalRequest:
    return InternalRequest(kind="health")


# ---------------------------------------------------------------------------------------------------------------
# Parsing: shared fields


def _parse_model(body: dict[str, Any]) -> str:
    return get_typed(body, "model", str, "a string", required=True)


def parse_sampling(body: dict[str, Any], default_max_tokens: int | None = None) -> SamplingParams:
    """The sampling fields chat and completions share; logprobs differ per endpoint and are set by the caller."""
    values = {key: get_number(body, key, lo, hi, integer=integer) for key, lo, hi, integer in SAMPLING_NUMBERS}
    if values["top_k"] == -1:
        values["top_k"] = 0  # vLLM's "disabled" is llama.cpp's 0
    max_tokens = get_number(body, "max_tokens", 1, integer=True)
    max_completion = get_number(body, "max_completion_tokens", 1, integer=True)
    return SamplingParams(
        **values,
        max_tokens=max_completion or max_tokens or default_max_tokens,
        stop=_parse_stop(body.get("stop")),
        logit_bias=_parse_logit_bias(body.get("logit_bias")),
    )


def _parse_stop(value: Any) -> list[str]:
    """Empty strings are dropped: a stop string that matches everywhere would end every answer at once."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value] if value else []
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `stop`: expected a string or an array of strings, got {type_name(value)}.",
                      "stop")
    if len(value) > MAX_STOP:
        raise invalid(f"Invalid value for `stop`: expected at most {MAX_STOP} strings, got {len(value)}.", "stop")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"Invalid type for `stop[{i}]`: expected a string, got {type_name(item)}.", f"stop[{i}]")
    return [item for item in value if item]


def _parse_logit_bias(value: Any) -> dict[int, float]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `logit_bias`: expected an object, got {type_name(value)}.", "logit_bias")
    bias: dict[int, float] = {}
    for key in value:
        if not (isinstance(key, str) and key.isascii() and key.isdigit()):  # "²".isdigit() is True
            raise invalid(f"Invalid key {key!r} in `logit_bias`: expected a token id written as a string of digits.",
                          "logit_bias")
        bias[int(key)] = float(get_number(value, key, -100, 100, prefix="logit_bias."))
    return bias


def _parse_chat_logprobs(body: dict[str, Any]) -> tuple[bool, int]:
    """`top_logprobs: 0` without `logprobs` is accepted: it asks for nothing, and some clients always send it."""
    logprobs = get_typed(body, "logprobs", bool, "a boolean", default=False)
    top = get_number(body, "top_logprobs", 0, 20, integer=True)
    if top and not logprobs:
        raise invalid("`top_logprobs` requires `logprobs` to be true.", "top_logprobs")
    return logprobs, top or 0


def _parse_stream_fields(body: dict[str, Any], req: InternalRequest) -> None:
    """`stream_options` is read even without `stream`, where it has no effect, rather than refused."""
    req.stream = get_typed(body, "stream", bool, "a boolean", default=False)
    req.n = get_number(body, "n", 1, 16, integer=True) or 1
    options = get_typed(body, "stream_options", dict, "an object", default={})
    req.render["include_usage"] = get_typed(options, "include_usage", bool, "a boolean", default=False,
                                            prefix="stream_options.")


def _reject_suffix(body: dict[str, Any]) -> None:
    if get_typed(body, "suffix", str, "a string"):
        raise invalid("`suffix` is not supported: inserting text needs a fill-in-the-middle model.", "suffix")


def _reject_best_of(body: dict[str, Any], n: int) -> None:
    best_of = get_number(body, "best_of", 1, integer=True)
    if best_of not in (None, 1, n):
        raise invalid(f"`best_of` is not supported: expected null, 1 or the value of `n` ({n}), got {best_of}.",
                      "best_of")


def parse_prompts(value: Any, name: str, allow_empty_text: bool) -> list[Prompt]:
    """str | [str] | [int] | [[int]]: a flat list of ints is one tokenized prompt, not several."""
    if isinstance(value, str):
        return [_check_text(value, name, allow_empty_text)]
    if not isinstance(value, list) or not value:
        got = "an empty array" if isinstance(value, list) else ("nothing" if value is None else type_name(value))
        raise invalid(f"Invalid value for `{name}`: expected a string, an array of strings, an array of token ids "
                      f"or an array of token-id arrays, got {got}.", name)
    if all(is_token(item) for item in value):
        return [list(value)]
    return [_parse_one_prompt(item, f"{name}[{i}]", allow_empty_text) for i, item in enumerate(value)]


def _parse_one_prompt(item: Any, name: str, allow_empty_text: bool) -> Prompt:
    if isinstance(item, str):
        return _check_text(item, name, allow_empty_text)
    if isinstance(item, list) and item and all(is_token(t) for t in item):
        return list(item)
    raise invalid(f"Invalid value for `{name}`: expected a string or a non-empty array of token ids "
                  "(non-negative integers).", name)


def _check_text(text: str, name: str, allow_empty: bool) -> str:
    if not text and not allow_empty:
        raise invalid(f"Invalid value for `{name}`: expected a non-empty string.", name)
    return text


# ---------------------------------------------------------------------------------------------------------------
# Rendering: shared pieces


def finish_reason(reason: FinishReason) -> str:
    return FINISH_REASONS.get(reason, "stop")


def render_usage(usage: Usage) -> dict[str, Any]:
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "prompt_tokens_details": {"cached_tokens": usage.cached_tokens},
    }


def render_completion_logprobs(logprobs: list[TokenLogprob], offset: int) -> tuple[dict[str, Any], int]:
    """Returns the legacy logprobs object and the offset just past its last token, so streams can continue it."""
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    rendered = {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{tok: val for tok, val, _, _ in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }
    return rendered, offset


def text_offset_base(req: InternalRequest, index: int) -> int:
    """OpenAI counts `text_offset` from the start of the prompt, so without echo the first generated token sits at
    len(prompt). Token-id prompts have no known character length; they start at 0."""
    prompt_index = index // max(req.n, 1)
    if req.echo or prompt_index >= len(req.prompts):
        return 0
    prompt = req.prompts[prompt_index]
    return len(prompt) if isinstance(prompt, str) else 0


def _by_index(choices: list[Choice]) -> list[Choice]:
    return sorted(choices, key=lambda c: c.index)


# ---------------------------------------------------------------------------------------------------------------
# Rendering: finished results


def render_chat(result: GenerationResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return {
        "id": f"chatcmpl-{ctx.request_id}",
        "object": "chat.completion",
        "created": ctx.created,
        "model": req.model,
        "system_fingerprint": None,
        "choices": [_chat_choice(c, ctx.reasoning_field) for c in _by_index(result.choices)],
        "usage": render_usage(result.usage),
    }


def reasoning_keys(setting: str) -> tuple[str, ...]:
    """llama.cpp and DeepSeek name reasoning `reasoning_content`; newer vLLM and Ollama's /v1 `reasoning`."""
    return ("reasoning_content", "reasoning") if setting == "both" else (setting,)


def _chat_choice(choice: Choice, reasoning_field: str) -> dict[str, Any]:
    return {
        "index": choice.index,
        "message": _chat_message(choice, reasoning_field),
        "logprobs": render_chat_logprobs(choice.logprobs),
        "finish_reason": finish_reason(choice.finish_reason),
    }


def _chat_message(choice: Choice, reasoning_field: str) -> dict[str, Any]:
    """`content` is null only for a pure tool call, which is what the SDK's tool helpers expect."""
    content = None if not choice.text and choice.tool_calls else choice.text
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": None}
    if choice.thinking:
        message.update(dict.fromkeys(reasoning_keys(reasoning_field), choice.thinking))
    if choice.tool_calls:
        message["tool_calls"] = [_tool_call(call) for call in choice.tool_calls]
    return message


def _tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def render_completion(result: GenerationResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return {
        "id": f"cmpl-{ctx.request_id}",
        "object": "text_completion",
        "created": ctx.created,
        "model": req.model,
        "system_fingerprint": None,
        "choices": [_completion_choice(c, req) for c in _by_index(result.choices)],
        "usage": render_usage(result.usage),
    }


def _completion_choice(choice: Choice, req: InternalRequest) -> dict[str, Any]:
    logprobs = None
    if choice.logprobs is not None:
        logprobs, _ = render_completion_logprobs(choice.logprobs, text_offset_base(req, choice.index))
    return {
        "text": choice.text,
        "index": choice.index,
        "logprobs": logprobs,
        "finish_reason": finish_reason(choice.finish_reason),
    }


def render_embedding(result: EmbeddingResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    as_base64 = req.render.get("encoding_format") == "base64"
    return {
        "object": "list",
        "data": [
            {"object": "embedding", "index": i, "embedding": encode_base64(vec) if as_base64 else vec}
            for i, vec in enumerate(result.vectors)
        ],
        "model": req.model,
        "usage": {"prompt_tokens": result.usage.prompt_tokens, "total_tokens": result.usage.total_tokens},
    }


def encode_base64(vector: list[float]) -> str:
    """Little-endian float32, which is what the SDK decodes with numpy's native order on every common host."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def render_models(result: ModelList, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """Aliases are listed as models of their own, because clients pick a model by the ids they see here."""
    data = [_model_entry(name, info) for info in result.models for name in [info.name, *info.aliases]]
    return {"object": "list", "data": data}


def render_model(result: ModelInfo, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return _model_entry(req.model or result.name, result)


def _model_entry(name: str, info: ModelInfo) -> dict[str, Any]:
    """OpenAI's four fields, plus vLLM's `max_model_len` (the context this server gives the model, which vLLM
    clients read to size their prompts), the seed service's `context_size` (the same) and why it has that size;
    OpenAI clients ignore the extra keys."""
    return {"id": name, "object": "model", "created": info.created, "owned_by": OWNED_BY,
            "max_model_len": info.max_model_len, "context_size": info.max_model_len,
            "context_reason": info.context_reason}


def render_health(result: HealthResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return {"status": result.status, "models_loaded": list(result.models_loaded), "gpu_offload": result.gpu_offload,
            "devices": result.devices}




# ---------------------------------------------------------------------------------------------------------------
# Streaming


class OpenAIStream(BaseStream):
    """What chat and completion streams share: one id and `created` on every chunk, `usage: null` on every chunk
    when the client asked for a usage chunk, that usage chunk last before `[DONE]`, and nothing after the end."""

    object_name = ""
    id_prefix = ""

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        super().__init__(req, ctx)
        self.req = req
        self.id = f"{self.id_prefix}{ctx.request_id}"
        self.created = ctx.created
        self.include_usage = bool(req.render.get("include_usage"))
        self.reasoning_keys = reasoning_keys(ctx.reasoning_field)

    def event_frames(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, Done):
            return self._done(event)
        if isinstance(event, ChoiceDone):
            return [self.chunk([self.finish_choice(event)])]
        return self.delta(event)

    def error_frames(self, err: GatewayError) -> list[Frame]:
        return [sse(render_error(err)[1]), DONE_FRAME]

    def chunk(self, choices: list[dict[str, Any]], usage: Usage | None = None) -> Frame:
        data: dict[str, Any] = {
            "id": self.id,
            "object": self.object_name,
            "created": self.created,
            "model": self.req.model,
            "system_fingerprint": None,
            "choices": choices,
        }
        if self.include_usage:
            data["usage"] = render_usage(usage) if usage is not None else None
        return sse(data)

    def _done(self, event: Done) -> list[Frame]:
        self.closed = True
        frames = [self.chunk([], event.usage)] if self.include_usage else []
        return [*frames, DONE_FRAME]

    def delta(self, event: OutputEvent) -> list[Frame]:
        raise NotImplementedError

    def finish_choice(self, event: ChoiceDone) -> dict[str, Any]:
        raise NotImplementedError


class ChatStream(OpenAIStream):
    """Sends `role` once per choice and a tool call's id/type/name once per call: the SDK's `.stream()` helper
    concatenates repeated strings, so repeating them corrupts the accumulated message."""

    object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        super().__init__(req, ctx)
        self.calls_started: set[tuple[int, int]] = set()

    def start(self) -> list[Frame]:
        return [self.chunk([self._choice(i, {"role": "assistant", "content": ""})]) for i in range(self.req.n)]

    def delta(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, TextDelta):
            if event.logprobs is None:
                index = event.index
                return [self.text_frame(index, lambda t: self.chunk([self._choice(index, {"content": t})]), event.text)]
            return [self.chunk([self._choice(event.index, {"content": event.text},
                                             render_chat_logprobs(event.logprobs))])]
        if isinstance(event, ThinkingDelta):
            return [self.chunk([self._choice(event.index, dict.fromkeys(self.reasoning_keys, event.text))])]
        if isinstance(event, ToolCallDelta):
            return [self.chunk([self._choice(event.index, {"tool_calls": [self._tool_fragment(event)]})])]
        return []

    def finish_choice(self, event: ChoiceDone) -> dict[str, Any]:
        return self._choice(event.index, {}, reason=finish_reason(event.finish_reason))

    def _tool_fragment(self, event: ToolCallDelta) -> dict[str, Any]:
        key = (event.index, event.call_index)
        if key in self.calls_started:
            return {"index": event.call_index, "function": {"arguments": event.arguments}}
        self.calls_started.add(key)
        return {"index": event.call_index, "id": event.id or "", "type": "function",
                "function": {"name": event.name or "", "arguments": event.arguments}}

    @staticmethod
    def _choice(index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None = None,
                reason: str | None = None) -> dict[str, Any]:
        return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": reason}


class CompletionStream(OpenAIStream):
    """Legacy completions have no role chunk; text_offset keeps counting across chunks of the same choice."""

    object_name = "text_completion"
    id_prefix = "cmpl-"

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        super().__init__(req, ctx)
        self.offsets: dict[int, int] = {}

    def delta(self, event: OutputEvent) -> list[Frame]:
        if not isinstance(event, TextDelta):
            return []
        if event.logprobs is None:
            index = event.index
            return [self.text_frame(index, lambda t: self.chunk([self._choice(index, t, None)]), event.text)]
        return [self.chunk([self._choice(event.index, event.text, self._logprobs(event))])]

    def finish_choice(self, event: ChoiceDone) -> dict[str, Any]:
        return self._choice(event.index, "", None, finish_reason(event.finish_reason))

    def _logprobs(self, event: TextDelta) -> dict[str, Any] | None:
        if event.logprobs is None:
            return None
        start = self.offsets.get(event.index, text_offset_base(self.req, event.index))
        rendered, self.offsets[event.index] = render_completion_logprobs(event.logprobs, start)
        return rendered

    @staticmethod
    def _choice(index: int, text: str, logprobs: dict[str, Any] | None, reason: str | None = None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": reason}


# ---------------------------------------------------------------------------------------------------------------
# Routes


ROUTES: list[Route] = [
    Route("POST", "/v1/chat/completions", FAMILY, parse_chat, render_chat, render_error, stream=ChatStream,
          name="openai.chat"),
    Route("POST", "/v1/completions", FAMILY, parse_completion, render_completion, render_error,
          stream=CompletionStream, name="openai.completions"),
    Route("POST", "/v1/embeddings", FAMILY, parse_embedding, render_embedding, render_error,
          name="openai.embeddings"),
    Route("GET", "/v1/models", FAMILY, parse_list_models, render_models, render_error, body="none",
          name="openai.models"),
    Route("GET", "/v1/models/<path:model>", FAMILY, parse_show_model, render_model, render_error, body="none",
          name="openai.model"),
    Route("GET", "/health", FAMILY, parse_health, render_health, render_error, body="none", name="openai.health",
          public=True),
    # the seed service's paths, so its users' scripts keep working
    Route("POST", "/api/chat/completions", FAMILY, parse_chat, render_chat, render_error, stream=ChatStream,
          name="openai.chat_seed"),
    Route("GET", "/api/models", FAMILY, parse_list_models, render_models, render_error, body="none",
          name="openai.models_seed"),
]
