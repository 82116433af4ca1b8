"""The output stage: a choice's generated text split into answer text, reasoning and tool calls.

Family-blind and engine-blind: it reads the markers of the model's `ChatFormat` and yields the `TextDelta`,
`ThinkingDelta` and `ToolCallDelta` events every renderer already knows. Text is released as soon as it cannot
be the start of a marker, so a `</think>` or `<tool_call>` cut across tokens is never shown half. Streamed and
non-streamed responses run through the same object, so they agree.

What users report broken elsewhere is handled here: reasoning the template opened itself, a call whose JSON does
not parse (returned as text, never an error), several calls in one answer (split into separate calls), and a
call written as bare JSON (or in a fenced block) under `auto`, promoted to a real call when it names a tool.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass, field

from gateway.chat_formats import ChatFormat, ReasoningMarkers
from gateway.markers import partial_marker_len
from gateway.types import (
    Choice,
    ChoiceDone,
    OutputEvent,
    TextDelta,
    ThinkingDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
)

_ID_ALPHABET = string.ascii_letters + string.digits
_CALL_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(arguments|parameters)"\s*:\s*')
_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class OutputPlan:
    """What to look for in one request's output. An empty plan passes text through untouched."""

    reasoning: ReasoningMarkers | None = None  # split reasoning out on these markers
    in_reasoning: bool = False  # the prompt ended inside an opened reasoning block
    calls: ChatFormat | None = None  # parse tool calls written this way
    tools: frozenset[str] = frozenset()  # the names a call may use; other "calls" stay text

    @property
    def active(self) -> bool:
        return self.reasoning is not None or self.calls is not None


@dataclass
class _Call:
    """A tagged call being read: its text so far, and how much of its arguments has gone out."""

    text: str = ""
    index: int = 0
    started: bool = False  # the first fragment (id and name) has gone out
    args_from: int = 0  # where the arguments start in `text`
    sent: int = 0  # arguments sent: text[args_from:args_from + sent]
    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    complete: bool = False  # the arguments' closing brace was seen


@dataclass
class ChoiceOutput:
    """One choice's output stage: `feed` each piece of text, `close` at the end; both return events."""

    plan: OutputPlan
    index: int
    calls_made: int = 0
    reasoning_tokens: int = 0  # pieces fed while reading reasoning (its markers included)
    _buffer: str = ""
    _mode: str = "content"  # content | reasoning | call | held (bare JSON that may be a call)
    _content_started: bool = False
    _skip_space: bool = False  # drop whitespace right after reasoning or a call
    _thinking_started: bool = False
    _call: _Call | None = None
    _logprobs: list[TokenLogprob] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.plan.reasoning is not None and self.plan.in_reasoning:
            self._mode = "reasoning"

    def feed(self, text: str, logprobs: list[TokenLogprob] | None = None) -> list[OutputEvent]:
        if not self.plan.active:
            return [TextDelta(self.index, text, logprobs)] if text or logprobs else []
        if logprobs:
            self._logprobs += logprobs
        self._buffer += text
        was_reasoning = self._mode == "reasoning"
        events = self._drain(final=False)
        if was_reasoning or self._mode == "reasoning":  # a piece is one token: what `reasoning_tokens` counts
            self.reasoning_tokens += 1
        return events

    def feed_split(self, text: str, thinking: str, calls: list[ToolCallDelta],
                   logprobs: list[TokenLogprob] | None = None) -> list[OutputEvent]:
        """Output the engine split itself (an upstream server): passed through in the order a model writes it
        (reasoning, answer, calls), counted as `feed` counts, and every call given an id."""
        events: list[OutputEvent] = []
        if thinking:
            self.reasoning_tokens += 1
            events.append(ThinkingDelta(self.index, thinking))
        if text or logprobs:
            events.append(TextDelta(self.index, text, logprobs))
        for call in calls:
            if call.name is not None and not call.id:
                call = ToolCallDelta(self.index, call.call_index, new_call_id(), call.name, call.arguments)
            self.calls_made = max(self.calls_made, call.call_index + 1)
            events.append(call)
        return events

    def close(self) -> list[OutputEvent]:
        if not self.plan.active:
            return []
        events = self._drain(final=True)
        if self._logprobs:
            events.append(TextDelta(self.index, "", self._take_logprobs()))
        return events

    # -- the state machine -----------------------------------------------------------------------------------

    def _drain(self, final: bool) -> list[OutputEvent]:
        out: list[OutputEvent] = []
        while True:
            before = (self._mode, len(self._buffer))
            if self._mode == "reasoning":
                self._reasoning(out, final)
            elif self._mode == "call":
                self._in_call(out, final)
            elif self._mode == "held":
                self._held(out, final)
            else:
                self._content(out, final)
            if (self._mode, len(self._buffer)) == before:
                return out

    def _reasoning(self, out: list[OutputEvent], final: bool) -> None:
        """Reasoning without the blank lines models put inside the tags: leading space is dropped, trailing
        space is held until more reasoning follows, so an empty block gives no reasoning at all."""
        close = self.plan.reasoning.close
        if not self._thinking_started:
            self._buffer = self._buffer.lstrip()
        end = self._buffer.find(close)
        if end >= 0:
            self._thinking(out, self._buffer[:end].rstrip())
            self._buffer = self._buffer[end + len(close):]
            self._mode, self._skip_space = "content", True
            return
        keep = 0
        if not final:
            keep = partial_marker_len(self._buffer, (close,))
            head = self._buffer[:len(self._buffer) - keep]
            keep += len(head) - len(head.rstrip())
        self._thinking(out, self._buffer[:len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep:]

    def _content(self, out: list[OutputEvent], final: bool) -> None:
        if self._skip_space:
            self._buffer = self._buffer.lstrip()
            if not self._buffer:
                return
            self._skip_space = False
        markers = self._markers()
        found = min(((self._buffer.find(m), m) for m in markers if m in self._buffer), default=None)
        if found is not None:
            at, marker = found
            reasoning = self.plan.reasoning is not None and marker == self.plan.reasoning.open
            if reasoning and self._buffer[:at].strip():  # reasoning comes first or not at all
                at += len(marker)
                self._text(out, self._buffer[:at])
                self._buffer = self._buffer[at:]
                return
            self._text(out, "" if reasoning else self._buffer[:at])  # space before reasoning is dropped
            self._buffer = self._buffer[at + len(marker):]
            if reasoning:
                self._mode = "reasoning"
            else:
                self._mode, self._call = "call", _Call(index=self.calls_made)
            return
        if self._may_hold():
            self._mode = "held"
            return
        keep = 0 if final else partial_marker_len(self._buffer, markers)
        if not final and markers and not self._content_started and not self._buffer[:-keep or None].strip():
            keep = len(self._buffer)  # leading space: reasoning or a call may still follow it
        self._text(out, self._buffer[:len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep:]

    def _markers(self) -> tuple[str, ...]:
        markers = []
        if self.plan.reasoning is not None and not self._content_started and not self.calls_made:
            markers.append(self.plan.reasoning.open)
        fmt = self.plan.calls
        if fmt is not None and not fmt.call_open.startswith("{"):
            markers.append(fmt.call_open)
        return tuple(markers)

    def _may_hold(self) -> bool:
        """Under tools, an answer that starts with `{`, `[` or a fence may be calls written as JSON: it is held
        to the end and then either promoted to calls or released as text."""
        if not self.plan.tools or self._content_started or self.calls_made:
            return False
        head = self._buffer.lstrip()
        if any(marker.startswith(head) for marker in self._markers()):  # may still become a marker
            return False
        return head.startswith(("{", "[", "```"))

    def _held(self, out: list[OutputEvent], final: bool) -> None:
        if not final:
            return
        text, self._buffer = self._buffer, ""
        calls = _json_calls(text, self.plan.tools, self.plan.calls)
        if calls is None:
            self._text(out, text)
            return
        for name, arguments in calls:
            self._whole_call(out, name, arguments)

    def _in_call(self, out: list[OutputEvent], final: bool) -> None:
        fmt, call = self.plan.calls, self._call
        if fmt.calls_as_list:  # the rest of the output is one JSON array of calls
            if final:
                text, self._buffer = self._buffer, ""
                self._finish_call(out, text, fmt.call_open, "")
            return
        end = self._buffer.find(fmt.call_close) if fmt.call_close else -1
        if end >= 0:
            call.text += self._buffer[:end]
            self._buffer = self._buffer[end + len(fmt.call_close):]
            self._finish_call(out, call.text, fmt.call_open, fmt.call_close)
            return
        keep = 0 if final else partial_marker_len(self._buffer, (fmt.call_close,))
        call.text += self._buffer[:len(self._buffer) - keep]
        self._buffer = self._buffer[len(self._buffer) - keep:]
        self._stream_call(out, call)
        if final:
            self._finish_call(out, call.text, fmt.call_open, "")

    def _stream_call(self, out: list[OutputEvent], call: _Call) -> None:
        """Send the call's name as soon as it is known, then its arguments as they come."""
        if not call.started:
            head = _CALL_HEAD.match(call.text)
            if head is None or not call.text[head.end():].startswith("{"):
                return
            name = _json_string(head.group(1))
            if name not in self.plan.tools:
                return
            call.started, call.args_from = True, head.end()
            out.append(ToolCallDelta(self.index, call.index, new_call_id(), name, ""))
        if call.complete:
            return
        fresh = call.text[call.args_from + call.sent:]
        taken = _scan_json(call, fresh)
        if taken:
            out.append(ToolCallDelta(self.index, call.index, arguments=fresh[:taken]))
            call.sent += taken

    def _finish_call(self, out: list[OutputEvent], text: str, open_marker: str, close_marker: str) -> None:
        call = self._call
        if call is not None and call.started:
            self._stream_call(out, call)
            self.calls_made += 1
        else:
            calls = _json_calls(text, self.plan.tools, self.plan.calls)
            if calls is None:  # not a call after all: the model's text, markers included
                self._text(out, open_marker + text + close_marker)
            else:
                for name, arguments in calls:
                    self._whole_call(out, name, arguments)
        self._call = None
        self._mode, self._skip_space = "content", True

    def _whole_call(self, out: list[OutputEvent], name: str, arguments: str) -> None:
        out.append(ToolCallDelta(self.index, self.calls_made, new_call_id(), name, ""))
        out.append(ToolCallDelta(self.index, self.calls_made, arguments=arguments))
        self.calls_made += 1

    def _text(self, out: list[OutputEvent], text: str) -> None:
        if not text:
            return
        if text.strip():
            self._content_started = True
        out.append(TextDelta(self.index, text, self._take_logprobs()))

    def _thinking(self, out: list[OutputEvent], text: str) -> None:
        if text:
            self._thinking_started = True
            out.append(ThinkingDelta(self.index, text))

    def _take_logprobs(self) -> list[TokenLogprob] | None:
        taken, self._logprobs = self._logprobs, []
        return taken or None


def _scan_json(call: _Call, text: str) -> int:
    """How much of `text` still belongs to the call's arguments object (a JSON object: depth counted outside
    strings); marks the call complete when its closing brace is read."""
    for i, char in enumerate(text):
        if call.in_string:
            if call.escaped:
                call.escaped = False
            elif char == "\\":
                call.escaped = True
            elif char == '"':
                call.in_string = False
        elif char == '"':
            call.in_string = True
        elif char in "{[":
            call.depth += 1
        elif char in "}]":
            call.depth -= 1
            if call.depth == 0:
                call.complete = True
                return i + 1
    return len(text)


def _json_string(raw: str) -> str:
    try:
        return json.loads(f'"{raw}"')
    except ValueError:
        return raw


def _json_calls(text: str, tools: frozenset[str], fmt: ChatFormat | None) -> list[tuple[str, str]] | None:
    """Calls written as JSON: one object, a list of them, or objects one per line, each `{"name": ...,
    "arguments" (or "parameters"): {...}}` naming a known tool; None when the text is anything else."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1)
    try:
        values = [json.loads(body)]
    except ValueError:
        try:
            values = [json.loads(line) for line in body.splitlines() if line.strip()]
        except ValueError:
            return None
    items = values[0] if len(values) == 1 and isinstance(values[0], list) else values
    keys = ("arguments", "parameters") if fmt is None else (fmt.arguments_key, "arguments", "parameters")
    calls = []
    for item in items:
        if not isinstance(item, dict) or item.get("name") not in tools:
            return None
        arguments = next((item[k] for k in keys if k in item), {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                return None
        if not isinstance(arguments, dict):
            return None
        calls.append((item["name"], json.dumps(arguments, ensure_ascii=False)))
    return calls or None


def gather(choice: Choice, event: TextDelta | ThinkingDelta | ToolCallDelta | ChoiceDone) -> None:
    """Add one of a choice's events to it: how a non-streamed answer is built from the same events a stream
    sends, so both agree. A call's first fragment opens it; later fragments add arguments."""
    if isinstance(event, TextDelta):
        choice.text += event.text
        if event.logprobs is not None:
            choice.logprobs = (choice.logprobs or []) + event.logprobs
    elif isinstance(event, ThinkingDelta):
        choice.thinking += event.text
    elif isinstance(event, ToolCallDelta):
        if event.call_index == len(choice.tool_calls):
            choice.tool_calls.append(ToolCall(event.id or "", event.name or "", ""))
        choice.tool_calls[event.call_index].arguments += event.arguments
    else:
        choice.finish_reason, choice.stop_sequence = event.finish_reason, event.stop_sequence
