"""Chat templates rendered exactly as Hugging Face Transformers renders them.

Model authors write and test their templates against Transformers' `apply_chat_template`, so matching its
environment (sandbox, trim/lstrip, loopcontrols, its `tojson`, `raise_exception`, `strftime_now`) and its
message dicts is what makes a model see the prompts it was trained on.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.types import ErrorKind, GatewayError, Message, Tool, ToolCall

DEFAULT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
"""ChatML, Transformers' historical default, for GGUF files that carry no template."""

_RENDER_ERRORS = (jinja2.TemplateError, TypeError, ValueError, LookupError, ArithmeticError, AttributeError)
"""What a template can raise on messages it does not accept; anything else is our bug and stays a 500."""


def tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    """Transformers' filter: Jinja's own `tojson` HTML-escapes and sorts keys, which changes the prompt."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def raise_exception(message: str) -> None:
    """Templates call this to refuse a conversation (e.g. roles that do not alternate)."""
    raise jinja2.TemplateError(message)


def strftime_now(fmt: str) -> str:
    """Templates that print today's date (Llama 3.x) call this."""
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


class ChatTemplate:
    """One model's compiled template; compile once per model, render per request."""

    def __init__(self, source: str, bos_token: str = "", eos_token: str = ""):
        try:
            self._template = _environment().from_string(source)
        except jinja2.TemplateSyntaxError as exc:
            raise ValueError(f"invalid chat template (line {exc.lineno}): {exc.message}") from exc
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token

    def render(
        self,
        messages: list[Message],
        tools: list[Tool] | None = None,
        add_generation_prompt: bool = True,
        **extra: Any,
    ) -> str:
        """Render the prompt text; a template that refuses the messages is the client's error, not ours."""
        context = {
            "bos_token": self.bos_token,
            "eos_token": self.eos_token,
            **extra,
            "messages": [message_dict(m) for m in messages],
            "tools": [tool_dict(t) for t in tools] if tools else None,
            "add_generation_prompt": add_generation_prompt,
        }
        try:
            return self._template.render(**context)
        except _RENDER_ERRORS as exc:
            where = self._first_refused(context)
            raise GatewayError(
                ErrorKind.INVALID_REQUEST,
                f"The chat template of this model rejected {where}: {exc}",
                param="messages" if where == "the messages" else where,
            ) from exc

    def _first_refused(self, context: dict[str, Any]) -> str:
        """Which message the template refuses: the first one whose conversation up to it fails to render (a
        template that only fails on the whole conversation is answered about the messages as a whole)."""
        messages = context["messages"]
        for end in range(1, len(messages)):
            try:
                self._template.render(**{**context, "messages": messages[:end], "add_generation_prompt": False})
            except _RENDER_ERRORS:
                return f"messages[{end - 1}]"
        return "the messages"


def message_dict(message: Message) -> dict[str, Any]:
    """The dict shape OpenAI-style templates index into; content is always a string."""
    out: dict[str, Any] = {"role": message.role, "content": message.content or ""}
    if message.tool_calls:
        out["tool_calls"] = [tool_call_dict(c) for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    if message.thinking:
        out["reasoning_content"] = message.thinking
    return out


def tool_call_dict(call: ToolCall) -> dict[str, Any]:
    """Arguments as an object, as Transformers expects; templates that print them use `tojson`."""
    try:
        arguments: Any = json.loads(call.arguments)
    except ValueError:
        arguments = call.arguments
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": arguments}}


def tool_dict(tool: Tool) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {"name": tool.name, "description": tool.description, "parameters": tool.parameters},
    }
