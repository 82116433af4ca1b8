"""Tool calls, structured output and reasoning for a local model: what its prompt, grammar and output stage get.

A request's tools and constraint meet the model's `ChatFormat` here, once per request and before any token is
decoded, so the three always agree: the prompt shows tools the way the model's template (or the generic prompt)
does, the grammar forces exactly the text the output stage parses back into calls, and a JSON schema binds only
the answer after the model's reasoning.

- `tool_choice` none: no tools in the prompt. auto: the grammar waits (lazily) for the format's call marker,
  so free text stays free. required / a named tool: the whole answer must be calls to allowed tools, with
  arguments that match each tool's schema.
- Messages are normalised first: system messages merged at the top, tool-call ids filled in (in the form the
  template needs), and for templates that know no tools, calls and results written as text turns.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import re
import string
from dataclasses import dataclass, replace

from gateway.chat_formats import GENERIC_TOOL_PROMPT, ChatFormat, ReasoningMarkers, chat_format, reasoning_markers
from gateway.engine.grammar import GrammarBuilder, constraint_grammar
from gateway.output import OutputPlan
from gateway.types import Constraint, GatewayError, InternalRequest, Message, Tool, ToolCall, invalid

log = logging.getLogger("gateway.backends")

_ID_CHARS = string.ascii_letters + string.digits
_REGEX_SPECIALS = re.compile(r"([\\^$.|?*+()\[\]{}])")


@dataclass(frozen=True)
class ModelStyle:
    """How one model writes calls and reasoning, chosen once when it loads."""

    chat: ChatFormat
    reasoning: ReasoningMarkers | None

    @classmethod
    def of(cls, template: str, configured: str | None = None) -> ModelStyle:
        return cls(chat_format(template, configured), reasoning_markers(template))


@dataclass
class OutputSetup:
    """The engine's grammar (None: free text) with its lazy triggers, and the output stage's plan."""

    grammar: str | None
    triggers: tuple[str, ...]
    plan: OutputPlan
    in_reasoning: bool = False  # the prompt ended inside an opened reasoning block


# -- the prompt side ---------------------------------------------------------------------------------------------


def shape_chat(req: InternalRequest, style: ModelStyle) -> InternalRequest:
    """The request as the template should see it: normalised messages, tools where the template takes them,
    and the reasoning switch."""
    fmt = style.chat
    offer = req.tools if req.tool_choice != "none" else []
    messages = with_call_ids(_merge_system(req.messages), fmt.id_length)
    if not fmt.native_tools:
        messages = _tools_as_text(messages, fmt)
        if offer:
            messages = _prepend_system(messages, GENERIC_TOOL_PROMPT.format(tools=_describe(offer)))
    kwargs = dict(req.template_kwargs)
    if req.think is not None and style.reasoning is not None:
        kwargs.setdefault("enable_thinking", req.think)
    return replace(req, messages=messages, tools=offer, tools_in_template=fmt.native_tools, template_kwargs=kwargs)


def _merge_system(messages: list[Message]) -> list[Message]:
    """Every system message joins the first one: most templates only place a system message at the top (some
    raise on one anywhere else)."""
    system = [m for m in messages if m.role == "system"]
    if len(system) < 2 and (not system or messages[0].role == "system"):
        return messages
    merged = Message("system", "\n\n".join(m.content or "" for m in system if m.content))
    return [merged, *(m for m in messages if m.role != "system")]


def _prepend_system(messages: list[Message], text: str) -> list[Message]:
    if messages and messages[0].role == "system":
        first = messages[0]
        return [replace(first, content=f"{first.content}\n\n{text}" if first.content else text), *messages[1:]]
    return [Message("system", text), *messages]


def with_call_ids(messages: list[Message], id_length: int | None) -> list[Message]:
    """Calls without ids get one, results without a `tool_call_id` answer the oldest open call, and ids take
    the form the template requires (Mistral's: exactly 9 letters and digits, derived so a call and its result
    keep matching)."""
    out, open_calls = [], []
    for number, message in enumerate(messages):
        if message.tool_calls:
            calls = [replace(c, id=_fit_id(c.id or f"call_{number}_{i}", id_length))
                     for i, c in enumerate(message.tool_calls)]
            open_calls = [c for c in calls]
            message = replace(message, tool_calls=calls)
        elif message.role == "tool":
            answered = _fit_id(message.tool_call_id, id_length) if message.tool_call_id else None
            match = next((c for c in open_calls if c.id == answered or answered is None), None)
            if match is not None:
                open_calls.remove(match)
                message = replace(message, tool_call_id=match.id, name=message.name or match.name)
            elif answered is not None:
                message = replace(message, tool_call_id=answered)
        out.append(message)
    return out


def _fit_id(call_id: str, length: int | None) -> str:
    if length is None or (len(call_id) == length and call_id.isalnum()):
        return call_id
    digest = hashlib.sha256(call_id.encode()).digest()
    return "".join(_ID_CHARS[b % len(_ID_CHARS)] for b in digest[:length])


def _tools_as_text(messages: list[Message], fmt: ChatFormat) -> list[Message]:
    """For templates without tool support: calls become the assistant's text in the format the model is asked
    to write, results become user turns, and turns of one role in a row merge (templates that require
    alternating roles raise otherwise)."""
    out: list[Message] = []
    for message in messages:
        if message.tool_calls:
            calls = "\n".join(_call_text(c, fmt) for c in message.tool_calls)
            text = f"{message.content}\n{calls}" if message.content else calls
            message = Message("assistant", text, images=message.images)
        elif message.role == "tool":
            message = Message("user", f"<tool_response>\n{message.content or ''}\n</tool_response>")
        if out and out[-1].role == message.role and message.role != "system":
            last = out[-1]
            out[-1] = replace(last, content=f"{last.content or ''}\n{message.content or ''}",
                              images=[*last.images, *message.images])
        else:
            out.append(message)
    return out


def _call_text(call: ToolCall, fmt: ChatFormat) -> str:
    try:
        arguments = json.loads(call.arguments)
    except ValueError:
        arguments = {}
    body = json.dumps({"name": call.name, fmt.arguments_key: arguments}, ensure_ascii=False)
    return f"{fmt.call_open}\n{body}\n{fmt.call_close}"


def _describe(tools: list[Tool]) -> str:
    return "\n".join(json.dumps({"name": t.name, "description": t.description, "parameters": t.parameters},
                                ensure_ascii=False) for t in tools)


# -- the output side ---------------------------------------------------------------------------------------------


def output_setup(req: InternalRequest, style: ModelStyle, prompt_text: str) -> OutputSetup:
    """The grammar and output plan of a chat whose rendered prompt is `prompt_text` (completions: no tools, no
    reasoning split, the constraint alone)."""
    if req.kind != "chat":
        grammar = constraint_grammar(req.constraint) if req.constraint is not None else None
        return OutputSetup(grammar, (), OutputPlan())
    markers = style.reasoning
    split = markers is not None and not req.keep_think_tags
    in_reasoning = markers is not None and _opens_reasoning(prompt_text, markers)
    may_reason = markers is not None and req.think is not False and (in_reasoning or not _closed(prompt_text,
                                                                                                   markers))
    tools = req.tools if req.tool_choice != "none" else []
    plan = OutputPlan(markers if split else None, in_reasoning and split, style.chat if tools else None,
                      frozenset(t.name for t in tools))
    reasoning = markers if may_reason else None
    grammar, triggers = _grammar(req, style, tools, reasoning, in_reasoning)
    return OutputSetup(grammar, triggers, plan, in_reasoning)


def _grammar(req: InternalRequest, style: ModelStyle, tools: list[Tool], reasoning: ReasoningMarkers | None,
             in_reasoning: bool) -> tuple[str | None, tuple[str, ...]]:
    if tools and req.tool_choice != "auto":
        chosen = [t for t in tools if req.tool_choice == "required" or t.name == req.tool_choice]
        return _calls_grammar(_tools_key(chosen), style.chat, req.parallel_tool_calls, reasoning, in_reasoning), ()
    if tools:
        if req.constraint is not None:
            raise invalid("Tools with tool_choice `auto` and an output format together are "
                          "not supported: use tool_choice `required` or drop the format.",
                          req.constraint.param)
        # lazy: applied from the call marker on, which is the grammar's first text
        grammar = _calls_grammar(_tools_key(tools), style.chat, req.parallel_tool_calls, None, False)
        return grammar, (_regex_literal(style.chat.call_open),)
    if req.constraint is None:
        return None, ()
    if reasoning is None or req.constraint.kind == "gbnf":  # a raw grammar covers the whole output
        return constraint_grammar(req.constraint), ()
    builder = GrammarBuilder()
    answer = _constraint_rule(builder, req.constraint)
    return builder.grammar(_after_reasoning(builder, reasoning, in_reasoning, answer)), ()


def _opens_reasoning(prompt: str, markers: ReasoningMarkers) -> bool:
    """The template itself opened reasoning: the prompt ends with the open marker (DeepSeek-R1, some Qwen)."""
    return prompt.rstrip().endswith(markers.open)


def _closed(prompt: str, markers: ReasoningMarkers) -> bool:
    """The template closed reasoning before the answer (Qwen3 with enable_thinking off renders an empty block)."""
    return prompt.rstrip().endswith(markers.close)


def _tools_key(tools: list[Tool]) -> str:
    """What of the tools shapes their grammar, as a cache key: agents send the same tools with every request."""
    return json.dumps([[t.name, t.parameters] for t in tools], ensure_ascii=False)


@functools.lru_cache(maxsize=128)
def _calls_grammar(tools_key: str, fmt: ChatFormat, parallel: bool, reasoning: ReasoningMarkers | None,
                   in_reasoning: bool) -> str:
    tools = [Tool(name, parameters=parameters) for name, parameters in json.loads(tools_key)]
    builder = GrammarBuilder()
    calls = _calls_rule(builder, tools, fmt, parallel)
    return builder.grammar(_after_reasoning(builder, reasoning, in_reasoning, calls) if reasoning else calls)


def _calls_rule(builder: GrammarBuilder, tools: list[Tool], fmt: ChatFormat, parallel: bool) -> str:
    """One call, or several when parallel calls are allowed, each written exactly as `fmt` writes it: the
    output stage reads them back with the same markers."""
    alternatives = []
    for i, tool in enumerate(tools):
        args = _arguments_rule(builder, tool, i)
        head = builder.literal(f'{{"name": {json.dumps(tool.name, ensure_ascii=False)}, '
                               f'"{fmt.arguments_key}": ')
        alternatives.append(f"{head} {args} {builder.literal('}')}")
    call = builder.rule("call", " | ".join(f"( {a} )" for a in alternatives))
    if fmt.calls_as_list:
        items = f'{call} ( {builder.literal(", ")} {call} )*' if parallel else call
        return builder.rule("calls", f'{builder.literal(fmt.call_open + "[")} {items} {builder.literal("]")}')
    if fmt.call_open.startswith("{"):  # bare JSON calls (Llama 3), one per line
        one = call
    else:
        one = builder.rule("tagged-call", f'{builder.literal(fmt.call_open + chr(10))} {call} '
                                          f'{builder.literal(chr(10) + fmt.call_close)}')
    if not parallel:
        return one
    more = f'( {builder.literal(chr(10))} {one} )'
    # Small models given the generic prompt repeat a call until max_tokens cuts it: one call per tool at most.
    more += f"{{0,{len(tools) - 1}}}" if not fmt.native_tools else "*"
    return builder.rule("calls", f"{one} {more}")


def _arguments_rule(builder: GrammarBuilder, tool: Tool, index: int) -> str:
    """The tool's schema as a grammar; one we cannot express falls back to any JSON object (logged), because
    refusing an agent's whole request over one exotic schema among its tools helps no one."""
    schema = tool.parameters or {"type": "object"}
    try:
        return builder.schema(schema, f"args-{index}", f"tools[{index}].parameters")
    except GatewayError as err:
        log.warning("tool %r: arguments are only held to be a JSON object: %s", tool.name, err.message)
        return builder.json_object()


def _constraint_rule(builder: GrammarBuilder, constraint: Constraint) -> str:
    if constraint.kind == "json":
        return builder.json_object()
    if constraint.kind == "json_schema":
        return builder.schema(constraint.value, "answer", constraint.param)
    if constraint.kind == "choice":
        return builder.rule("answer", " | ".join(builder.literal(c) for c in constraint.value))
    return builder.regex(constraint.value, "answer", constraint.param)


def _after_reasoning(builder: GrammarBuilder, markers: ReasoningMarkers, in_reasoning: bool, answer: str) -> str:
    """Reasoning stays free text; the answer's grammar starts after the close marker. The reasoning block is
    optional unless the prompt already opened it."""
    body = _text_without(builder, markers.close)
    close = builder.literal(markers.close)
    space = builder.rule("reasoning-space", '[ \\t\\n]{0,4}')
    if in_reasoning:
        return builder.rule("root-reasoned", f"{body} {close} {space} {answer}")
    block = f"{builder.literal(markers.open)} {body} {close} {space}"
    return builder.rule("root-reasoned", f"( {block} )? {answer}")


def _text_without(builder: GrammarBuilder, marker: str) -> str:
    """Any text in which `marker` does not occur: one rule per matched prefix of the marker, as in a
    string-search automaton (a mismatch falls back to the longest prefix still matched)."""
    def fallback(matched: str) -> int:
        for size in range(len(matched), 0, -1):
            if marker.startswith(matched[-size:]):
                return size
        return 0

    names = [builder.reserve(f"free-{i}") for i in range(len(marker))]
    for state in range(len(marker)):
        moves = {}
        for char in set(marker):
            moves.setdefault(fallback(marker[:state] + char), []).append(char)
        moves.pop(len(marker), None)  # completing the marker is not allowed inside the text
        others = "".join(_class_char(c) for c in sorted(set(marker)))
        alternatives = [f"[^{others}] {names[0]}"] if state < len(marker) else []
        for target, chars in sorted(moves.items()):
            alternatives.append(f"[{''.join(_class_char(c) for c in sorted(chars))}] {names[target]}")
        builder.define(names[state], "( " + " | ".join(alternatives) + " )?")
    return names[0]


def _class_char(char: str) -> str:
    return "\\" + char if char in "]\\^-[" else char


def _regex_literal(text: str) -> str:
    """A marker as an ECMAScript regex (llama.cpp's trigger patterns)."""
    return _REGEX_SPECIALS.sub(r"\\\1", text)
