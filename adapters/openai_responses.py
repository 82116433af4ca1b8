"""OpenAI's Responses API, the request side: `POST /v1/responses` into a chat `InternalRequest`, and the routes
that read and delete stored answers (shared/API-SPEC.md §1.11).

A Responses body is a chat in other clothes: `input` items become `Message`s (a run of `function_call` items is
one assistant turn, a `reasoning` item's summary that turn's `thinking`), flat function tools become `Tool`s,
`text.format` a `Constraint`. What the chat body has no word for goes on `req.response` (the id this answer is
kept under, the one it continues, whether to keep it), which the service's `Conversations` acts on, so this
module stays pure. Unknown fields are ignored, since the SDK and agent frameworks send extras; features we do
not have (hosted tools, `background`, `conversation`, stored `prompt`s) are a 400 naming the field, never
silently dropped.
"""

from __future__ import annotations

from typing import Any

from adapters.base import RequestContext, Route, expect_object, get_number, get_typed, object_items, type_name
from adapters.openai_responses_render import ResponsesStream, render_create, render_deleted, render_stored
from adapters.openai_shapes import apply_reasoning_effort, function_tool, named_tool, render_error
from gateway.types import (
    Constraint,
    ImagePart,
    InternalRequest,
    Message,
    ResponseThread,
    SamplingParams,
    Tool,
    ToolCall,
    ToolChoice,
    invalid,
)

FAMILY = "openai"  # the Responses API is OpenAI's: requests are recorded and counted under that family
ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}
TEXT_PARTS = ("input_text", "output_text", "text", "refusal")
TOOL_CHOICES = ("auto", "none", "required")
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512
LOGPROBS_INCLUDE = "message.output_text.logprobs"


def parse_create(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /v1/responses."""
    body = expect_object(body)
    _refuse_unsupported(body)
    model = get_typed(body, "model", str, "a string", required=True)
    previous = get_typed(body, "previous_response_id", str, "a string")
    instructions = get_typed(body, "instructions", str, "a string") or None
    messages = parse_input(body.get("input"), required=previous is None)
    if instructions:
        messages.insert(0, Message("system", instructions))
    tools = parse_tools(body.get("tools"))
    store = get_typed(body, "store", bool, "a boolean", default=True)
    truncation = _truncation(body)
    req = InternalRequest(
        kind="chat",
        model=model,
        messages=messages,
        sampling=_parse_sampling(body),
        tools=tools,
        tool_choice=parse_tool_choice(body.get("tool_choice"), tools),
        parallel_tool_calls=get_typed(body, "parallel_tool_calls", bool, "a boolean", default=True),
        constraint=parse_text_format(body.get("text")),
        stream=get_typed(body, "stream", bool, "a boolean", default=False),
        truncate="drop_turns" if truncation == "auto" else "error",
        response=ResponseThread(f"resp_{ctx.request_id}", previous, store, instructions=bool(instructions)),
    )
    reasoning = get_typed(body, "reasoning", dict, "an object", default={})
    apply_reasoning_effort(get_typed(reasoning, "effort", str, "a string", prefix="reasoning."), "reasoning.effort",
                           req)
    req.render["response"] = {
        "created_at": ctx.created, "instructions": instructions, "max_output_tokens": req.sampling.max_tokens,
        "model": model, "parallel_tool_calls": req.parallel_tool_calls, "previous_response_id": previous,
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")}, "store": store,
        "temperature": req.sampling.temperature, "text": _text_echo(body.get("text")),
        "tool_choice": body.get("tool_choice") or "auto", "tools": [_tool_echo(t) for t in tools],
        "top_logprobs": req.sampling.top_logprobs, "top_p": req.sampling.top_p, "truncation": truncation,
        "user": get_typed(body, "user", str, "a string"), "metadata": parse_metadata(body.get("metadata")),
    }
    return req


def parse_get(body: Any, ctx: RequestContext) -> InternalRequest:
    """GET /v1/responses/<id>."""
    return InternalRequest(kind="get_response", response=ResponseThread(ctx.path_params["response_id"]))


def parse_delete(body: Any, ctx: RequestContext) -> InternalRequest:
    """DELETE /v1/responses/<id>."""
    return InternalRequest(kind="delete_response", response=ResponseThread(ctx.path_params["response_id"]))


def _refuse_unsupported(body: dict[str, Any]) -> None:
    if body.get("background"):
        raise invalid("`background` is not supported: responses run while the request is open.", "background")
    if body.get("conversation") is not None:
        raise invalid("`conversation` is not supported: continue a conversation with `previous_response_id`.",
                      "conversation")
    if body.get("prompt") is not None:
        raise invalid("`prompt` is not supported: prompt templates are stored on OpenAI's servers; send "
                      "`instructions` and `input` instead.", "prompt")


def _parse_sampling(body: dict[str, Any]) -> SamplingParams:
    """`top_logprobs` (or `include: ["message.output_text.logprobs"]`) asks for token log-probabilities."""
    include = get_typed(body, "include", list, "an array of strings", default=[])
    top = get_number(body, "top_logprobs", 0, 20, integer=True)
    return SamplingParams(
        temperature=get_number(body, "temperature", 0, 2),
        top_p=get_number(body, "top_p", 0, 1),
        max_tokens=get_number(body, "max_output_tokens", 1, integer=True),
        logprobs=bool(top) or LOGPROBS_INCLUDE in include,
        top_logprobs=top or 0,
    )


def _truncation(body: dict[str, Any]) -> str:
    """"auto" drops the oldest turns of a conversation longer than the window; "disabled" refuses it."""
    value = get_typed(body, "truncation", str, "a string", default="disabled")
    if value not in ("auto", "disabled"):
        raise invalid(f"Invalid value for `truncation`: expected 'auto' or 'disabled', got {value!r}.", "truncation")
    return value


def parse_metadata(value: Any) -> dict[str, str]:
    """At most 16 string pairs, keys up to 64 characters and values up to 512, as OpenAI allows."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `metadata`: expected an object, got {type_name(value)}.", "metadata")
    if len(value) > METADATA_PAIRS:
        raise invalid(f"Invalid value for `metadata`: expected at most {METADATA_PAIRS} pairs, got {len(value)}.",
                      "metadata")
    for key, item in value.items():
        if len(key) > METADATA_KEY or not isinstance(item, str) or len(item) > METADATA_VALUE:
            raise invalid(f"Invalid value for `metadata.{key}`: expected a string of at most {METADATA_VALUE} "
                          f"characters under a key of at most {METADATA_KEY}.", f"metadata.{key}")
    return dict(value)


# ---------------------------------------------------------------------------------------------------------------
# Input items


def parse_input(value: Any, required: bool) -> list[Message]:
    """A string is one user message; a list holds items. Without `previous_response_id` there must be input."""
    if isinstance(value, str):
        return [Message("user", value)]
    if value is None or value == []:
        if required:
            raise invalid("Missing required parameter: `input` (a string or a non-empty array of items).", "input")
        return []
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `input`: expected a string or an array of items, got {type_name(value)}.",
                      "input")
    turns = _Turns()
    for i, item in enumerate(value):
        turns.add(item, f"input[{i}]")
    return turns.messages


class _Turns:
    """Items → messages: calls join the assistant turn before them, reasoning waits for the turn it belongs to."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.thinking: str | None = None  # a reasoning item's summary, for the next assistant turn

    def add(self, item: Any, name: str) -> None:
        if not isinstance(item, dict):
            raise invalid(f"Invalid type for `{name}`: expected an object, got {type_name(item)}.", name)
        prefix = name + "."
        kind = get_typed(item, "type", str, "a string", default="message", prefix=prefix)
        if kind == "message":
            self._message(item, prefix)
        elif kind == "function_call":
            call = ToolCall(get_typed(item, "call_id", str, "a string", required=True, prefix=prefix),
                            get_typed(item, "name", str, "a string", required=True, prefix=prefix),
                            get_typed(item, "arguments", str, "a JSON string", required=True, prefix=prefix))
            last = self.messages[-1] if self.messages else None
            if last is None or last.role != "assistant" or self.thinking:  # reasoning between: a turn of its own
                last = self._assistant(None)
            last.tool_calls.append(call)
        elif kind == "function_call_output":
            output, _ = _parse_content(item.get("output"), prefix + "output")
            self.messages.append(Message("tool", output, tool_call_id=get_typed(
                item, "call_id", str, "a string", required=True, prefix=prefix)))
        elif kind == "reasoning":
            summary = get_typed(item, "summary", list, "an array", default=[], prefix=prefix)
            texts = [get_typed(part if isinstance(part, dict) else {"text": part}, "text", str, "a string",
                               required=True, prefix=f"{prefix}summary[{j}].") for j, part in enumerate(summary)]
            self.thinking = "\n\n".join(t for t in texts if t) or None
        else:
            raise invalid(f"Invalid value for `{prefix}type`: {kind!r} items are not supported (expected message, "
                          "function_call, function_call_output or reasoning).", prefix + "type")

    def _message(self, item: dict[str, Any], prefix: str) -> None:
        role = get_typed(item, "role", str, "a string", required=True, prefix=prefix)
        if role not in ROLES:
            raise invalid(f"Invalid value for `{prefix}role`: expected one of {', '.join(ROLES)}, got {role!r}.",
                          prefix + "role")
        content, images = _parse_content(item.get("content"), prefix + "content")
        if ROLES[role] == "assistant":
            self._assistant(content)
        else:
            self.messages.append(Message(ROLES[role], content, images=images))

    def _assistant(self, content: str | None) -> Message:
        message = Message("assistant", content, thinking=self.thinking)
        self.thinking = None
        self.messages.append(message)
        return message


def _parse_content(value: Any, name: str) -> tuple[str, list[ImagePart]]:
    """A string, or parts: text parts are joined, `input_image` URLs kept apart as images."""
    if isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        got = "nothing" if value is None else type_name(value)
        raise invalid(f"Invalid type for `{name}`: expected a string or an array of content parts, got {got}.", name)
    texts, images = [], []
    for j, part in enumerate(value):
        where = f"{name}[{j}]"
        if not isinstance(part, dict):
            raise invalid(f"Invalid type for `{where}`: expected a content part object, got {type_name(part)}.",
                          where)
        kind = get_typed(part, "type", str, "a string", required=True, prefix=where + ".")
        if kind in TEXT_PARTS:
            texts.append(get_typed(part, "refusal" if kind == "refusal" else "text", str, "a string",
                                   required=True, prefix=where + "."))
        elif kind == "input_image" and isinstance(part.get("image_url"), str):
            images.append(ImagePart(part["image_url"]))
        else:
            raise invalid(f"Invalid value for `{where}.type`: {kind!r} parts are not supported here (expected "
                          "input_text, output_text or input_image with an image_url).", where + ".type")
    return "".join(texts), images


# ---------------------------------------------------------------------------------------------------------------
# Tools and output format


def parse_tools(value: Any) -> list[Tool]:
    """Flat function tools only: hosted tools (web_search, file_search, computer_use, mcp...) need OpenAI's
    servers, so they are refused by name."""
    tools = []
    for name, tool in object_items(value, "tools"):
        kind = get_typed(tool, "type", str, "a string", required=True, prefix=name + ".")
        if kind != "function":
            raise invalid(f"Invalid value for `{name}.type`: {kind!r} tools are not supported (only 'function').",
                          name + ".type")
        tools.append(function_tool(tool, name + "."))
    return tools


def _tool_echo(tool: Tool) -> dict[str, Any]:
    return {"type": "function", "name": tool.name, "description": tool.description or None,
            "parameters": tool.parameters, "strict": tool.strict}


def parse_tool_choice(value: Any, tools: list[Tool]) -> ToolChoice:
    if value is None:
        return "auto"
    if isinstance(value, str) and value in TOOL_CHOICES:
        return value
    if isinstance(value, dict) and value.get("type") == "function":
        return named_tool(value, tools, "tool_choice.")
    raise invalid("Invalid value for `tool_choice`: expected 'none', 'auto', 'required' or "
                  '{"type": "function", "name": ...}.', "tool_choice")


def parse_text_format(value: Any) -> Constraint | None:
    """`text.format`: text, json_object (any JSON object) or json_schema (its `schema`, flat beside `name`)."""
    text = _text_object(value)
    fmt = get_typed(text, "format", dict, "an object", prefix="text.")
    if fmt is None:
        return None
    kind = get_typed(fmt, "type", str, "a string", required=True, prefix="text.format.")
    if kind == "text":
        return None
    if kind == "json_object":
        return Constraint("json", param="text.format")
    if kind == "json_schema":
        schema = get_typed(fmt, "schema", dict, "an object", required=True, prefix="text.format.")
        return Constraint("json_schema", schema, "text.format.schema")
    raise invalid(f"Invalid value for `text.format.type`: expected 'text', 'json_object' or 'json_schema', "
                  f"got {kind!r}.", "text.format.type")


def _text_object(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `text`: expected an object, got {type_name(value)}.", "text")
    return value


def _text_echo(value: Any) -> dict[str, Any]:
    text = _text_object(value)
    return {"format": text.get("format") or {"type": "text"}, "verbosity": text.get("verbosity") or "medium"}


ROUTES: list[Route] = [
    Route("POST", "/v1/responses", FAMILY, parse_create, render_create, render_error, stream=ResponsesStream,
          name="openai.responses"),
    Route("GET", "/v1/responses/<response_id>", FAMILY, parse_get, render_stored, render_error, body="none",
          name="openai.responses.get"),
    Route("DELETE", "/v1/responses/<response_id>", FAMILY, parse_delete, render_deleted, render_error,
          body="none", name="openai.responses.delete"),
]
