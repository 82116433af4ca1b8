"""OpenAI's wire shapes for the parts of a chat body: messages (with content parts and images), tool calls,
tools, tool_choice and response_format; and what OpenAI's two chat endpoints (chat completions and Responses)
share: the error body, reasoning effort and token logprobs.

They live apart from the OpenAI adapter because other families take the same shapes: vLLM's chat-form /tokenize
reads OpenAI messages and tools, and Ollama's messages carry OpenAI-shaped tool calls and tools. Each family
imports them from here rather than from another family's module, so no adapter depends on another. Messages name
the offending field with its full path (`messages[2].content[0].type`), as OpenAI does.
"""

from __future__ import annotations

from typing import Any

from adapters.base import compact_json, get_typed, object_items, type_name
from gateway.types import (
    Constraint,
    ErrorKind,
    GatewayError,
    ImagePart,
    InternalRequest,
    Message,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolChoice,
    invalid,
)

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant", "tool": "tool"}
TOOL_CHOICES = ("none", "auto", "required")


def parse_messages(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        got = "an empty array" if isinstance(value, list) else ("nothing" if value is None else type_name(value))
        raise invalid(f"Invalid value for `messages`: expected a non-empty array of messages, got {got}.", "messages")
    return [_parse_message(item, f"messages[{i}]") for i, item in enumerate(value)]


def _parse_message(item: Any, name: str) -> Message:
    if not isinstance(item, dict):
        raise invalid(f"Invalid type for `{name}`: expected an object, got {type_name(item)}.", name)
    prefix = name + "."
    role = get_typed(item, "role", str, "a string", required=True, prefix=prefix)
    if role not in ROLES:
        raise invalid(f"Invalid value for `{prefix}role`: expected one of {', '.join(ROLES)}, got {role!r}.",
                      prefix + "role")
    content, images = _parse_content(item.get("content"), prefix + "content")
    return Message(
        role=ROLES[role],
        content=content,
        images=images,
        tool_calls=parse_tool_calls(item.get("tool_calls"), prefix + "tool_calls"),
        tool_call_id=get_typed(item, "tool_call_id", str, "a string", prefix=prefix),
        name=get_typed(item, "name", str, "a string", prefix=prefix),
        thinking=get_typed(item, "reasoning_content", str, "a string", prefix=prefix)
        or get_typed(item, "reasoning", str, "a string", prefix=prefix),
    )


def _parse_content(value: Any, name: str) -> tuple[str | None, list[ImagePart]]:
    """Text parts are joined with no separator, as OpenAI does; images are kept apart for the service."""
    if value is None or isinstance(value, str):
        return value, []
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `{name}`: expected a string, an array of content parts or null, "
                      f"got {type_name(value)}.", name)
    texts: list[str] = []
    images: list[ImagePart] = []
    for j, part in enumerate(value):
        text, image = _parse_part(part, f"{name}[{j}]")
        if text is not None:
            texts.append(text)
        if image is not None:
            images.append(image)
    return "".join(texts), images


def _parse_part(part: Any, name: str) -> tuple[str | None, ImagePart | None]:
    if not isinstance(part, dict):
        raise invalid(f"Invalid type for `{name}`: expected a content part object, got {type_name(part)}.", name)
    prefix = name + "."
    kind = get_typed(part, "type", str, "a string", required=True, prefix=prefix)
    if kind == "text":
        return get_typed(part, "text", str, "a string", required=True, prefix=prefix), None
    if kind == "image_url":
        return None, ImagePart(_parse_image_url(part.get("image_url"), prefix + "image_url"))
    raise invalid(f"Invalid value for `{prefix}type`: expected 'text' or 'image_url', got {kind!r}.", prefix + "type")


def _parse_image_url(value: Any, name: str) -> str:
    """Some clients send the URL as a bare string instead of `{"url": ...}`; both are accepted."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, dict):
        return get_typed(value, "url", str, "a string", required=True, prefix=name + ".")
    raise invalid(f"Invalid value for `{name}`: expected an object with a `url`.", name)


def parse_tool_calls(value: Any, name: str) -> list[ToolCall]:
    return [_parse_tool_call(call, item) for item, call in object_items(value, name)]


def _parse_tool_call(call: dict[str, Any], name: str) -> ToolCall:
    """`arguments` stays a string internally; an object (what Ollama and some other clients send) is
    re-encoded."""
    function = get_typed(call, "function", dict, "an object", required=True, prefix=name + ".")
    prefix = name + ".function."
    arguments = get_typed(function, "arguments", (str, dict), "a JSON string", default="", prefix=prefix)
    if isinstance(arguments, dict):
        arguments = compact_json(arguments)
    return ToolCall(
        id=get_typed(call, "id", str, "a string", default="", prefix=name + "."),
        name=get_typed(function, "name", str, "a string", required=True, prefix=prefix),
        arguments=arguments,
    )


def parse_tools(value: Any) -> list[Tool]:
    return [_parse_tool(tool, name) for name, tool in object_items(value, "tools")]


def _parse_tool(tool: dict[str, Any], name: str) -> Tool:
    kind = get_typed(tool, "type", str, "a string", default="function", prefix=name + ".")
    if kind != "function":
        raise invalid(f"Invalid value for `{name}.type`: expected 'function', got {kind!r}.", name + ".type")
    function = get_typed(tool, "function", dict, "an object", required=True, prefix=name + ".")
    return function_tool(function, name + ".function.")


def function_tool(spec: dict[str, Any], prefix: str) -> Tool:
    """A function's name, description, parameters and strict flag: nested under `function` in chat bodies, flat
    in the Responses API's tools, the same fields either way."""
    return Tool(
        name=get_typed(spec, "name", str, "a string", required=True, prefix=prefix),
        description=get_typed(spec, "description", str, "a string", default="", prefix=prefix),
        parameters=get_typed(spec, "parameters", dict, "an object", default={}, prefix=prefix),
        strict=get_typed(spec, "strict", bool, "a boolean", default=False, prefix=prefix),
    )


def parse_tool_choice(value: Any, tools: list[Tool]) -> ToolChoice:
    """A named function must be one of `tools`: forcing a call to a function the model was never shown would
    fail later with a far less helpful message."""
    if value is None:
        return "auto"
    if isinstance(value, str) and value in TOOL_CHOICES:
        return value
    if isinstance(value, dict) and value.get("type", "function") == "function":
        function = get_typed(value, "function", dict, "an object", required=True, prefix="tool_choice.")
        return named_tool(function, tools, "tool_choice.function.")
    raise invalid("Invalid value for `tool_choice`: expected 'none', 'auto', 'required' or "
                  '{"type": "function", "function": {"name": ...}}.', "tool_choice")


def named_tool(spec: dict[str, Any], tools: list[Tool], prefix: str) -> str:
    """The function a `tool_choice` object names, which must be one of `tools`."""
    fname = get_typed(spec, "name", str, "a string", required=True, prefix=prefix)
    if fname not in {tool.name for tool in tools}:
        raise invalid(f"Invalid value for `{prefix}name`: {fname!r} is not one of `tools`.", prefix + "name")
    return fname


def parse_response_format(value: Any) -> Constraint | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `response_format`: expected an object, got {type_name(value)}.",
                      "response_format")
    kind = get_typed(value, "type", str, "a string", required=True, prefix="response_format.")
    if kind == "text":
        return None
    if kind == "json_object":  # huggingface_hub rewrites json_schema to TGI's {"type": "json_object", "value"}
        schema = get_typed(value, "value", dict, "an object", prefix="response_format.")
        return Constraint("json_schema", schema, "response_format.value") if schema else Constraint(
            "json", param="response_format")
    if kind == "json_schema":
        return _parse_json_schema(value)
    raise invalid("Invalid value for `response_format.type`: expected 'text', 'json_object' or 'json_schema', "
                  f"got {kind!r}.", "response_format.type")


def _parse_json_schema(value: dict[str, Any]) -> Constraint:
    """A json_schema without `schema` still asks for JSON, so it degrades to any JSON object."""
    spec = get_typed(value, "json_schema", dict, "an object", required=True, prefix="response_format.")
    schema = get_typed(spec, "schema", dict, "an object", prefix="response_format.json_schema.")
    if schema is None:
        return Constraint("json", param="response_format")
    return Constraint("json_schema", schema, "response_format.json_schema.schema")


# ---------------------------------------------------------------------------------------------------------------
# What the chat completions and Responses endpoints share: OpenAI's error body, reasoning effort, token logprobs


REASONING_EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh")

ERRORS: dict[ErrorKind, tuple[int, str]] = {
    ErrorKind.INVALID_REQUEST: (400, "invalid_request_error"),
    ErrorKind.NOT_FOUND: (404, "invalid_request_error"),
    ErrorKind.CONTEXT_OVERFLOW: (400, "invalid_request_error"),
    ErrorKind.UNAUTHORIZED: (401, "authentication_error"),
    ErrorKind.FORBIDDEN: (403, "permission_error"),
    ErrorKind.TOO_LARGE: (413, "invalid_request_error"),
    ErrorKind.OVERLOADED: (429, "rate_limit_error"),
    ErrorKind.RATE_LIMITED: (429, "rate_limit_error"),
    ErrorKind.UNAVAILABLE: (503, "server_error"),
    ErrorKind.TIMEOUT: (504, "server_error"),
    ErrorKind.INTERNAL: (500, "server_error"),
}
DEFAULT_CODES: dict[ErrorKind, str] = {
    ErrorKind.NOT_FOUND: "model_not_found",
    ErrorKind.CONTEXT_OVERFLOW: "context_length_exceeded",
    ErrorKind.TIMEOUT: "request_timeout",
}


def apply_reasoning_effort(effort: str | None, param: str, req: InternalRequest) -> None:
    """`none` turns reasoning off; a level turns it on and reaches the template as `reasoning_effort` (as
    gpt-oss templates read it). Models that cannot reason ignore it, as OpenAI's non-reasoning models do.
    Chat reads it from `reasoning_effort`, the Responses API from `reasoning.effort`."""
    if effort is None:
        return
    if effort not in REASONING_EFFORTS:
        raise invalid(f"Invalid value for `{param}`: expected one of {', '.join(map(repr, REASONING_EFFORTS))}"
                      f", got {effort!r}.", param)
    req.think = effort != "none"
    if req.think:
        req.template_kwargs.setdefault("reasoning_effort", effort)


def render_chat_logprobs(logprobs: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if logprobs is None:
        return None
    return {"content": [_chat_token(lp) for lp in logprobs], "refusal": None}


def _chat_token(lp: TokenLogprob) -> dict[str, Any]:
    return {
        "token": lp.token,
        "logprob": lp.logprob,
        "bytes": lp.bytes,
        "top_logprobs": [{"token": tok, "logprob": val, "bytes": raw} for tok, val, raw, _ in lp.top],
    }


def render_error(err: GatewayError) -> tuple[int, dict[str, Any]]:
    status, kind = ERRORS.get(err.kind, (500, "server_error"))
    code = err.code or DEFAULT_CODES.get(err.kind)
    message = overflow_message(err) if err.kind is ErrorKind.CONTEXT_OVERFLOW else err.message
    return status, {"error": {"message": message, "type": kind, "param": err.param, "code": code}}


def overflow_message(err: GatewayError) -> str:
    """OpenAI's wording for a prompt (and max_tokens) over the context, from the error's facts."""
    limit, prompt, output = (err.details.get(k) for k in ("limit", "prompt_tokens", "max_tokens"))
    if limit is None or prompt is None:
        return err.message
    if output is None:
        return (f"This model's maximum context length is {limit} tokens. However, your prompt has {prompt} "
                "tokens. Please reduce the length of the prompt.")
    return (f"This model's maximum context length is {limit} tokens. However, you requested {prompt + output} "
            f"tokens ({prompt} in the prompt, {output} for the completion). Please reduce the length of the "
            "prompt or the maximum number of tokens.")
