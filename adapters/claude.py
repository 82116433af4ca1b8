"""Anthropic family: the Messages API (create, stream, count_tokens) and the models list in Anthropic's shape.

Parsing follows the real API where clients depend on it and stays lenient where agents send extras this server
has no use for: `cache_control`, `metadata`, `context_management`, `service_tier`, `container`, `mcp_servers`,
the `?beta=true` query and the `anthropic-beta` header are accepted and ignored; tools of a server or builtin
`type` (web search, code execution, bash, ...) are skipped, and so are the blocks that carry their results. A tool
with `defer_loading` stays out of the prompt until a `tool_reference` block (a tool search's result) names it, as
on Anthropic's side: Claude Code sends a placeholder of that kind that the model must never see.
Anything this server cannot honour at all (a PDF, an unknown block type) is a 400 naming the field by its dotted
path (`messages.0.content.1.type`), as Anthropic names it.

Rendering follows shared/API-SPEC.md §3 byte for byte: every SSE event carries an `event:` line equal to its
`type` (the SDK drops events without one), blocks are numbered 0, 1, 2... in the order they start, and usage is
present on `message_start` and `message_delta`.

Usage: Anthropic's `input_tokens` excludes cache reads (total input = input + cache creation + cache read), so
the prompt prefix reused from the KV cache is reported as `cache_read_input_tokens` and `input_tokens` is the
rest; nothing is ever written to a cache on request, so `cache_creation_input_tokens` is 0.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from adapters.base import (
    BaseStream,
    Frame,
    RequestContext,
    Route,
    compact_json,
    expect_object,
    get_number,
    get_typed,
    object_items,
    sse,
    type_name,
)
from gateway.types import (
    ChoiceDone,
    Constraint,
    Done,
    ErrorKind,
    FinishReason,
    GatewayError,
    GenerationResult,
    ImagePart,
    InternalRequest,
    Message,
    ModelInfo,
    ModelList,
    OutputEvent,
    PromptStarted,
    RequestKind,
    SamplingParams,
    TextDelta,
    ThinkingDelta,
    TokenizeResult,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
    invalid,
)

FAMILY = "anthropic"
VERSION_HEADER = "anthropic-version"
TEXT_SEPARATOR = "\n\n"  # between text blocks: each block is its own piece of text, gluing them merges words
THINKING_SIGNATURE = "llm-gateway"
"""Local models sign nothing; clients only send the signature back with the thinking block, which is dropped."""

ROLES = ("user", "assistant", "system")  # anthropic 2.12 also types a `system` message inside `messages`
MODELS_PAGE = 20
MODELS_PAGE_MAX = 1000

THINKING: dict[str, bool | None] = {"enabled": True, "disabled": False, "adaptive": None, "between_tools": None}
"""`adaptive` lets the model decide, which is what a model's own default does; forcing it on would fail for
models that cannot think."""
TOOL_CHOICES: dict[str, ToolChoice] = {"auto": "auto", "any": "required", "none": "none"}

MESSAGE_BLOCKS = ("text", "image", "document", "search_result", "thinking", "tool_use", "tool_result")
RESULT_BLOCKS = ("text", "image", "document", "search_result")
SOURCE_BLOCKS = ("text", "image")
IGNORED_BLOCKS = frozenset({
    "redacted_thinking", "server_tool_use", "web_search_tool_result", "web_fetch_tool_result",
    "code_execution_tool_result", "bash_code_execution_tool_result", "text_editor_code_execution_tool_result",
    "tool_search_tool_result", "container_upload", "mcp_tool_use", "mcp_tool_result", "tool_reference",
    "browser_state",
})
"""Blocks accepted and dropped: encrypted thinking, and the calls and results of server tools this server never
runs (they only reach it in a history first built against Anthropic's API)."""

ERRORS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorKind.CONTEXT_OVERFLOW: (400, "invalid_request_error"),
    ErrorKind.UNAUTHORIZED: (401, "authentication_error"),
    ErrorKind.FORBIDDEN: (403, "permission_error"),
    ErrorKind.NOT_FOUND: (404, "not_found_error"),
    ErrorKind.TOO_LARGE: (413, "request_too_large"),
    ErrorKind.OVERLOADED: (429, "rate_limit_error"),
    ErrorKind.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorKind.UNAVAILABLE: (529, "overloaded_error"),
    ErrorKind.TIMEOUT: (504, "timeout_error"),
    ErrorKind.INTERNAL: (500, "api_error"),
}
"""A full queue is 429, not 529: it clears as soon as a sequence ends, and Claude Code retries 429 up to ten
times for every query while it retries 529 three times and only for the query the user waits on (the SDKs
retry both). A model that cannot be loaded now is the server's capacity, so 529 overloaded_error."""


PING: Frame = sse('{"type": "ping"}', event="ping")


# ---------------------------------------------------------------------------------------------------------------
# Parsing: endpoints


def parse_create(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /v1/messages."""
    body = expect_object(body)
    req = _conversation_request("chat", body)
    req.sampling = parse_sampling(body)
    req.tool_choice = parse_tool_choice(body.get("tool_choice"), req.tools)
    req.parallel_tool_calls = not _disables_parallel_calls(body.get("tool_choice"))
    req.think, req.reasoning_budget = parse_thinking(body.get("thinking"))
    req.constraint = parse_output_config(body.get("output_config"))
    req.stream = get_typed(body, "stream", bool, "a boolean", default=False)
    req.clip_max_tokens = True  # Claude stops at the window (model_context_window_exceeded), never refuses
    _check_metadata(body.get("metadata"))
    return req


def parse_count_tokens(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /v1/messages/count_tokens: the prompt exactly as a create with the same body would render it."""
    return _conversation_request("tokenize", expect_object(body))


def parse_list_models(body: Any, ctx: RequestContext) -> InternalRequest:
    """GET /v1/models?limit=&after_id=&before_id=: the page is cut at render time from the full list."""
    return InternalRequest(kind="list_models", render=_parse_page(ctx.query))


def parse_show_model(body: Any, ctx: RequestContext) -> InternalRequest:
    return InternalRequest(kind="show_model", model=ctx.path_params.get("model", ""))


def is_anthropic(body: Any, ctx: RequestContext) -> bool:
    """`GET /v1/models` is shared with OpenAI; every Anthropic client sends `anthropic-version`."""
    return VERSION_HEADER in ctx.headers


def _conversation_request(kind: RequestKind, body: dict[str, Any]) -> InternalRequest:
    model = get_typed(body, "model", str, "a string", required=True)
    messages = parse_conversation(body.get("system"), body.get("messages"))
    return InternalRequest(
        kind=kind,
        model=model,
        messages=messages,
        tools=parse_tools(body.get("tools"), referenced_tools(body.get("messages"))),
        continue_final_message=is_prefill(messages),
    )


def _parse_page(query: dict[str, str]) -> dict[str, Any]:
    after, before = query.get("after_id") or None, query.get("before_id") or None
    if after and before:
        raise invalid("`after_id` and `before_id` cannot be used together.", "before_id")
    limit = query.get("limit", str(MODELS_PAGE))
    if not (limit.isdigit() and 1 <= int(limit) <= MODELS_PAGE_MAX):
        raise invalid(f"Invalid value for `limit`: expected an integer between 1 and {MODELS_PAGE_MAX}, "
                      f"got {limit!r}.", "limit")
    return {"limit": int(limit), "after_id": after, "before_id": before}


# ---------------------------------------------------------------------------------------------------------------
# Parsing: sampling, tools, thinking, output format


def parse_sampling(body: dict[str, Any]) -> SamplingParams:
    """`max_tokens` is required, as Anthropic requires it. No `temperature` leaves the model's default."""
    get_typed(body, "max_tokens", int, "an integer", required=True)
    return SamplingParams(
        max_tokens=get_number(body, "max_tokens", 1, integer=True),
        temperature=get_number(body, "temperature", 0, 1),
        top_p=get_number(body, "top_p", 0, 1),
        top_k=get_number(body, "top_k", 0, integer=True),
        stop=_parse_stop_sequences(body.get("stop_sequences")),
    )


def _parse_stop_sequences(value: Any) -> list[str]:
    """Empty strings are dropped: a stop string that matches everywhere would end every answer at once."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `stop_sequences`: expected an array of strings, got {type_name(value)}.",
                      "stop_sequences")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"Invalid type for `stop_sequences.{i}`: expected a string, got {type_name(item)}.",
                          f"stop_sequences.{i}")
    return [item for item in value if item]


def parse_tools(value: Any, referenced: frozenset[str] = frozenset()) -> list[Tool]:
    """Only custom tools become Tools. A tool with another `type` is one Anthropic runs on its side or whose
    schema only Claude knows (web_search_…, bash_…, text_editor_…): skipped, so agents that always send them work.
    A deferred tool (`defer_loading`) is validated but kept only once its name is `referenced`."""
    tools = []
    for name, tool in object_items(value, "tools", index="{}.{}"):
        if get_typed(tool, "type", str, "a string", default="custom", prefix=name + ".") != "custom":
            continue
        parsed = _parse_tool(tool, name + ".")
        deferred = get_typed(tool, "defer_loading", bool, "a boolean", default=False, prefix=name + ".")
        if not deferred or parsed.name in referenced:
            tools.append(parsed)
    return tools


def referenced_tools(value: Any) -> frozenset[str]:
    """The tool names in `tool_reference` blocks anywhere in the messages: in a custom tool search's
    `tool_result`, or in a server tool search's result, which nests them deeper."""
    if isinstance(value, list):
        return frozenset().union(*map(referenced_tools, value))
    if not isinstance(value, dict):
        return frozenset()
    if value.get("type") == "tool_reference" and isinstance(value.get("tool_name"), str):
        return frozenset({value["tool_name"]})
    return frozenset().union(*(referenced_tools(item) for item in value.values() if isinstance(item, (list, dict))))


def _parse_tool(tool: dict[str, Any], prefix: str) -> Tool:
    return Tool(
        name=get_typed(tool, "name", str, "a string", required=True, prefix=prefix),
        description=get_typed(tool, "description", str, "a string", default="", prefix=prefix),
        parameters=get_typed(tool, "input_schema", dict, "an object", required=True, prefix=prefix),
        strict=get_typed(tool, "strict", bool, "a boolean", default=False, prefix=prefix),
    )


def tool_use_id(call_id: str) -> str:
    """Claude's ids read `toolu_…`; the client sends it back in `tool_result`, so any stable form works."""
    return call_id if call_id.startswith("toolu_") else "toolu_" + call_id.removeprefix("call_")


def parse_tool_choice(value: Any, tools: list[Tool]) -> ToolChoice:
    """auto, any → required, none, or `tool` → that tool's name, which must be one of the custom `tools`."""
    if value is None:
        return "auto"
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `tool_choice`: expected an object, got {type_name(value)}.", "tool_choice")
    kind = get_typed(value, "type", str, "a string", required=True, prefix="tool_choice.")
    if kind in TOOL_CHOICES:
        return TOOL_CHOICES[kind]
    if kind != "tool":
        raise invalid(f"Invalid value for `tool_choice.type`: expected 'auto', 'any', 'tool' or 'none', got {kind!r}.",
                      "tool_choice.type")
    name = get_typed(value, "name", str, "a string", required=True, prefix="tool_choice.")
    if name not in {tool.name for tool in tools}:
        raise invalid(f"Invalid value for `tool_choice.name`: {name!r} is not one of `tools`.", "tool_choice.name")
    return name


def _disables_parallel_calls(value: Any) -> bool:
    return isinstance(value, dict) and value.get("disable_parallel_tool_use") is True


def parse_thinking(value: Any) -> tuple[bool | None, int | None]:
    """Reasoning on, off or the model's default, and `budget_tokens`: the most tokens reasoning may take."""
    if value is None:
        return None, None
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `thinking`: expected an object, got {type_name(value)}.", "thinking")
    kind = get_typed(value, "type", str, "a string", required=True, prefix="thinking.")
    if kind not in THINKING:
        raise invalid(f"Invalid value for `thinking.type`: expected one of {', '.join(map(repr, THINKING))}, "
                      f"got {kind!r}.", "thinking.type")
    budget = None
    if kind == "enabled":
        budget = get_typed(value, "budget_tokens", int, "an integer", required=True, prefix="thinking.")
        if budget < 1:
            raise invalid(f"Invalid value for `thinking.budget_tokens`: expected at least 1, got {budget}.",
                          "thinking.budget_tokens")
    return THINKING[kind], budget


def parse_output_config(value: Any) -> Constraint | None:
    """`format` (a JSON schema) becomes the constraint; `effort` has no counterpart and is ignored."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `output_config`: expected an object, got {type_name(value)}.",
                      "output_config")
    fmt = get_typed(value, "format", dict, "an object", prefix="output_config.")
    if fmt is None:
        return None
    kind = get_typed(fmt, "type", str, "a string", required=True, prefix="output_config.format.")
    if kind != "json_schema":
        raise invalid(f"Invalid value for `output_config.format.type`: expected 'json_schema', got {kind!r}.",
                      "output_config.format.type")
    schema = get_typed(fmt, "schema", dict, "an object", required=True, prefix="output_config.format.")
    return Constraint("json_schema", schema, "output_config.format.schema")


def _check_metadata(value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `metadata`: expected an object, got {type_name(value)}.", "metadata")
    get_typed(value, "user_id", str, "a string", prefix="metadata.")


# ---------------------------------------------------------------------------------------------------------------
# Parsing: the conversation


@dataclass
class _Blocks:
    """What the content blocks of one message add up to."""

    texts: list[str] = field(default_factory=list)
    images: list[ImagePart] = field(default_factory=list)
    thinking: list[str] = field(default_factory=list)
    calls: list[ToolCall] = field(default_factory=list)
    results: list[Message] = field(default_factory=list)

    @property
    def text(self) -> str:
        return TEXT_SEPARATOR.join(self.texts)


def parse_conversation(system: Any, value: Any) -> list[Message]:
    """The system prompt first, then each message. A user message's tool results become `tool` messages ahead of
    its other content (Anthropic requires them first); consecutive user or assistant messages are merged into one
    turn, as Anthropic does, since many chat templates refuse two turns of the same role in a row."""
    if not isinstance(value, list) or not value:
        got = "an empty array" if isinstance(value, list) else ("nothing" if value is None else type_name(value))
        raise invalid(f"Invalid value for `messages`: expected a non-empty array of messages, got {got}.", "messages")
    messages: list[Message] = []
    text = parse_system(system)
    if text:
        messages.append(Message("system", text))
    tool_names: dict[str, str] = {}
    for i, item in enumerate(value):
        for message in _parse_message(item, f"messages.{i}", tool_names):
            _append(messages, message)
    return messages


def parse_system(value: Any) -> str:
    """A string or text blocks, joined. (Claude Code's per-request billing line is agent noise, which the
    `prompt_rules` setting removes from every family's system prompts.)"""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `system`: expected a string or an array of text blocks, "
                      f"got {type_name(value)}.", "system")
    blocks = _Blocks()
    for i, block in enumerate(value):
        _parse_block(block, f"system.{i}", ("text",), blocks, {})
    return TEXT_SEPARATOR.join(text for text in blocks.texts if text)


def _parse_message(item: Any, name: str, tool_names: dict[str, str]) -> list[Message]:
    if not isinstance(item, dict):
        raise invalid(f"Invalid type for `{name}`: expected an object, got {type_name(item)}.", name)
    prefix = name + "."
    role = get_typed(item, "role", str, "a string", required=True, prefix=prefix)
    if role not in ROLES:
        raise invalid(f"Invalid value for `{prefix}role`: expected 'user', 'assistant' or 'system', got {role!r}.",
                      prefix + "role")
    content = item.get("content")
    if isinstance(content, str):
        return [Message(role, content)]
    if not isinstance(content, list):
        raise invalid(f"Invalid type for `{prefix}content`: expected a string or an array of content blocks, "
                      f"got {'nothing' if content is None else type_name(content)}.", prefix + "content")
    allowed = ("text",) if role == "system" else MESSAGE_BLOCKS
    blocks = _Blocks()
    for j, block in enumerate(content):
        _parse_block(block, f"{prefix}content.{j}", allowed, blocks, tool_names)
    if blocks.results and not (blocks.text or blocks.images):
        return blocks.results
    return [*blocks.results, Message(role, blocks.text, images=blocks.images, tool_calls=blocks.calls,
                                     thinking=TEXT_SEPARATOR.join(blocks.thinking) or None)]


def _append(messages: list[Message], message: Message) -> None:
    last = messages[-1] if messages else None
    if last is None or last.role != message.role or message.role not in ("user", "assistant"):
        messages.append(message)
        return
    last.content = TEXT_SEPARATOR.join(text for text in (last.content, message.content) if text)
    last.images += message.images
    last.tool_calls += message.tool_calls
    last.thinking = TEXT_SEPARATOR.join(text for text in (last.thinking, message.thinking) if text) or None


def is_prefill(messages: list[Message]) -> bool:
    """A last assistant message with text is a prefill: the answer continues it instead of starting a turn."""
    last = messages[-1]
    return last.role == "assistant" and bool(last.content) and not last.tool_calls


def _parse_block(block: Any, name: str, allowed: tuple[str, ...], blocks: _Blocks, tool_names: dict[str, str]) -> None:
    if not isinstance(block, dict):
        raise invalid(f"Invalid type for `{name}`: expected a content block object, got {type_name(block)}.", name)
    prefix = name + "."
    kind = get_typed(block, "type", str, "a string", required=True, prefix=prefix)
    if kind in IGNORED_BLOCKS:
        return
    if kind not in allowed:
        raise invalid(f"Invalid value for `{prefix}type`: expected one of {', '.join(map(repr, allowed))}, "
                      f"got {kind!r}.", prefix + "type")
    if kind == "text":
        blocks.texts.append(get_typed(block, "text", str, "a string", required=True, prefix=prefix))
    elif kind == "image":
        blocks.images.append(_parse_image_source(block.get("source"), prefix + "source"))
    elif kind == "document":
        _parse_document_source(block.get("source"), prefix + "source", blocks)
    elif kind == "search_result":
        _parse_block_list(block.get("content"), prefix + "content", ("text",), blocks)
    elif kind == "thinking":
        blocks.thinking.append(get_typed(block, "thinking", str, "a string", required=True, prefix=prefix))
    elif kind == "tool_use":
        call = _parse_tool_use(block, prefix)
        tool_names[call.id] = call.name
        blocks.calls.append(call)
    else:  # tool_result
        blocks.results.append(_parse_tool_result(block, prefix, tool_names))


def _parse_image_source(source: Any, name: str) -> ImagePart:
    """Inline images become data URLs, so the service can refuse them for models without vision."""
    kind = _source_type(source, name)
    prefix = name + "."
    if kind == "base64":
        media_type = get_typed(source, "media_type", str, "a string", required=True, prefix=prefix)
        data = get_typed(source, "data", str, "a string", required=True, prefix=prefix)
        return ImagePart(f"data:{media_type};base64,{data}")
    if kind == "url":
        return ImagePart(get_typed(source, "url", str, "a string", required=True, prefix=prefix))
    raise invalid(f"Invalid value for `{prefix}type`: expected 'base64' or 'url' (this server has no Files API), "
                  f"got {kind!r}.", prefix + "type")


def _parse_document_source(source: Any, name: str, blocks: _Blocks) -> None:
    """Plain-text and content documents are text; a PDF cannot be read here, so it is refused, not dropped."""
    kind = _source_type(source, name)
    prefix = name + "."
    if kind == "text":
        blocks.texts.append(get_typed(source, "data", str, "a string", required=True, prefix=prefix))
    elif kind == "content":
        content = source.get("content")
        if isinstance(content, str):
            blocks.texts.append(content)
        else:
            _parse_block_list(content, prefix + "content", SOURCE_BLOCKS, blocks)
    else:
        raise invalid(f"Invalid value for `{prefix}type`: only 'text' and 'content' documents can be read here "
                      f"(no PDF or file documents), got {kind!r}.", prefix + "type")


def _source_type(source: Any, name: str) -> str:
    if not isinstance(source, dict):
        got = "nothing" if source is None else type_name(source)
        raise invalid(f"Invalid type for `{name}`: expected a source object, got {got}.", name)
    return get_typed(source, "type", str, "a string", required=True, prefix=name + ".")


def _parse_block_list(value: Any, name: str, allowed: tuple[str, ...], blocks: _Blocks) -> None:
    if not isinstance(value, list):
        got = "nothing" if value is None else type_name(value)
        raise invalid(f"Invalid type for `{name}`: expected an array of content blocks, got {got}.", name)
    for k, block in enumerate(value):
        _parse_block(block, f"{name}.{k}", allowed, blocks, {})


def _parse_tool_use(block: dict[str, Any], prefix: str) -> ToolCall:
    """`input` is an object on the wire and a JSON string inside."""
    return ToolCall(
        id=get_typed(block, "id", str, "a string", required=True, prefix=prefix),
        name=get_typed(block, "name", str, "a string", required=True, prefix=prefix),
        arguments=compact_json(get_typed(block, "input", dict, "an object", default={}, prefix=prefix)),
    )


def _parse_tool_result(block: dict[str, Any], prefix: str, tool_names: dict[str, str]) -> Message:
    """`is_error` has no counterpart in chat templates; the result text says what went wrong."""
    call_id = get_typed(block, "tool_use_id", str, "a string", required=True, prefix=prefix)
    get_typed(block, "is_error", bool, "a boolean", prefix=prefix)
    content = block.get("content")
    if content is None or isinstance(content, str):
        return Message("tool", content or "", tool_call_id=call_id, name=tool_names.get(call_id))
    inner = _Blocks()
    _parse_block_list(content, prefix + "content", RESULT_BLOCKS, inner)
    return Message("tool", inner.text, images=inner.images, tool_call_id=call_id, name=tool_names.get(call_id))


# ---------------------------------------------------------------------------------------------------------------
# Rendering: shared pieces


def render_usage(usage: Usage) -> dict[str, int]:
    return {
        "input_tokens": usage.prompt_tokens - usage.cached_tokens,
        "output_tokens": usage.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": usage.cached_tokens,
    }


def stop_reason(finish: FinishReason, stop_sequence: str | None, used_tools: bool, output_tokens: int,
                max_tokens: int | None) -> tuple[str, str | None]:
    """(stop_reason, stop_sequence). A tool call makes it `tool_use` whatever ended the text; a length stop
    before the requested `max_tokens` can only be the context window, which Claude reports apart."""
    if finish == "tool_calls" or (used_tools and finish == "stop"):
        return "tool_use", None
    if finish == "length":
        window = max_tokens is not None and output_tokens < max_tokens
        return ("model_context_window_exceeded" if window else "max_tokens"), None
    if stop_sequence is not None:
        return "stop_sequence", stop_sequence
    return "end_turn", None


def tool_input(arguments: str) -> dict[str, Any]:
    """A call's arguments as the object Anthropic sends; arguments that are not a JSON object are a server fault."""
    try:
        value = json.loads(arguments) if arguments.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise GatewayError(ErrorKind.INTERNAL, f"The model's tool call arguments are not a JSON object: {arguments!r}")
    return value


def created_at(epoch: int) -> str:
    """RFC 3339 with a zone, as the SDK parses `created_at`."""
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def overflow_message(err: GatewayError) -> str:
    """Claude's own wording, which agents match to react: "prompt is too long: N tokens > M maximum" makes
    Claude Code compact the conversation, "input length and `max_tokens` exceed context limit: I + O > N" makes it
    retry with a smaller max_tokens."""
    facts = err.details
    limit, prompt, output = facts.get("limit"), facts.get("prompt_tokens"), facts.get("max_tokens")
    if limit is None or prompt is None:
        return f"prompt is too long: {err.message}"
    if output is None or prompt >= limit:
        return f"prompt is too long: {prompt} tokens > {limit} maximum"
    return (f"input length and `max_tokens` exceed context limit: {prompt} + {output} > {limit}, "
            "decrease input length or `max_tokens` and try again")


def error_body(err: GatewayError) -> dict[str, Any]:
    kind = ERRORS.get(err.kind, (500, "api_error"))[1]
    message = overflow_message(err) if err.kind is ErrorKind.CONTEXT_OVERFLOW else err.message
    return {"type": "error", "error": {"type": kind, "message": message}}


def render_error(err: GatewayError) -> tuple[int, dict[str, Any]]:
    return ERRORS.get(err.kind, (500, "api_error"))[0], error_body(err)


# ---------------------------------------------------------------------------------------------------------------
# Rendering: finished results


def render_message(result: GenerationResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """Blocks in Claude's order: thinking, text, tool calls. The text block is there when there is text or
    nothing else, so `content[0].text`, which many clients read blindly, always exists for a plain answer."""
    choice = min(result.choices, key=lambda c: c.index)
    content: list[dict[str, Any]] = []
    if choice.thinking:
        content.append({"type": "thinking", "thinking": choice.thinking, "signature": THINKING_SIGNATURE})
    if choice.text or not (choice.thinking or choice.tool_calls):
        content.append({"type": "text", "text": choice.text})
    content += [{"type": "tool_use", "id": tool_use_id(call.id), "name": call.name, "input": tool_input(call.arguments)}
                for call in choice.tool_calls]
    reason, sequence = stop_reason(choice.finish_reason, choice.stop_sequence, bool(choice.tool_calls),
                                   result.usage.completion_tokens, req.sampling.max_tokens)
    return {
        "id": f"msg_{ctx.request_id}",
        "type": "message",
        "role": "assistant",
        "model": req.model,
        "content": content,
        "stop_reason": reason,
        "stop_sequence": sequence,
        "usage": render_usage(result.usage),
    }


def render_count_tokens(result: TokenizeResult, req: InternalRequest, ctx: RequestContext) -> dict[str, int]:
    return {"input_tokens": len(result.tokens)}


def render_models(result: ModelList, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """Aliases are models of their own, since clients pick a model by the ids they see. The page follows the
    SDK's pager, which asks again with `after_id=last_id` while `has_more` is true."""
    entries = [(name, info) for info in result.models for name in [info.name, *info.aliases]]
    page, has_more = _page(entries, req.render)
    data = [_model_entry(name, info) for name, info in page]
    return {"data": data, "has_more": has_more, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None}


def _page(entries: list[tuple[str, ModelInfo]], render: dict[str, Any]) -> tuple[list[tuple[str, ModelInfo]], bool]:
    ids = [name for name, _ in entries]
    limit, after, before = render["limit"], render["after_id"], render["before_id"]
    if after is not None:
        start = _position(ids, after, "after_id") + 1
        return entries[start:start + limit], start + limit < len(entries)
    if before is not None:
        end = _position(ids, before, "before_id")
        start = max(end - limit, 0)
        return entries[start:end], start > 0
    return entries[:limit], limit < len(entries)


def _position(ids: list[str], model_id: str, param: str) -> int:
    if model_id not in ids:
        raise invalid(f"Invalid value for `{param}`: no model has the id {model_id!r}.", param)
    return ids.index(model_id)


def render_model(result: ModelInfo, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return _model_entry(req.model or result.name, result)


def _model_entry(name: str, info: ModelInfo) -> dict[str, Any]:
    window = info.max_model_len or info.context_length or None
    return {"type": "model", "id": name, "display_name": name, "created_at": created_at(info.created),
            "lifecycle": "active", "max_input_tokens": window, "max_tokens": window}


# ---------------------------------------------------------------------------------------------------------------
# Streaming


def _event(data: dict[str, Any]) -> Frame:
    """Every event is named after its `type`: the SDK silently drops an event without an `event:` line."""
    return sse(data, event=data["type"])


class MessagesStream(BaseStream):
    """The block state machine: each kind of output opens its own content block (thinking, text, one per tool
    call), the open block is stopped when another kind starts, and indexes count up from 0 in that order. A
    thinking block gets its signature just before it stops. `ping` follows the first block start, as Claude
    sends it. A stream with no output still gets one empty text block, like a finished message. Nothing goes out
    at `start`: message_start waits for PromptStarted, which carries the prompt's usage."""

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        super().__init__(req, ctx)
        self.req = req
        self.id = f"msg_{ctx.request_id}"
        self.open: tuple[str, int] | None = None  # the open block: its type and, for a tool call, the call index
        self.started = 0  # blocks started so far: the index of the next one
        self.used_tools = False
        self.stop: tuple[str, str | None] = ("end_turn", None)
        self.blocks_done = False
        self.message_started = False

    def _message_start(self, usage: Usage) -> list[Frame]:
        if self.message_started:
            return []
        self.message_started = True
        return [_event({"type": "message_start", "message": {
            "id": self.id, "type": "message", "role": "assistant", "model": self.req.model, "content": [],
            "stop_reason": None, "stop_sequence": None, "usage": render_usage(usage),
        }})]

    def event_frames(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, PromptStarted):
            return self._message_start(Usage(event.prompt_tokens, 0, event.cached_tokens))
        if not self.message_started:
            return [*self._message_start(Usage()), *self.event_frames(event)]
        if isinstance(event, Done):
            return self._done(event)
        if isinstance(event, ChoiceDone):
            return self._choice_done(event)
        if self.blocks_done:
            return []
        if isinstance(event, TextDelta) and event.text:
            if self.open == ("text", 0):  # the text block goes on: only the text changes
                index = self.started - 1
                return [self.text_frame(index, lambda t: _event(
                    {"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": t}}),
                    event.text)]
            return self._write(("text", 0), {"type": "text", "text": ""}, {"type": "text_delta", "text": event.text})
        if isinstance(event, ThinkingDelta) and event.text:
            return self._write(("thinking", 0), {"type": "thinking", "thinking": "", "signature": ""},
                               {"type": "thinking_delta", "thinking": event.text})
        if isinstance(event, ToolCallDelta):
            return self._tool(event)
        return []

    def error_frames(self, err: GatewayError) -> list[Frame]:
        return [_event(error_body(err))]

    def idle_frames(self) -> list[Frame]:
        """`event: ping` is only valid after message_start; before it, an SSE comment keeps the line open."""
        return [PING] if self.message_started else super().idle_frames()

    def _tool(self, event: ToolCallDelta) -> list[Frame]:
        self.used_tools = True
        opener = {"type": "tool_use", "id": tool_use_id(event.id or ""), "name": event.name or "", "input": {}}
        delta = {"type": "input_json_delta", "partial_json": event.arguments} if event.arguments else None
        return self._write(("tool_use", event.call_index), opener, delta)

    def _write(self, key: tuple[str, int], opener: dict[str, Any], delta: dict[str, Any] | None) -> list[Frame]:
        frames = [] if self.open == key else [*self._stop_block(), *self._start_block(key, opener)]
        if delta is not None:
            frames.append(_event({"type": "content_block_delta", "index": self.started - 1, "delta": delta}))
        return frames

    def _start_block(self, key: tuple[str, int], opener: dict[str, Any]) -> list[Frame]:
        frames = [_event({"type": "content_block_start", "index": self.started, "content_block": opener})]
        if self.started == 0:
            frames.append(PING)
        self.started += 1
        self.open = key
        return frames

    def _stop_block(self) -> list[Frame]:
        if self.open is None:
            return []
        index = self.started - 1
        frames = []
        if self.open[0] == "thinking":
            frames.append(_event({"type": "content_block_delta", "index": index,
                                  "delta": {"type": "signature_delta", "signature": THINKING_SIGNATURE}}))
        frames.append(_event({"type": "content_block_stop", "index": index}))
        self.open = None
        return frames

    def _finish_blocks(self) -> list[Frame]:
        if self.blocks_done:
            return []
        self.blocks_done = True
        frames = self._stop_block()
        if self.started == 0:
            frames += [*self._start_block(("text", 0), {"type": "text", "text": ""}), *self._stop_block()]
        return frames

    def _choice_done(self, event: ChoiceDone) -> list[Frame]:
        self.stop = stop_reason(event.finish_reason, event.stop_sequence, self.used_tools,
                                event.usage.completion_tokens, self.req.sampling.max_tokens)
        return self._finish_blocks()

    def _done(self, event: Done) -> list[Frame]:
        frames = self._finish_blocks()
        self.closed = True
        reason, sequence = self.stop
        return [
            *frames,
            _event({"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
                    "usage": render_usage(event.usage)}),
            _event({"type": "message_stop"}),
        ]


# ---------------------------------------------------------------------------------------------------------------
# Routes


ROUTES: list[Route] = [
    Route("POST", "/v1/messages", FAMILY, parse_create, render_message, render_error, stream=MessagesStream,
          name="anthropic.messages"),
    Route("POST", "/v1/messages/count_tokens", FAMILY, parse_count_tokens, render_count_tokens, render_error,
          name="anthropic.count_tokens"),
    Route("GET", "/v1/models", FAMILY, parse_list_models, render_models, render_error, body="none",
          name="anthropic.models", accepts=is_anthropic),
    Route("GET", "/v1/models/<path:model>", FAMILY, parse_show_model, render_model, render_error, body="none",
          name="anthropic.model", accepts=is_anthropic),
]
