"""Reasoning split end to end with a model-independent fixture: a Qwen3-like chat template and token pieces that
cut `<think>` in awkward places, from the real prompt (the plan) through the output stage into every family's
streamed and non-streamed chat shapes. Each family must show exactly the reasoning and the answer, no marker
fragments, reasoning before the answer, and the same thing streamed as not."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

import pytest

from adapters.base import RequestContext, Route
from gateway.app import ROUTES
from gateway.backends.structured import ModelStyle, output_setup, shape_chat
from gateway.chat_formats import HERMES, ReasoningMarkers
from gateway.engine.template import DEFAULT_TEMPLATE, ChatTemplate
from gateway.output import ChoiceOutput, OutputPlan, gather
from gateway.types import (
    Choice,
    ChoiceDone,
    Done,
    GenerationResult,
    InternalRequest,
    Message,
    OutputEvent,
    PromptStarted,
    TextDelta,
    ThinkingDelta,
    Tool,
    ToolCallDelta,
    Usage,
)

THINK = ReasoningMarkers("<think>", "</think>")
FRAGMENTS = ("<think", "think>", "</", "<tool_call", "tool_call>")
REASONING_KEYS = ("reasoning_content", "reasoning")


def qwen_like(opens: bool) -> str:
    """A small Qwen3-like template that knows `enable_thinking`: off renders an empty reasoning block; on renders
    `<think>\\n` (the template opens reasoning itself) when `opens`, else nothing (the model writes `<think>`)."""
    return (
        "{%- if tools %}{{- '<|im_start|>system\\n# Tools\\n<tools>' }}"
        "{%- for tool in tools %}{{- '\\n' + tool | tojson }}{%- endfor %}"
        "{{- '\\n</tools>\\nTo call one, reply <tool_call>\\n{\"name\": ..., \"arguments\": {...}}\\n</tool_call>"
        "<|im_end|>\\n' }}{%- endif %}"
        "{%- for message in messages %}"
        "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}"
        "{%- endfor %}"
        "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
        "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
        "{%- elif enable_thinking is defined and enable_thinking %}" + ("{{- '<think>\\n' }}" if opens else "")
        + "{%- endif %}{%- endif %}"
    )


OPENS = qwen_like(opens=True)
WRITES = qwen_like(opens=False)
WEATHER = Tool("get_weather", "The weather in a city", {"type": "object", "properties": {"city": {"type": "string"}}})


@functools.cache
def compiled(template: str) -> ChatTemplate:
    """Compiled once per template, as the backend compiles once per model."""
    return ChatTemplate(template)


def prompt_and_plan(template: str, req: InternalRequest) -> tuple[str, OutputPlan]:
    """What the local backend does: shape the request, render the real prompt, plan the output from it."""
    style = ModelStyle.of(template)
    shaped = shape_chat(req, style)
    tools = shaped.tools if shaped.tools and shaped.tools_in_template else None
    prompt = compiled(template).render(shaped.messages, tools, shaped.add_generation_prompt,
                                           **shaped.template_kwargs)
    return prompt, output_setup(shaped, style, prompt).plan


# ---------------------------------------------------------------------------------------------------------------
# 1. The fixture template and the plan it gives


def test_the_style_finds_the_think_markers() -> None:
    for template in (OPENS, WRITES):
        style = ModelStyle.of(template)
        assert style.reasoning == THINK
        assert style.chat == HERMES
    assert ModelStyle.of(DEFAULT_TEMPLATE).reasoning is None


@pytest.mark.parametrize(("template", "think", "keep_tags", "tail", "in_reasoning", "splits"), [
    (OPENS, True, False, "assistant\n<think>\n", True, True),
    (OPENS, False, False, "assistant\n<think>\n\n</think>\n\n", False, True),
    (OPENS, None, False, "assistant\n", False, True),
    (WRITES, True, False, "assistant\n", False, True),
    (WRITES, False, False, "assistant\n<think>\n\n</think>\n\n", False, True),
    (WRITES, None, True, "assistant\n", False, False),  # Ollama with `think` unset: tags stay in the text
    (OPENS, True, True, "assistant\n<think>\n", False, False),  # keeping the tags never splits, even when opened
    (DEFAULT_TEMPLATE, True, False, "assistant\n", False, False),  # a model that cannot reason
], ids=["opens-on", "opens-off", "opens-unset", "writes-on", "writes-off", "keep-tags", "keep-tags-opened",
        "cannot-reason"])
def test_the_rendered_prompt_decides_the_plan(template: str, think: bool | None, keep_tags: bool, tail: str,
                                              in_reasoning: bool, splits: bool) -> None:
    req = InternalRequest(kind="chat", messages=[Message("user", "What is 2+2?")], think=think,
                          keep_think_tags=keep_tags)
    prompt, plan = prompt_and_plan(template, req)
    assert prompt.endswith(tail) and prompt.startswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n")
    assert plan.in_reasoning is in_reasoning
    assert plan.reasoning == (THINK if splits else None)
    assert plan.active is splits
    if keep_tags:
        out = ChoiceOutput(plan, 0)
        events = [*out.feed("<thi"), *out.feed("nk>hm</th"), *out.feed("ink>\n\nHi"), *out.close()]
        assert events and all(isinstance(e, TextDelta) for e in events)
        assert "".join(e.text for e in events) == "<think>hm</think>\n\nHi"


def test_the_switch_reaches_the_template_only_for_models_that_reason() -> None:
    req = InternalRequest(kind="chat", messages=[Message("user", "hi")], think=True)
    assert shape_chat(req, ModelStyle.of(OPENS)).template_kwargs == {"enable_thinking": True}
    assert shape_chat(req, ModelStyle.of(DEFAULT_TEMPLATE)).template_kwargs == {}
    unset = InternalRequest(kind="chat", messages=[Message("user", "hi")])
    assert shape_chat(unset, ModelStyle.of(OPENS)).template_kwargs == {}


# ---------------------------------------------------------------------------------------------------------------
# 2. Token pieces through the output stage into every family's chat shapes


@dataclass(frozen=True)
class Case:
    pieces: tuple[str, ...]
    thinking: str
    text: str
    opens: bool = False  # the template opened reasoning (the pieces start inside it)
    tools: bool = False
    calls: tuple[tuple[str, dict[str, Any]], ...] = ()
    reason: str = "stop"


CALL_JSON = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
CASES = {
    "mid-tag": Case(("<thi", "nk>Let me ", "see.</th", "ink>\n\nIt is 4."), "Let me see.", "It is 4."),
    "tag-over-3-pieces": Case(("<", "thi", "nk>", "Hmm", "</", "thin", "k>", "Answer"), "Hmm", "Answer"),
    "tag-at-piece-end": Case(("<think>", "a b", "</think>", "\n\n", "Done."), "a b", "Done."),
    "one-char-pieces": Case(tuple("<think>2+2</think>\n\n4"), "2+2", "4"),
    "multi-byte": Case(("<think>é", "🙂</thi", "nk>é🙂", " fin"), "é🙂", "é🙂 fin"),
    "emoji-at-tags": Case(("<think>🤔", "Ça va</", "think>", "😀 Oui"), "🤔Ça va", "😀 Oui"),
    "angle-brackets": Case(("<think>a<b", "</think>x <", " y"), "a<b", "x < y"),
    "empty-block": Case(("<think>", "</think>", "\n\n", "Hi"), "", "Hi"),
    # whitespace the model writes before `<think>` is neither answer text nor a reason to put the answer first
    "newline-before-tag": Case(("\n<th", "ink>x</think>", "\n\ny"), "x", "y"),
    "template-opened": Case(("Hmm, 2+2", "=4.</thi", "nk>", "\n\nFour."), "Hmm, 2+2=4.", "Four.", opens=True),
    "template-opened-empty": Case(("</", "think>", "\n\n4"), "", "4", opens=True),
    "unfinished-reasoning": Case(("<think>still", " go", "ing"), "still going", "", reason="length"),
    "reasoning-then-call": Case(
        ("<think>I should call", " the tool.</th", "ink>\n\n<tool", "_call>\n" + CALL_JSON[:20],
         CALL_JSON[20:] + "\n</tool_", "call>"),
        "I should call the tool.", "", tools=True, calls=(("get_weather", {"city": "Paris"}),)),
    "template-opened-call": Case(
        ("Need", " weather.</think>", "<tool_call>", "\n" + CALL_JSON + "\n", "</tool_call>"),
        "Need weather.", "", opens=True, tools=True, calls=(("get_weather", {"city": "Paris"}),)),
}

ENDPOINTS = ("openai", "vllm", "tgi", "anthropic", "ollama.chat", "ollama.generate")
PATHS = {"openai": "/v1/chat/completions", "vllm": "/v1/chat/completions", "tgi": "/v1/chat/completions",
         "anthropic": "/v1/messages", "ollama.chat": "/api/chat", "ollama.generate": "/api/generate"}
OPENAI_TOOLS = [{"type": "function", "function": {"name": WEATHER.name, "description": WEATHER.description,
                                                  "parameters": WEATHER.parameters}}]


def body_for(endpoint: str, stream: bool, tools: bool, think: bool | None = True) -> dict[str, Any]:
    """What each family's client sends to ask for a chat with reasoning on (`think` None: the family's default)."""
    messages = [{"role": "user", "content": "What is 2+2?"}]
    if endpoint == "anthropic":
        body = {"model": "m", "max_tokens": 2048, "messages": messages, "stream": stream}
        if think:
            body["thinking"] = {"type": "enabled", "budget_tokens": 1024}
        if tools:
            body["tools"] = [{"name": WEATHER.name, "description": WEATHER.description,
                              "input_schema": WEATHER.parameters}]
        return body
    if endpoint == "ollama.generate":
        assert not tools  # /api/generate offers no tools
        body = {"model": "m", "prompt": "What is 2+2?", "stream": stream}
    else:
        body = {"model": "dummy" if endpoint == "tgi" else "m", "messages": messages, "stream": stream}
    if tools:
        body["tools"] = OPENAI_TOOLS
    if think is None:
        return body
    if endpoint.startswith("ollama"):
        body["think"] = think
    elif endpoint == "vllm":
        body["chat_template_kwargs"] = {"enable_thinking": think}
    else:
        body["reasoning_effort"] = "high" if think else "none"
    return body


def route_for(path: str, body: dict[str, Any], ctx: RequestContext) -> Route:
    """The route the server picks, as `gateway/routes.py` does: the first that accepts, else the catch-all."""
    group = sorted((r for r in ROUTES if r.method == "POST" and r.path == path), key=lambda r: r.accepts is None)
    return next(r for r in group if r.accepts is None or r.accepts(body, ctx))


def run_output(plan: OutputPlan, case: Case) -> list[OutputEvent]:
    """The service's event sequence for one choice fed these pieces."""
    out = ChoiceOutput(plan, 0)
    usage = Usage(12, len(case.pieces))
    events: list[OutputEvent] = [PromptStarted(0, 12, 0)]
    for piece in case.pieces:
        events += out.feed(piece)
    events += out.close()
    reason = "tool_calls" if case.reason == "stop" and out.calls_made else case.reason
    return [*events, ChoiceDone(0, reason, None, usage), Done(usage)]


def gathered(events: list[OutputEvent]) -> GenerationResult:
    choice = Choice(0)
    for event in events:
        if isinstance(event, (TextDelta, ThinkingDelta, ToolCallDelta, ChoiceDone)):
            gather(choice, event)
    return GenerationResult([choice], events[-1].usage)


@dataclass
class Seen:
    """What a client reassembles: reasoning, answer text, calls, and the order kinds of output came in."""

    thinking: str = ""
    text: str = ""
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)  # Anthropic: the content blocks' types, in index order

    def add(self, kind: str, value: str) -> None:
        if value:
            setattr(self, kind, getattr(self, kind) + value)
            self.order.append(kind)

    @property
    def answer(self) -> tuple[str, str, list[tuple[str, dict[str, Any]]]]:
        return self.thinking, self.text, self.calls


def openai_reasoning(obj: dict[str, Any], keys: tuple[str, ...]) -> str:
    """The reasoning of a message or delta: under exactly the configured keys, the same text in each."""
    present = {k for k in REASONING_KEYS if k in obj}
    if not present:
        return ""
    assert present == set(keys), obj
    values = {obj[k] for k in present}
    assert len(values) == 1, obj
    return values.pop()


def read_openai_stream(frames: list[bytes], keys: tuple[str, ...]) -> Seen:
    seen, calls = Seen(), {}
    assert frames[-1] == b"data: [DONE]\n\n"
    for frame in frames[:-1]:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2
        for choice in json.loads(frame[len(b"data: "):])["choices"]:
            delta = choice["delta"]
            seen.add("thinking", openai_reasoning(delta, keys))
            seen.add("text", delta.get("content") or "")
            for fragment in delta.get("tool_calls", []):
                seen.order.append("calls")
                call = calls.setdefault(fragment["index"], ["", ""])
                if "id" in fragment:
                    assert fragment["id"] and not call[0]  # id and name once per call
                    call[0] = fragment["function"]["name"]
                call[1] += fragment["function"]["arguments"]
    seen.calls = [(name, json.loads(args)) for name, args in (calls[i] for i in sorted(calls))]
    return seen


def read_openai_message(body: dict[str, Any], keys: tuple[str, ...]) -> Seen:
    message = body["choices"][0]["message"]
    calls = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in message.get("tool_calls", [])]
    return Seen(openai_reasoning(message, keys), message["content"] or "", calls)


def read_anthropic_stream(frames: list[bytes]) -> Seen:
    """Checks the block state machine too: indexes from 0 in order, one block open at a time, deltas of the open
    block's kind, and a thinking block's signature_delta last before its stop."""
    seen, events, open_index, inputs = Seen(), [], None, {}
    for frame in frames:
        assert frame.startswith(b"event: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 3
        head, data = frame[:-2].decode().split("\n")
        payload = json.loads(data[len("data: "):])
        assert head == "event: " + payload["type"]
        events.append(payload)
    assert events[0]["type"] == "message_start" and [e["type"] for e in events[-2:]] == ["message_delta",
                                                                                      "message_stop"]
    signed: set[int] = set()
    for event in events:
        if event["type"] == "content_block_start":
            assert open_index is None and event["index"] == len(seen.blocks)
            open_index = event["index"]
            block = event["content_block"]
            seen.blocks.append(block["type"])
            if block["type"] == "tool_use":
                inputs[open_index] = [block["name"], ""]
        elif event["type"] == "content_block_delta":
            assert event["index"] == open_index and open_index not in signed, event
            kind, delta = seen.blocks[open_index], event["delta"]
            expected = {"thinking": ("thinking_delta", "signature_delta"), "text": ("text_delta",),
                        "tool_use": ("input_json_delta",)}[kind]
            assert delta["type"] in expected, event
            if delta["type"] == "signature_delta":
                assert delta["signature"]
                signed.add(open_index)
            elif delta["type"] == "thinking_delta":
                seen.add("thinking", delta["thinking"])
            elif delta["type"] == "text_delta":
                seen.add("text", delta["text"])
            else:
                seen.order.append("calls")
                inputs[open_index][1] += delta["partial_json"]
        elif event["type"] == "content_block_stop":
            assert event["index"] == open_index
            assert (open_index in signed) == (seen.blocks[open_index] == "thinking")  # signature just before stop
            open_index = None
    assert open_index is None
    seen.calls = [(name, json.loads(args or "{}")) for name, args in (inputs[i] for i in sorted(inputs))]
    return seen


def read_anthropic_message(body: dict[str, Any]) -> Seen:
    seen = Seen(blocks=[b["type"] for b in body["content"]])
    for block in body["content"]:
        if block["type"] == "thinking":
            assert block["signature"]
            seen.thinking += block["thinking"]
        elif block["type"] == "text":
            seen.text += block["text"]
        else:
            seen.calls.append((block["name"], block["input"]))
    return seen


def read_ollama(obj: dict[str, Any], generate: bool, seen: Seen) -> None:
    fields = obj if generate else obj["message"]
    seen.add("thinking", fields.get("thinking", ""))
    seen.add("text", fields["response" if generate else "content"])
    for call in fields.get("tool_calls", []):
        seen.order.append("calls")
        seen.calls.append((call["function"]["name"], call["function"]["arguments"]))


def read_ollama_stream(frames: list[bytes], generate: bool) -> Seen:
    seen = Seen()
    lines = []
    for frame in frames:
        assert frame.endswith(b"\n") and frame.count(b"\n") == 1
        lines.append(json.loads(frame))
    assert lines[-1]["done"] is True and not any(line["done"] for line in lines[:-1])
    for line in lines:
        read_ollama(line, generate, seen)
    return seen


def read_ollama_object(body: dict[str, Any], generate: bool) -> Seen:
    seen = Seen()
    assert body["done"] is True
    read_ollama(body, generate, seen)
    return seen


def read(endpoint: str, stream: bool, rendered: Any, ctx: RequestContext) -> Seen:
    keys = ("reasoning_content", "reasoning") if ctx.reasoning_field == "both" else (ctx.reasoning_field,)
    if endpoint == "anthropic":
        return read_anthropic_stream(rendered) if stream else read_anthropic_message(rendered)
    if endpoint.startswith("ollama"):
        generate = endpoint == "ollama.generate"
        return read_ollama_stream(rendered, generate) if stream else read_ollama_object(rendered, generate)
    return read_openai_stream(rendered, keys) if stream else read_openai_message(rendered, keys)


def serve(endpoint: str, stream: bool, template: str, case: Case, ctx: RequestContext,
          think: bool | None = True) -> tuple[OutputPlan, Seen]:
    """One request through the family's parser, the real prompt, the output stage and the family's renderer."""
    body = body_for(endpoint, stream, case.tools, think)
    route = route_for(PATHS[endpoint], body, ctx)
    req = route.parse(body, ctx)
    assert req.kind == "chat" and req.stream is stream
    _, plan = prompt_and_plan(template, req)
    events = run_output(plan, case)
    if not stream:
        return plan, read(endpoint, False, json.loads(json.dumps(route.render(gathered(events), req, ctx))), ctx)
    renderer = route.stream(req, ctx)
    frames = renderer.start()
    for event in events:
        frames += renderer.feed(event)
    return plan, read(endpoint, True, frames, ctx)


def expected_blocks(case: Case) -> list[str]:
    """Claude's order: thinking, then text (there when there is text or nothing else), then one per call."""
    blocks = ["thinking"] if case.thinking else []
    if case.text or not (case.thinking or case.calls):
        blocks.append("text")
    return blocks + ["tool_use"] * len(case.calls)


CTX = RequestContext(request_id="r1", created=1700000000)
COMBOS = [(e, name) for e in ENDPOINTS for name, case in CASES.items()
          if not (case.tools and e == "ollama.generate")]


@pytest.mark.parametrize(("endpoint", "name"), COMBOS, ids=[f"{e}-{n}" for e, n in COMBOS])
def test_every_family_shows_the_same_split_streamed_and_not(endpoint: str, name: str) -> None:
    case = CASES[name]
    template = OPENS if case.opens else WRITES
    plan, streamed = serve(endpoint, True, template, case, CTX)
    assert plan.reasoning == THINK and plan.in_reasoning is case.opens
    assert plan.tools == (frozenset({"get_weather"}) if case.tools else frozenset())
    _, whole = serve(endpoint, False, template, case, CTX)
    expected = (case.thinking, case.text, list(case.calls))
    assert streamed.answer == expected
    assert whole.answer == expected
    for seen in (streamed, whole):
        assert not any(f in seen.thinking or f in seen.text for f in FRAGMENTS)
    order = streamed.order
    assert order == sorted(order, key=lambda kind: kind != "thinking"), order  # reasoning first
    if endpoint == "anthropic":
        assert streamed.blocks == whole.blocks == expected_blocks(case)


@pytest.mark.parametrize("endpoint", ["ollama.chat", "ollama.generate"])
def test_ollama_without_think_keeps_the_tags_in_the_text(endpoint: str) -> None:
    case = Case(("<thi", "nk>hm</th", "ink>\n\nHi"), "", "<think>hm</think>\n\nHi")
    for stream in (True, False):
        plan, seen = serve(endpoint, stream, WRITES, case, CTX, think=None)
        assert not plan.active
        assert seen.answer == ("", "<think>hm</think>\n\nHi", [])


# ---------------------------------------------------------------------------------------------------------------
# 3. Where OpenAI-style responses put reasoning


@pytest.mark.parametrize("endpoint", ["openai", "vllm", "tgi"])
@pytest.mark.parametrize(("setting", "keys"), [
    ("reasoning_content", {"reasoning_content"}),
    ("reasoning", {"reasoning"}),
    ("both", {"reasoning_content", "reasoning"}),
])
def test_reasoning_field_names_the_keys(endpoint: str, setting: str, keys: set[str]) -> None:
    ctx = RequestContext(request_id="r1", created=1700000000, reasoning_field=setting)
    case = CASES["mid-tag"]
    for stream in (True, False):
        body = body_for(endpoint, stream, tools=False)
        route = route_for(PATHS[endpoint], body, ctx)
        req = route.parse(body, ctx)
        events = run_output(prompt_and_plan(WRITES, req)[1], case)
        if stream:
            renderer = route.stream(req, ctx)
            frames = [*renderer.start(), *(f for e in events for f in renderer.feed(e))]
            chunks = [json.loads(f[len(b"data: "):]) for f in frames[:-1]]
            deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
            reasoning = [d for d in deltas if set(d) & set(REASONING_KEYS)]
            assert reasoning and all(set(d) & set(REASONING_KEYS) == keys for d in reasoning)
            for key in keys:
                assert "".join(d[key] for d in reasoning) == case.thinking
            assert "".join(d.get("content") or "" for d in deltas) == case.text
        else:
            message = route.render(gathered(events), req, ctx)["choices"][0]["message"]
            assert set(message) & set(REASONING_KEYS) == keys
            assert all(message[key] == case.thinking for key in keys)
            assert message["content"] == case.text
