"""Ollama's native API (/api/*): chat, generate, embeddings, the model views and model changes.

Field for field as Ollama's `api/types.go` and `server/routes.go` define them, because the Go CLI and ollama-python
decode strictly: `stream` defaults to true and streams are NDJSON; timestamps are Go `time.Time`; durations are
integer nanoseconds; a chat or generate with nothing to say loads the model (or unloads it with keep_alive 0);
tool-call arguments are JSON objects; errors are `{"error": "..."}`. Unknown fields and unknown `options` keys are
ignored, as Ollama ignores them; a known field of the wrong type is a 400 that names it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from typing import Any, Callable, Literal

from adapters.base import (
    BaseStream,
    Frame,
    MakeStreamRenderer,
    Parse,
    Render,
    RequestContext,
    Route,
    expect_object,
    get_number,
    get_typed,
    ndjson,
    type_name,
)
from adapters.ollama_models import (
    go_time,
    parse_blob_upload,
    parse_copy,
    parse_create,
    parse_delete,
    parse_options,
    parse_ps,
    parse_pull,
    parse_push,
    parse_show,
    parse_tags,
    progress_object,
    render_empty,
    render_progress,
    render_ps,
    render_show,
    render_tags,
)
from adapters.openai_shapes import parse_tool_calls, parse_tools
from gateway.types import (
    MODEL_PARAMETERS,
    ChoiceDone,
    Constraint,
    Done,
    EmbeddingResult,
    ErrorKind,
    FinishReason,
    GatewayError,
    GenerationResult,
    ImagePart,
    InternalRequest,
    LoadResult,
    Message,
    OutputEvent,
    Progress,
    Result,
    TextDelta,
    ThinkingDelta,
    Timings,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
    invalid,
    parse_duration,
)

FAMILY = "ollama"
NDJSON = "application/x-ndjson"
BANNER = "Ollama is running"
OLLAMA_VERSION = "0.32.15"
"""The newest stable Ollama release whose API this adapter follows (ollama/ollama v0.32.15, 2026-08). Clients gate
features on this number (tools from 0.3, `format` schemas from 0.5, `think` from 0.9), so it must be recent and
carry no pre-release suffix; the CLI only warns when its own version differs."""

ROLES = ("system", "user", "assistant", "tool")
THINK_LEVELS = ("low", "medium", "high", "max")
DONE_REASONS: dict[str, str] = {"stop": "stop", "length": "length", "tool_calls": "stop", "cancelled": "stop",
                                "error": "stop"}
MAX_TOP_LOGPROBS = 20
NANOSECONDS = 1_000_000_000
STATUSES: dict[ErrorKind, int] = {
    ErrorKind.INVALID_REQUEST: 400,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.CONTEXT_OVERFLOW: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.FORBIDDEN: 403,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.OVERLOADED: 503,  # Ollama: "server busy, please try again.  maximum pending requests exceeded"
    ErrorKind.RATE_LIMITED: 429,
    ErrorKind.UNAVAILABLE: 500,
    ErrorKind.TIMEOUT: 500,  # Ollama answers every failure of a running generation with 500 and its message
    ErrorKind.INTERNAL: 500,
}
IMAGE_TYPES = {"iVBORw0KGgo": "image/png", "/9j/": "image/jpeg", "R0lGOD": "image/gif", "UklGR": "image/webp"}


# ---------------------------------------------------------------------------------------------------------------
# Parsing: generation


def parse_chat(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /api/chat. No messages at all loads the model (or unloads it with keep_alive 0)."""
    body = expect_object(body)
    tools = parse_tools(body.get("tools"))
    req = InternalRequest(kind="chat", model=_model(body), messages=parse_messages(body.get("messages")),
                          tools=tools)
    _parse_generation_fields(body, req)
    return req if req.messages else _load_request(req)


def parse_generate(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /api/generate. `raw` sends the prompt as is (a completion); a `suffix` asks for fill-in-the-middle;
    otherwise the prompt becomes a chat of [system?, user] rendered with the model's template. `template` (a Go
    template) and `context` (token memory, deprecated in Ollama) cannot be honoured here, so they are refused
    rather than silently dropped; the gateway never returns a `context` to send back."""
    body = expect_object(body)
    prompt = get_typed(body, "prompt", str, "a string", default="")
    system = get_typed(body, "system", str, "a string", default="")
    suffix = get_typed(body, "suffix", str, "a string", default="")
    raw = get_typed(body, "raw", bool, "a boolean", default=False)
    images = parse_images(body.get("images"), "images")
    _reject_template_and_context(body)
    if raw and system:
        raise invalid("`raw` mode does not support template, system, or context.", "raw")
    req = InternalRequest(kind="chat", model=_model(body))
    _parse_generation_fields(body, req)
    if not prompt:
        return _load_request(req)
    if raw or suffix:
        if images:
            raise invalid("`images` need the model's template: they cannot be sent with `raw` or `suffix`.",
                          "images")
        req.kind, req.prompts = "completion", [prompt]
        req.suffix = None if raw else suffix
        return req
    system_turn = [Message(role="system", content=system)] if system else []
    req.messages = [*system_turn, Message(role="user", content=prompt, images=images)]
    return req


def _reject_template_and_context(body: dict[str, Any]) -> None:
    """Empty values pass: the CLI sends `"template": ""` on every call."""
    if get_typed(body, "template", str, "a string"):
        raise invalid("`template` is not supported: prompts are rendered with the model's own chat template; "
                      "send a pre-formatted prompt with `raw: true` instead.", "template")
    if get_typed(body, "context", list, "an array of token ids"):
        raise invalid("`context` is not supported: send the conversation as messages to /api/chat instead.",
                      "context")


def _parse_generation_fields(body: dict[str, Any], req: InternalRequest) -> None:
    """The fields chat and generate share."""
    req.stream = get_typed(body, "stream", bool, "a boolean", default=True)
    req.keep_alive = parse_keep_alive(body.get("keep_alive"))
    apply_options(parse_options(body.get("options"), "options"), req)
    req.constraint = parse_format(body.get("format"))
    _parse_think(body.get("think"), req)
    req.keep_think_tags = req.think is None  # as the seed design keeps them: in the text, tags and all
    req.think_required = req.think is True  # Ollama refuses `think` for a model without the capability
    truncate = get_typed(body, "truncate", bool, "a boolean", default=True)
    req.truncate = "drop_turns" if truncate else "error"
    get_typed(body, "shift", bool, "a boolean")  # context shifting is the engine's business; only the type is checked
    logprobs = get_typed(body, "logprobs", bool, "a boolean", default=False)
    top = get_number(body, "top_logprobs", 0, MAX_TOP_LOGPROBS, integer=True) or 0
    req.sampling.logprobs, req.sampling.top_logprobs = logprobs, top if logprobs else 0


def _load_request(req: InternalRequest) -> InternalRequest:
    """A chat or generate with nothing to say: load the model, or unload it when keep_alive is 0."""
    req.kind = "unload_model" if req.keep_alive == 0 else "load_model"
    return req


def parse_keep_alive(value: Any) -> float | None:
    """Seconds, -1 for forever, None when absent (the model's default applies)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise invalid(f"Invalid value for `keep_alive`: {exc}.", "keep_alive") from None


def _parse_think(value: Any, req: InternalRequest) -> None:
    """A bool, or a level that also turns thinking on; the level reaches the template as `reasoning_effort`.
    The message keeps Ollama's words "invalid think value": the CLI looks for them to keep its REPL going."""
    if value is None or isinstance(value, bool):
        req.think = value
        return
    if value not in THINK_LEVELS:
        raise invalid(f"Invalid value for `think`: invalid think value {value!r} (must be \"high\", \"medium\", "
                      "\"low\", \"max\", true, or false).", "think")
    req.think = True
    req.template_kwargs["reasoning_effort"] = value


def parse_format(value: Any) -> Constraint | None:
    """`"json"` is JSON mode, an object is a JSON schema, `""` (ollama-python's default) is no constraint."""
    if value is None or value == "":
        return None
    if value == "json":
        return Constraint("json", param="format")
    if isinstance(value, dict):
        return Constraint("json_schema", value, "format")
    raise invalid(f"Invalid value for `format`: expected \"json\" or a JSON schema object, got {value!r}.", "format")


# ---------------------------------------------------------------------------------------------------------------
# Parsing: options


def apply_options(options: dict[str, Any], req: InternalRequest) -> None:
    """Sampling options through MODEL_PARAMETERS; num_ctx caps the request's window; num_thread and num_gpu are
    load-time settings. num_predict ≤ 0 (-1 unlimited, -2 fill the context) and seed < 0 (random) mean no
    value. num_keep, num_batch, main_gpu, use_mmap and draft_num_predict are accepted and have no effect."""
    for key, field_name in MODEL_PARAMETERS.items():
        if key in options:
            setattr(req.sampling, field_name, _sampling_value(key, options[key]))
    if options.get("num_ctx", 0) > 0:
        req.num_ctx = options["num_ctx"]
    if options.get("num_thread", 0) > 0:
        req.load_options["n_threads"] = options["num_thread"]
    if options.get("num_gpu", -1) >= 0:  # -1: let the server decide
        req.load_options["n_gpu_layers"] = options["num_gpu"]


def _sampling_value(key: str, value: Any) -> Any:
    if key == "num_predict":
        return value if value > 0 else None
    if key == "seed":
        return value if value >= 0 else None
    if key == "stop":
        return [item for item in value if item]  # an empty stop string would end every answer at once
    return value


# ---------------------------------------------------------------------------------------------------------------
# Parsing: messages, images, tools


def parse_messages(value: Any) -> list[Message]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `messages`: expected an array of messages, got {type_name(value)}.",
                      "messages")
    return [_parse_message(item, f"messages[{i}]") for i, item in enumerate(value)]


def _parse_message(item: Any, name: str) -> Message:
    """Roles are lower-cased as Ollama decodes them; `tool_name` is the name of the tool whose result this is."""
    if not isinstance(item, dict):
        raise invalid(f"Invalid type for `{name}`: expected an object, got {type_name(item)}.", name)
    prefix = name + "."
    role = get_typed(item, "role", str, "a string", required=True, prefix=prefix).lower()
    if role not in ROLES:
        raise invalid(f"Invalid value for `{prefix}role`: expected one of {', '.join(ROLES)}, got {role!r}.",
                      prefix + "role")
    return Message(
        role=role,
        content=get_typed(item, "content", str, "a string", default="", prefix=prefix),
        images=parse_images(item.get("images"), prefix + "images"),
        tool_calls=parse_tool_calls(item.get("tool_calls"), prefix + "tool_calls"),
        tool_call_id=get_typed(item, "tool_call_id", str, "a string", prefix=prefix),
        name=get_typed(item, "tool_name", str, "a string", prefix=prefix),
        thinking=get_typed(item, "thinking", str, "a string", prefix=prefix),
    )


def parse_images(value: Any, name: str) -> list[ImagePart]:
    """Base64 strings without a `data:` prefix, as Ollama takes them (a data URL is accepted too); each becomes a
    data URL, its type read from the first bytes."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `{name}`: expected an array of base64 strings, got {type_name(value)}.",
                      name)
    return [ImagePart(_image_url(item, f"{name}[{i}]")) for i, item in enumerate(value)]


def _image_url(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value:
        raise invalid(f"Invalid value for `{name}`: expected a base64-encoded image.", name)
    if value.startswith("data:"):
        return value
    try:
        base64.b64decode(value, validate=True)
    except binascii.Error:
        raise invalid(f"Invalid value for `{name}`: expected a base64-encoded image.", name) from None
    media = next((kind for prefix, kind in IMAGE_TYPES.items() if value.startswith(prefix)),
                 "application/octet-stream")
    return f"data:{media};base64,{value}"


# ---------------------------------------------------------------------------------------------------------------
# Parsing: embeddings


def parse_embed(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /api/embed. An empty input only loads the model. `truncate` (default true) cuts inputs that are too
    long; `dimensions` shortens each vector (then re-normalized, as Ollama does)."""
    body = expect_object(body)
    req = InternalRequest(kind="embedding", model=_model(body), prompts=_embed_inputs(body.get("input")))
    truncate = get_typed(body, "truncate", bool, "a boolean", default=True)
    req.truncate = "drop_turns" if truncate else "error"
    req.render["dimensions"] = get_number(body, "dimensions", 0, integer=True) or 0
    _parse_embedding_fields(body, req)
    return req


def parse_embeddings(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /api/embeddings, the legacy form: one `prompt`, an empty one only loads the model."""
    body = expect_object(body)
    prompt = get_typed(body, "prompt", str, "a string", default="")
    req = InternalRequest(kind="embedding", model=_model(body), prompts=[prompt] if prompt else [])
    _parse_embedding_fields(body, req)
    return req


def _embed_inputs(value: Any) -> list[str]:
    if value is None or value == "":
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `input`: expected a string or an array of strings, got {type_name(value)}.",
                      "input")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise invalid(f"Invalid value for `input[{i}]`: expected a non-empty string.", f"input[{i}]")
    return list(value)


def _parse_embedding_fields(body: dict[str, Any], req: InternalRequest) -> None:
    req.keep_alive = parse_keep_alive(body.get("keep_alive"))
    apply_options(parse_options(body.get("options"), "options"), req)
    if not req.prompts:
        req.kind = "load_model"


# ---------------------------------------------------------------------------------------------------------------
# Parsing: banner, version, names


def parse_banner(body: Any, ctx: RequestContext) -> InternalRequest:
    return InternalRequest(kind="health")


def parse_version(body: Any, ctx: RequestContext) -> InternalRequest:
    return InternalRequest(kind="version")


def _model(body: dict[str, Any]) -> str:
    """The name as the client wrote it: Ollama echoes it back, and the service resolves `x` and `x:latest`."""
    return get_typed(body, "model", str, "a string", required=True)


# ---------------------------------------------------------------------------------------------------------------
# Rendering: shared pieces


def nanoseconds(seconds: float) -> int:
    return round(seconds * NANOSECONDS)


def metrics(usage: Usage, timings: Timings) -> dict[str, int]:
    """The final object's counters, always sent there (Go omits zeros, but clients that index them would break)."""
    return {
        "total_duration": nanoseconds(timings.total),
        "load_duration": nanoseconds(timings.load),
        "prompt_eval_count": usage.prompt_tokens,
        "prompt_eval_duration": nanoseconds(timings.prompt),
        "eval_count": usage.completion_tokens,
        "eval_duration": nanoseconds(timings.generation),
    }


def done_reason(reason: FinishReason) -> str:
    return DONE_REASONS.get(reason, "stop")


def render_tool_calls(calls: list[ToolCall]) -> list[dict[str, Any]]:
    return [_tool_call(i, call) for i, call in enumerate(calls)]


def _tool_call(index: int, call: ToolCall) -> dict[str, Any]:
    rendered: dict[str, Any] = {"id": call.id} if call.id else {}
    rendered["function"] = {"index": index, "name": call.name, "arguments": tool_arguments(call.arguments)}
    return rendered


def tool_arguments(text: str) -> dict[str, Any]:
    """Arguments as an object (ollama-python requires a mapping); text that is not a JSON object becomes {}."""
    try:
        value = json.loads(text) if text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def render_logprobs(logprobs: list[TokenLogprob] | None) -> list[dict[str, Any]]:
    return [{"token": lp.token, "logprob": lp.logprob, "bytes": lp.bytes,
             "top_logprobs": [{"token": tok, "logprob": val, "bytes": raw} for tok, val, raw, _ in lp.top]}
            for lp in logprobs or []]


Build = Callable[..., dict[str, Any]]


def chat_object(model: str, created_at: str, content: str = "", thinking: str = "",
                tool_calls: list[dict[str, Any]] | None = None, done: bool = False, reason: str = "",
                logprobs: list[dict[str, Any]] | None = None,
                counters: dict[str, int] | None = None) -> dict[str, Any]:
    """One /api/chat object, keys in the order of Go's ChatResponse; empty optional fields are left out."""
    message: dict[str, Any] = {"role": "assistant", "content": content}
    if thinking:
        message["thinking"] = thinking
    if tool_calls:
        message["tool_calls"] = tool_calls
    out: dict[str, Any] = {"model": model, "created_at": created_at, "message": message, "done": done}
    if reason:
        out["done_reason"] = reason
    if logprobs:
        out["logprobs"] = logprobs
    return {**out, **(counters or {})}


def generate_object(model: str, created_at: str, content: str = "", thinking: str = "",
                    tool_calls: list[dict[str, Any]] | None = None, done: bool = False, reason: str = "",
                    logprobs: list[dict[str, Any]] | None = None,
                    counters: dict[str, int] | None = None) -> dict[str, Any]:
    """One /api/generate object, keys in the order of Go's GenerateResponse."""
    out: dict[str, Any] = {"model": model, "created_at": created_at, "response": content}
    if thinking:
        out["thinking"] = thinking
    out["done"] = done
    if reason:
        out["done_reason"] = reason
    out.update(counters or {})
    if tool_calls:
        out["tool_calls"] = tool_calls
    if logprobs:
        out["logprobs"] = logprobs
    return out


# ---------------------------------------------------------------------------------------------------------------
# Rendering: finished results


def render_chat(result: GenerationResult | LoadResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return _render_generation(result, req, ctx, chat_object)


def render_generate(result: GenerationResult | LoadResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return _render_generation(result, req, ctx, generate_object)


def _render_generation(result: GenerationResult | LoadResult, req: InternalRequest, ctx: RequestContext,
                       build: Build) -> dict[str, Any]:
    """A whole answer (`stream: false`) or a load/unload acknowledgement, which Ollama sends the same way."""
    created_at = go_time(ctx.created)
    if isinstance(result, LoadResult):
        return build(req.model, created_at, done=True, reason=result.action)
    choice = result.choices[0]
    return build(req.model, created_at, content=choice.text, thinking=choice.thinking,
                 tool_calls=render_tool_calls(choice.tool_calls), done=True, reason=done_reason(choice.finish_reason),
                 logprobs=render_logprobs(choice.logprobs), counters=metrics(result.usage, result.timings))


def render_embed(result: EmbeddingResult | LoadResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """Unit vectors, as Ollama normalizes them, cut to `dimensions` and normalized again when asked."""
    if isinstance(result, LoadResult):
        return {"model": req.model, "embeddings": []}
    size = req.render.get("dimensions", 0)
    vectors = [normalize(vec[:size] if 0 < size < len(vec) else vec) for vec in result.vectors]
    return {
        "model": req.model,
        "embeddings": vectors,
        "total_duration": nanoseconds(result.timings.total),
        "load_duration": nanoseconds(result.timings.load),
        "prompt_eval_count": result.usage.prompt_tokens,
    }


def normalize(vector: list[float]) -> list[float]:
    norm = max(math.sqrt(sum(v * v for v in vector)), 1e-12)
    return [v / norm for v in vector]


def render_embeddings(result: EmbeddingResult | LoadResult, req: InternalRequest,
                      ctx: RequestContext) -> dict[str, Any]:
    """The legacy shape: one vector, as the engine made it."""
    if isinstance(result, LoadResult):
        return {"embedding": []}
    return {"embedding": result.vectors[0] if result.vectors else []}


def render_banner(result: Result, req: InternalRequest, ctx: RequestContext) -> str:
    return BANNER


def render_version(result: Result, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """Ollama's version, not the gateway's: see OLLAMA_VERSION."""
    return {"version": OLLAMA_VERSION}


def render_error(err: GatewayError) -> tuple[int, dict[str, Any]]:
    return STATUSES.get(err.kind, 500), {"error": error_message(err)}


def error_message(err: GatewayError) -> str:
    """Ollama's wording for an unknown model, `model 'x' not found`: `ollama run` and `ollama stop` look for
    "not found". The registry's message carries the name in backticks; other messages pass through."""
    model = err.details.get("model") if err.kind == ErrorKind.NOT_FOUND else None
    return f"model '{model}' not found" if model is not None else err.message


# ---------------------------------------------------------------------------------------------------------------
# Streaming


class OllamaStream(BaseStream):
    """What Ollama's NDJSON streams share: nothing while idle, as Ollama sends nothing, and a failure after the
    first line as one `{"error"}` line, worded as Ollama words it."""

    idle_frame = None

    def error_frames(self, err: GatewayError) -> list[Frame]:
        return [ndjson({"error": error_message(err)})]


class GenerationStream(OllamaStream):
    """NDJSON objects for /api/chat or /api/generate. Text and thinking go out as they come; a tool call is
    gathered until its choice ends, because Ollama sends each call whole with its arguments as an object. The
    final object carries done_reason and the counters."""

    build: Build = staticmethod(chat_object)

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        super().__init__(req, ctx)
        self.model = req.model
        self.created_at = go_time(ctx.created)
        self.reason = "stop"
        self.calls: dict[int, ToolCall] = {}

    def event_frames(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, TextDelta):
            if event.logprobs is None:
                return [self.text_frame(0, lambda t: self._line(content=t), event.text)]
            return [self._line(content=event.text, logprobs=render_logprobs(event.logprobs))]
        if isinstance(event, ThinkingDelta):
            return [self._line(thinking=event.text)]
        if isinstance(event, ToolCallDelta):
            self._gather(event)
            return []
        if isinstance(event, ChoiceDone):
            self.reason = done_reason(event.finish_reason)
            return self._flush_calls()
        if isinstance(event, Done):
            self.closed = True
            return [self._line(done=True, reason=self.reason, counters=metrics(event.usage, event.timings))]
        return []

    def _line(self, **fields: Any) -> Frame:
        return ndjson(self.build(self.model, self.created_at, **fields))

    def _gather(self, event: ToolCallDelta) -> None:
        call = self.calls.setdefault(event.call_index, ToolCall("", "", ""))
        call.id = call.id or event.id or ""
        call.name = call.name or event.name or ""
        call.arguments += event.arguments

    def _flush_calls(self) -> list[Frame]:
        if not self.calls:
            return []
        calls = [self.calls[i] for i in sorted(self.calls)]
        self.calls = {}
        return [self._line(tool_calls=render_tool_calls(calls))]


class GenerateStream(GenerationStream):
    build: Build = staticmethod(generate_object)


class ProgressStream(OllamaStream):
    """NDJSON `{"status", "digest"?, "total"?, "completed"?}` lines of a pull or create."""

    def event_frames(self, event: OutputEvent) -> list[Frame]:
        return [ndjson(progress_object(event))] if isinstance(event, Progress) else []


# ---------------------------------------------------------------------------------------------------------------
# Routes


def _route(method: str, path: str, name: str, parse: Parse, render: Render,
           stream: MakeStreamRenderer | None = None, body: Literal["json", "none"] = "json",
           public: bool = False) -> Route:
    return Route(method, path, FAMILY, parse, render, render_error, stream=stream, media_type=NDJSON, body=body,
                 name=f"ollama.{name}", public=public)


ROUTES: list[Route] = [
    _route("GET", "/", "banner", parse_banner, render_banner, body="none", public=True),
    _route("GET", "/api/version", "version", parse_version, render_version, body="none", public=True),
    _route("POST", "/api/chat", "chat", parse_chat, render_chat, stream=GenerationStream),
    _route("POST", "/api/generate", "generate", parse_generate, render_generate, stream=GenerateStream),
    _route("POST", "/api/embed", "embed", parse_embed, render_embed),
    _route("POST", "/api/embeddings", "embeddings", parse_embeddings, render_embeddings),
    _route("GET", "/api/tags", "tags", parse_tags, render_tags, body="none"),
    _route("GET", "/api/ps", "ps", parse_ps, render_ps, body="none"),
    _route("POST", "/api/show", "show", parse_show, render_show),
    _route("POST", "/api/copy", "copy", parse_copy, render_empty),
    _route("DELETE", "/api/delete", "delete", parse_delete, render_empty),
    _route("POST", "/api/create", "create", parse_create, render_progress, stream=ProgressStream),
    _route("POST", "/api/pull", "pull", parse_pull, render_progress, stream=ProgressStream),
    _route("POST", "/api/push", "push", parse_push, render_progress),
    _route("POST", "/api/blobs/<digest>", "blobs", parse_blob_upload, render_empty, body="none"),
]
