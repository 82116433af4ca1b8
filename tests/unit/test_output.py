"""The output stage on token pieces cut at awkward places: reasoning, tagged calls, calls as JSON, failures."""

from __future__ import annotations

import json

import pytest

from gateway.chat_formats import GENERIC, HERMES, LLAMA3, MISTRAL, REASONING_MARKERS, chat_format, reasoning_markers
from gateway.output import ChoiceOutput, OutputPlan, gather
from gateway.types import Choice, TextDelta, ThinkingDelta, ToolCallDelta

THINK = REASONING_MARKERS[0]
TOOLS = frozenset({"get_weather", "get_time"})


def run(plan: OutputPlan, pieces: list[str]) -> tuple[Choice, list]:
    out = ChoiceOutput(plan, 0)
    events = []
    for piece in pieces:
        events += out.feed(piece)
    events += out.close()
    choice = Choice(0)
    for event in events:
        gather(choice, event)
    return choice, events


def every_cut(text: str) -> list[list[str]]:
    """The text cut into pieces at every pair of positions: markers end up split in every possible way."""
    cuts = [[text]]
    for i in range(1, len(text)):
        cuts.append([text[:i], text[i:]])
    for i in range(1, len(text), 3):
        for j in range(i + 1, len(text), 5):
            cuts.append([text[:i], text[i:j], text[j:]])
    cuts.append(list(text))  # one character per piece
    return cuts


@pytest.mark.parametrize("pieces", every_cut("<think>Let me see.</think>\n\nIt is 4."))
def test_reasoning_is_split_wherever_the_tags_are_cut(pieces):
    choice, events = run(OutputPlan(reasoning=THINK), pieces)
    assert choice.thinking == "Let me see."
    assert choice.text == "It is 4."
    assert not any("<" in e.text for e in events if isinstance(e, (TextDelta, ThinkingDelta)))


@pytest.mark.parametrize("pieces", every_cut("Hmm, 2+2.</think>4"))
def test_reasoning_opened_by_the_template(pieces):
    choice, _ = run(OutputPlan(reasoning=THINK, in_reasoning=True), pieces)
    assert (choice.thinking, choice.text) == ("Hmm, 2+2.", "4")


@pytest.mark.parametrize("plan, pieces, expected", [
    (OutputPlan(reasoning=THINK), ["<think>", "Let", " me", "</think>", "\n\n", "It", " is"], 4),
    (OutputPlan(reasoning=THINK, in_reasoning=True), ["Hmm", "</think>", "4"], 2),
    (OutputPlan(reasoning=THINK), ["It", " is", " 4"], 0),
    (OutputPlan(), ["<think>", "x", "</think>"], 0),
])
def test_reasoning_tokens_are_the_pieces_read_as_reasoning(plan, pieces, expected):
    out = ChoiceOutput(plan, 0)
    for piece in pieces:
        out.feed(piece)
    assert out.reasoning_tokens == expected


def test_unfinished_reasoning_stays_reasoning():
    choice, _ = run(OutputPlan(reasoning=THINK), ["<think>still going", " and going"])
    assert (choice.thinking, choice.text) == ("still going and going", "")


def test_a_think_tag_after_the_answer_began_is_text():
    choice, _ = run(OutputPlan(reasoning=THINK), ["The tag <think> is HTML-like."])
    assert choice.text == "The tag <think> is HTML-like." and choice.thinking == ""


def test_no_plan_passes_text_through_untouched():
    choice, events = run(OutputPlan(), ["<think>a</think>", "b"])
    assert choice.text == "<think>a</think>b" and len(events) == 2


def test_text_that_only_resembles_a_marker_is_released_at_the_end():
    choice, _ = run(OutputPlan(reasoning=THINK), ["<thin", "k"])
    assert choice.text == "<think" or choice.thinking == ""  # a "<think" that never closes its tag
    choice, _ = run(OutputPlan(reasoning=THINK), ["2 <", "3"])
    assert choice.text == "2 <3"


CALLS = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "note": "a } in \\"quotes\\""}}\n'
         '</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>')


@pytest.mark.parametrize("pieces", every_cut(CALLS))
def test_tagged_calls_split_into_separate_calls_wherever_cut(pieces):
    choice, events = run(OutputPlan(calls=GENERIC, tools=TOOLS), pieces)
    assert [(c.name, json.loads(c.arguments)) for c in choice.tool_calls] == [
        ("get_weather", {"city": "Paris", "note": 'a } in "quotes"'}), ("get_time", {})]
    assert choice.text == ""
    firsts = [e for e in events if isinstance(e, ToolCallDelta) and e.id]
    assert [(e.call_index, e.name, e.arguments) for e in firsts] == [(0, "get_weather", ""), (1, "get_time", "")]
    assert len({e.id for e in firsts}) == 2 and all(e.id.startswith("call_") for e in firsts)
    later = [e for e in events if isinstance(e, ToolCallDelta) and not e.id]
    assert all(e.name is None for e in later)


def test_arguments_stream_before_the_call_ends():
    out = ChoiceOutput(OutputPlan(calls=HERMES, tools=TOOLS), 0)
    events = out.feed('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa')
    assert [(e.name, e.arguments) for e in events] == [("get_weather", ""), (None, '{"city": "Pa')]


def test_text_before_a_call_is_content():
    choice, _ = run(OutputPlan(calls=HERMES, tools=TOOLS),
                    ["Let me check.", "<tool_call>", '{"name": "get_time", "arguments": {}}', "</tool_call>"])
    assert choice.text == "Let me check." and [c.name for c in choice.tool_calls] == ["get_time"]


@pytest.mark.parametrize("block", [
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>',  # broken JSON
    '<tool_call>\n{"name": "launch_rockets", "arguments": {}}\n</tool_call>',  # not an offered tool
])
def test_a_call_that_does_not_parse_is_returned_as_text(block):
    choice, _ = run(OutputPlan(calls=HERMES, tools=TOOLS), [block[:20], block[20:]])
    assert choice.tool_calls == [] and choice.text == block


@pytest.mark.parametrize("text", [
    '{"name": "get_weather", "arguments": {"city": "Oslo"}}',
    '```json\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n```',
    '  {"name": "get_weather", "parameters": {"city": "Oslo"}}',
    '[{"name": "get_weather", "arguments": "{\\"city\\": \\"Oslo\\"}"}]',
])
def test_a_call_written_as_plain_json_is_promoted(text):
    choice, _ = run(OutputPlan(calls=GENERIC, tools=TOOLS), [text[:7], text[7:]])
    assert [(c.name, json.loads(c.arguments)) for c in choice.tool_calls] == [("get_weather", {"city": "Oslo"})]
    assert choice.text == ""


def test_json_that_is_no_call_stays_text():
    text = '{"city": "Oslo"}'
    choice, _ = run(OutputPlan(calls=GENERIC, tools=TOOLS), [text])
    assert choice.text == text and choice.tool_calls == []


def test_mistral_call_lists_and_llama3_bare_calls():
    choice, _ = run(OutputPlan(calls=MISTRAL, tools=TOOLS),
                    ['[TOOL_', 'CALLS][{"name": "get_time", "arguments": {}}, ',
                     '{"name": "get_weather", "arguments": {"city": "Rome"}}]'])
    assert [c.name for c in choice.tool_calls] == ["get_time", "get_weather"]
    choice, _ = run(OutputPlan(calls=LLAMA3, tools=TOOLS), ['{"name": "get_time", ', '"parameters": {"tz": "UTC"}}'])
    assert [(c.name, c.arguments) for c in choice.tool_calls] == [("get_time", '{"tz": "UTC"}')]


def test_reasoning_then_a_call():
    choice, _ = run(OutputPlan(reasoning=THINK, calls=HERMES, tools=TOOLS),
                    ["<think>need the time</th", "ink>\n<tool_call>\n", '{"name": "get_time", "arguments": {}}\n',
                     "</tool_call>"])
    assert choice.thinking == "need the time" and [c.name for c in choice.tool_calls] == ["get_time"]


def test_formats_and_markers_come_from_the_template():
    assert chat_format("{{ '<tool_call>' }}") is HERMES
    assert chat_format("[TOOL_CALLS] {{ tools }}") is MISTRAL
    assert chat_format("<|start_header_id|>{% if tools %}") is LLAMA3
    assert chat_format("<|im_start|>{{ message['content'] }}") is GENERIC
    assert chat_format("<tool_call>", configured="mistral") is MISTRAL
    assert reasoning_markers("{% if enable_thinking %}") == THINK
    assert reasoning_markers("[THINK]{{ x }}[/THINK]").open == "[THINK]"
    assert reasoning_markers("<|im_start|>{{ content }}") is None


@pytest.mark.parametrize("pieces", every_cut("<think>\n\n</think>\n\nHi"))
def test_a_blank_reasoning_block_is_no_reasoning(pieces):
    choice, events = run(OutputPlan(reasoning=THINK), pieces)
    assert (choice.thinking, choice.text) == ("", "Hi")
    assert not any(isinstance(e, ThinkingDelta) for e in events)


@pytest.mark.parametrize("pieces", every_cut("<think>\nstep one\nstep two\n</think>ok"))
def test_reasoning_loses_the_blank_lines_around_it_only(pieces):
    choice, _ = run(OutputPlan(reasoning=THINK), pieces)
    assert choice.thinking == "step one\nstep two"
