"""The Responses API adapter with plain dicts in and plain dicts or frames out, and its stream read back by the
real `openai` SDK (through an in-memory transport, no server): the helper checks the event order itself."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from adapters import openai_responses as r
from adapters.base import RequestContext
from adapters.openai_responses_render import ResponsesStream, render_create, render_deleted, render_stored
from gateway.types import (
    Choice,
    ChoiceDone,
    Constraint,
    Deleted,
    Done,
    ErrorKind,
    GatewayError,
    GenerationResult,
    ImagePart,
    Message,
    PromptStarted,
    StoredResponse,
    TextDelta,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)

CTX = RequestContext(request_id="r1", created=1700000000)
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}, "strict": True}


def body(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "input": "hi", **extra}


def parse(**extra: Any):
    return r.parse_create(body(**extra), CTX)


# ---------------------------------------------------------------------------------------------------------------
# Parsing


def test_a_string_input_with_instructions_first():
    req = parse(instructions="be brief", max_output_tokens=20, temperature=0, top_p=0.5)
    assert req.kind == "chat" and req.model == "m"
    assert req.messages == [Message("system", "be brief"), Message("user", "hi")]
    assert (req.sampling.max_tokens, req.sampling.temperature, req.sampling.top_p) == (20, 0, 0.5)
    assert req.response.id == "resp_r1" and req.response.instructions and req.response.store


def test_items_become_turns():
    items = [
        {"role": "developer", "content": "rules"},
        {"type": "message", "role": "user", "content": [
            {"type": "input_text", "text": "look "}, {"type": "input_text", "text": "here"},
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [{"type": "summary_text", "text": "think"}]},
        {"role": "assistant", "content": [{"type": "output_text", "text": "calling"}]},
        {"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "call_2", "name": "g", "arguments": "{\"a\":1}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "1"},
        {"type": "function_call_output", "call_id": "call_2", "output": [{"type": "input_text", "text": "2"}]},
        {"type": "function_call", "call_id": "call_3", "name": "f", "arguments": "{}"},
    ]
    assert r.parse_create(body(input=items), CTX).messages == [
        Message("system", "rules"),
        Message("user", "look here", images=[ImagePart("data:image/png;base64,AAAA")]),
        Message("assistant", "calling", thinking="think",
                tool_calls=[ToolCall("call_1", "f", "{}"), ToolCall("call_2", "g", "{\"a\":1}")]),
        Message("tool", "1", tool_call_id="call_1"),
        Message("tool", "2", tool_call_id="call_2"),
        Message("assistant", None, tool_calls=[ToolCall("call_3", "f", "{}")]),
    ]


@pytest.mark.parametrize("extra, path, expected", [
    ({"tools": [WEATHER]}, "tools", [Tool("get_weather", "", {"type": "object"}, True)]),
    ({"tools": [WEATHER], "tool_choice": "required"}, "tool_choice", "required"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "get_weather"}}, "tool_choice", "get_weather"),
    ({"parallel_tool_calls": False}, "parallel_tool_calls", False),
    ({"text": {"format": {"type": "json_object"}}}, "constraint", Constraint("json")),
    ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}, "strict": True}}},
     "constraint", Constraint("json_schema", {"type": "object"})),
    ({"text": {"format": {"type": "text"}}}, "constraint", None),
    ({"reasoning": {"effort": "none"}}, "think", False),
    ({"reasoning": {"effort": "high"}}, "template_kwargs", {"reasoning_effort": "high"}),
    ({"truncation": "auto"}, "truncate", "drop_turns"),
    ({"truncation": "disabled"}, "truncate", "error"),
    ({"top_logprobs": 3}, "sampling.top_logprobs", 3),
    ({"include": ["message.output_text.logprobs"]}, "sampling.logprobs", True),
    ({"store": False}, "response.store", False),
    ({"previous_response_id": "resp_x", "input": []}, "messages", []),
    ({"previous_response_id": "resp_x"}, "response.previous_id", "resp_x"),
    ({"stream": True, "user": "u", "metadata": {"k": "v"}, "service_tier": "auto", "prompt_cache_key": "k"},
     "stream", True),
])
def test_fields(extra, path, expected):
    value: Any = parse(**extra)
    for name in path.split("."):
        value = getattr(value, name)
    assert value == expected


@pytest.mark.parametrize("extra, param", [
    ({"model": 1}, "model"),
    ({"input": None}, "input"),
    ({"input": 3}, "input"),
    ({"input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]}, "input[0].content[0].type"),
    ({"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input[0].output"),
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tools": [{"type": "function"}]}, "tools[0].name"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice.name"),
    ({"tool_choice": "sometimes"}, "tool_choice"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
    ({"text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"text": "json"}, "text"),
    ({"reasoning": {"effort": "extreme"}}, "reasoning.effort"),
    ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"truncation": "sometimes"}, "truncation"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"temperature": 3}, "temperature"),
    ({"top_logprobs": 21}, "top_logprobs"),
    ({"store": "yes"}, "store"),
    ({"background": True}, "background"),
    ({"conversation": "conv_1"}, "conversation"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
])
def test_bad_fields_are_400s_naming_the_field(extra, param):
    with pytest.raises(GatewayError) as caught:
        parse(**extra)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST and caught.value.param == param


def test_reasoning_between_a_message_and_a_call_starts_a_turn():
    items = [{"role": "assistant", "content": "a"}, {"type": "reasoning", "summary": [{"text": "t"}]},
             {"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"}]
    assert parse(input=items).messages == [
        Message("assistant", "a"), Message("assistant", None, tool_calls=[ToolCall("c", "f", "{}")], thinking="t")]


def test_get_and_delete_name_the_id():
    ctx = RequestContext("r2", 0, path_params={"response_id": "resp_r1"}, method="GET")
    assert r.parse_get(None, ctx).response.id == "resp_r1" and r.parse_get(None, ctx).kind == "get_response"
    assert r.parse_delete(None, ctx).kind == "delete_response"


# ---------------------------------------------------------------------------------------------------------------
# Rendering finished answers


def result(choice: Choice, usage: Usage | None = None) -> GenerationResult:
    return GenerationResult([choice], usage or Usage(9, 4, 2, 1))


def test_a_text_answer():
    out = render_create(result(Choice(0, "Hello")), parse(instructions="x", metadata={"k": "v"}), CTX)
    assert out["id"] == "resp_r1" and out["object"] == "response" and out["created_at"] == 1700000000
    assert out["status"] == "completed" and out["incomplete_details"] is None and out["error"] is None
    assert out["output"] == [{"id": "msg_r1_0", "type": "message", "status": "completed", "role": "assistant",
                              "content": [{"type": "output_text", "text": "Hello", "annotations": [],
                                           "logprobs": []}]}]
    assert out["usage"] == {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 2}, "output_tokens": 4,
                            "output_tokens_details": {"reasoning_tokens": 1}, "total_tokens": 13}
    assert (out["instructions"], out["metadata"], out["tool_choice"], out["text"]) == (
        "x", {"k": "v"}, "auto", {"format": {"type": "text"}, "verbosity": "medium"})


def test_reasoning_and_calls_without_text():
    choice = Choice(0, "", "mulling", [ToolCall("call_a", "get_weather", "{\"c\":1}")], "tool_calls")
    out = render_create(result(choice), parse(tools=[WEATHER]), CTX)
    assert out["output"] == [
        {"id": "rs_r1_0", "type": "reasoning", "summary": [{"type": "summary_text", "text": "mulling"}]},
        {"id": "fc_r1_1", "type": "function_call", "status": "completed", "call_id": "call_a",
         "name": "get_weather", "arguments": "{\"c\":1}"}]
    assert out["tools"] == [{"type": "function", "name": "get_weather", "description": None,
                             "parameters": {"type": "object"}, "strict": True}]


def test_cut_by_max_output_tokens_is_incomplete():
    out = render_create(result(Choice(0, "Hel", finish_reason="length")), parse(max_output_tokens=1), CTX)
    assert out["status"] == "incomplete" and out["incomplete_details"] == {"reason": "max_output_tokens"}
    assert out["output"][0]["status"] == "incomplete" and out["max_output_tokens"] == 1


def test_a_stored_answer_renders_as_it_was_answered():
    req = parse(instructions="x")
    answered = render_create(result(Choice(0, "Hello")), req, CTX)
    stored = StoredResponse("resp_r1", [], result(Choice(0, "Hello")), req.render)
    assert render_stored(stored, req, RequestContext("r9", 1800000000)) == answered
    assert render_deleted(Deleted("resp_r1"), req, CTX) == {"id": "resp_r1", "object": "response", "deleted": True}


# ---------------------------------------------------------------------------------------------------------------
# Streaming


def events_of(frames: list[bytes]) -> list[dict[str, Any]]:
    out = []
    for frame in frames:
        name, data = frame.decode().split("\n")[:2]
        payload = json.loads(data.removeprefix("data: "))
        assert frame.endswith(b"\n\n") and name == f"event: {payload['type']}"
        out.append(payload)
    return out


CALL_RUN = [PromptStarted(0, 9, 0), ThinkingDelta(0, "hm"), ThinkingDelta(0, "m"), TextDelta(0, "Hel"),
            TextDelta(0, "lo"), ToolCallDelta(0, 0, "call_a", "get_weather", ""),
            ToolCallDelta(0, 0, arguments="{\"c\":"), ToolCallDelta(0, 0, arguments="1}"),
            ToolCallDelta(0, 1, "call_b", "get_weather", "{}"), ChoiceDone(0, "tool_calls"), Done(Usage(9, 6))]


def stream(events: list, **extra: Any) -> list[bytes]:
    renderer = ResponsesStream(parse(stream=True, tools=[WEATHER], **extra), CTX)
    frames = renderer.start()
    for event in events:
        frames += renderer.feed(event)
    return frames


def test_the_stream_event_sequence():
    events = events_of(stream(CALL_RUN))
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.reasoning_summary_part.added",
        "response.reasoning_summary_text.delta", "response.reasoning_summary_text.delta",
        "response.reasoning_summary_text.done", "response.reasoning_summary_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.delta", "response.output_text.done", "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.done",
        "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed"]
    assert events[0]["response"]["status"] == "in_progress" and events[0]["response"]["output"] == []
    final = events[-1]["response"]
    assert [item["id"] for item in final["output"]] == ["rs_r1_0", "msg_r1_1", "fc_r1_2", "fc_r1_3"]
    assert final["output"][2]["arguments"] == "{\"c\":1}" and final["output"][3]["call_id"] == "call_b"
    assert final["usage"]["output_tokens"] == 6 and final["status"] == "completed"


def test_the_stream_ends_once_incomplete_at_max_output_tokens():
    frames = stream([TextDelta(0, "Hel"), ChoiceDone(0, "length"), Done(Usage(9, 1)), TextDelta(0, "late")])
    last = events_of(frames)[-1]
    assert last["type"] == "response.incomplete" and last["response"]["incomplete_details"] == {
        "reason": "max_output_tokens"}
    assert b"[DONE]" not in b"".join(frames)


def test_an_error_after_the_first_byte_is_an_error_event_then_failed():
    renderer = ResponsesStream(parse(stream=True), CTX)
    frames = renderer.start() + renderer.feed(TextDelta(0, "Hel"))
    frames += renderer.error(GatewayError(ErrorKind.UNAVAILABLE, "The runner died.", code="runner_terminated"))
    tail = events_of(frames)[-2:]
    assert tail[0] == {"type": "error", "code": "runner_terminated", "message": "The runner died.", "param": None,
                       "sequence_number": 5}
    assert tail[1]["type"] == "response.failed" and tail[1]["response"]["error"] == {
        "code": "runner_terminated", "message": "The runner died."}
    assert renderer.feed(Done(Usage())) == []


def sdk_client(frames: list[bytes]) -> openai.OpenAI:
    """The real SDK, answered by these frames instead of a server."""
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=b"".join(frames))

    return openai.OpenAI(api_key="k", base_url="http://test/v1", max_retries=0,
                         http_client=httpx.Client(transport=httpx.MockTransport(answer)))


def test_the_sdks_stream_helper_accepts_the_sequence():
    client = sdk_client(stream(CALL_RUN))
    with client.responses.stream(model="m", input="hi") as events:
        seen = [event.type for event in events]
        final = events.get_final_response()
    assert seen[0] == "response.created" and seen[-1] == "response.completed"
    assert final.output_text == "Hello"
    assert [(c.name, c.arguments) for c in final.output if c.type == "function_call"] == [
        ("get_weather", "{\"c\":1}"), ("get_weather", "{}")]


def test_the_sdk_sees_the_in_band_failure():
    renderer = ResponsesStream(parse(stream=True), CTX)
    frames = [*renderer.start(), *renderer.feed(TextDelta(0, "Hel")),
              *renderer.error(GatewayError(ErrorKind.INTERNAL, "boom"))]
    with sdk_client(frames).responses.stream(model="m", input="hi") as events:
        seen = [event.type for event in events]
        with pytest.raises(RuntimeError, match="response.completed"):
            events.get_final_response()
    assert seen[-2:] == ["error", "response.failed"]
