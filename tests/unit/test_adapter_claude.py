"""The Anthropic adapter, with plain dicts in and plain dicts or bytes out: no server, no model. Where the
installed `anthropic` SDK is available, rendered shapes are also checked against its own types and its stream
accumulator, the code real clients run."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters import claude as cl
from adapters.base import RequestContext
from gateway.types import (
    Choice,
    ChoiceDone,
    Constraint,
    Done,
    ErrorKind,
    GatewayError,
    GenerationResult,
    ImagePart,
    InternalRequest,
    Message,
    ModelInfo,
    ModelList,
    PromptStarted,
    SamplingParams,
    TextDelta,
    ThinkingDelta,
    TokenizeResult,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)

CTX = RequestContext(request_id="r1", created=1700000000)
USER = [{"role": "user", "content": "hi"}]
WEATHER = {"name": "get_weather", "description": "d", "input_schema": {"type": "object"}}
BILLING = "x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;"
PNG = {"type": "base64", "media_type": "image/png", "data": "AAAA"}


def create(**extra: Any) -> dict[str, Any]:
    return {"model": "claude-sonnet-4-5", "max_tokens": 64, "messages": USER, **extra}


def convo(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return create(messages=list(messages), **extra)


def attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = obj[int(name)] if name.isdigit() else (obj[name] if isinstance(obj, dict) else getattr(obj, name))
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Parsing: good bodies


@pytest.mark.parametrize("body, path, expected", [
    (create(), "kind", "chat"),
    (create(), "model", "claude-sonnet-4-5"),
    (create(), "messages", [Message("user", "hi")]),
    (create(), "sampling", SamplingParams(max_tokens=64)),
    (create(), "stream", False),
    (create(), "think", None),
    (create(), "tool_choice", "auto"),
    (create(), "continue_final_message", False),
    (create(stream=True), "stream", True),
    (create(temperature=0.5, top_p=0.9, top_k=40), "sampling",
     SamplingParams(max_tokens=64, temperature=0.5, top_p=0.9, top_k=40)),
    (create(temperature=1), "sampling.temperature", 1),
    (create(stop_sequences=["END", "", "\n\nHuman:"]), "sampling.stop", ["END", "\n\nHuman:"]),
    (create(system="be brief"), "messages.0", Message("system", "be brief")),
    (create(system=[{"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
                    {"type": "text", "text": "b"}]), "messages.0", Message("system", "a\n\nb")),
    (create(system=[{"type": "text", "text": BILLING}, {"type": "text", "text": "You are Claude Code."}]),
     "messages.0", Message("system", BILLING + "\n\nYou are Claude Code.")),  # the prompt_rules strip it
    (create(system=""), "messages", [Message("user", "hi")]),
    (create(tools=[WEATHER]), "tools", [Tool("get_weather", "d", {"type": "object"})]),
    (create(tools=[{**WEATHER, "type": "custom", "strict": True, "cache_control": {"type": "ephemeral"},
                    "defer_loading": False}]), "tools", [Tool("get_weather", "d", {"type": "object"}, True)]),
    (create(tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 5},
                   {"type": "bash_20250124", "name": "bash"}, WEATHER]), "tools",
     [Tool("get_weather", "d", {"type": "object"})]),
    # a deferred tool is out of the prompt until a tool search's result references it (Claude Code's placeholder)
    (create(tools=[WEATHER, {"name": "DeferredToolPlaceholder", "description": "never call this tool",
                             "input_schema": {"type": "object"}, "defer_loading": True}]), "tools",
     [Tool("get_weather", "d", {"type": "object"})]),
    (convo({"role": "user", "content": "weather?"},
           {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "ToolSearch",
                                              "input": {"query": "weather"}}]},
           {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1", "content": [
               {"type": "tool_reference", "tool_name": "get_weather"}]}]},
           tools=[{**WEATHER, "defer_loading": True}, {**WEATHER, "name": "get_time", "defer_loading": True}]),
     "tools", [Tool("get_weather", "d", {"type": "object"})]),
    (convo({"role": "user", "content": "weather?"},
           {"role": "assistant", "content": [
               {"type": "server_tool_use", "id": "s1", "name": "tool_search_tool_regex", "input": {"query": "w"}},
               {"type": "tool_search_tool_result", "tool_use_id": "s1", "content": {
                   "type": "tool_search_tool_search_result",
                   "tool_references": [{"type": "tool_reference", "tool_name": "get_weather"}]}}]},
           tools=[{"type": "tool_search_tool_regex_20251119", "name": "tool_search_tool_regex"},
                  {**WEATHER, "defer_loading": True}]),
     "tools", [Tool("get_weather", "d", {"type": "object"})]),
    (create(tool_choice={"type": "auto", "disable_parallel_tool_use": True}), "tool_choice", "auto"),
    (create(tool_choice={"type": "any"}), "tool_choice", "required"),
    (create(tool_choice={"type": "none"}), "tool_choice", "none"),
    (create(tools=[WEATHER], tool_choice={"type": "tool", "name": "get_weather"}), "tool_choice", "get_weather"),
    (create(thinking={"type": "enabled", "budget_tokens": 2048}), "think", True),
    (create(thinking={"type": "disabled"}), "think", False),
    (create(thinking={"type": "adaptive", "display": "summarized"}), "think", None),
    (create(thinking={"type": "between_tools"}), "think", None),
    (create(output_config={"effort": "high"}), "constraint", None),
    (create(output_config={"format": {"type": "json_schema", "schema": {"type": "object"}}}), "constraint",
     Constraint("json_schema", {"type": "object"})),
    (create(metadata={"user_id": "user_abc"}, service_tier="auto", container=None, mcp_servers=[],
            context_management={"edits": []}, cache_control={"type": "ephemeral"}, inference_geo="us",
            speed="standard"), "model", "claude-sonnet-4-5"),
    (create(metadata={"user_id": None}), "model", "claude-sonnet-4-5"),
])
def test_parse_create(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(cl.parse_create(body, CTX), path) == expected


@pytest.mark.parametrize("body, expected", [
    # content as blocks; text blocks are separate pieces of text
    (convo({"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b",
                                                                        "cache_control": {"type": "ephemeral"}}]}),
     [Message("user", "a\n\nb")]),
    (convo({"role": "user", "content": []}), [Message("user", "")]),
    # images stay images, so the service can refuse them for models without vision
    (convo({"role": "user", "content": [{"type": "text", "text": "what is this"}, {"type": "image", "source": PNG}]}),
     [Message("user", "what is this", images=[ImagePart("data:image/png;base64,AAAA")])]),
    (convo({"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]}),
     [Message("user", "", images=[ImagePart("https://x/y.png")])]),
    # readable documents are text
    (convo({"role": "user", "content": [{"type": "document", "source": {
        "type": "text", "media_type": "text/plain", "data": "doc"}}, {"type": "text", "text": "sum it up"}]}),
     [Message("user", "doc\n\nsum it up")]),
    (convo({"role": "user", "content": [{"type": "document", "source": {"type": "content", "content": "doc"}}]}),
     [Message("user", "doc")]),
    (convo({"role": "user", "content": [{"type": "document", "source": {
        "type": "content", "content": [{"type": "text", "text": "p1"}, {"type": "image", "source": PNG}]}}]}),
     [Message("user", "p1", images=[ImagePart("data:image/png;base64,AAAA")])]),
    (convo({"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t",
                                         "content": [{"type": "text", "text": "found"}]}]}),
     [Message("user", "found")]),
    # tool use and results: arguments become a JSON string, results `tool` messages named after their call
    (convo({"role": "user", "content": "weather?"},
           {"role": "assistant", "content": [
               {"type": "text", "text": "Let me check."},
               {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
               {"type": "tool_use", "id": "toolu_2", "name": "get_time", "input": {}}]},
           {"role": "user", "content": [
               {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
               {"type": "tool_result", "tool_use_id": "toolu_2", "is_error": True,
                "content": [{"type": "text", "text": "no"}, {"type": "text", "text": "clock"}]},
               {"type": "text", "text": "<system-reminder>x</system-reminder>"}]}),
     [Message("user", "weather?"),
      Message("assistant", "Let me check.", tool_calls=[ToolCall("toolu_1", "get_weather", '{"city":"Paris"}'),
                                                         ToolCall("toolu_2", "get_time", "{}")]),
      Message("tool", "sunny", tool_call_id="toolu_1", name="get_weather"),
      Message("tool", "no\n\nclock", tool_call_id="toolu_2", name="get_time"),
      Message("user", "<system-reminder>x</system-reminder>")]),
    (convo({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_9"}]}),
     [Message("tool", "", tool_call_id="toolu_9")]),
    (convo({"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "image", "source": PNG}, {"type": "tool_reference", "tool_name": "x"}]}]}),
     [Message("tool", "", images=[ImagePart("data:image/png;base64,AAAA")], tool_call_id="t")]),
    # thinking is kept on the assistant turn; redacted thinking and server-tool blocks are dropped
    (convo({"role": "user", "content": "q"},
           {"role": "assistant", "content": [
               {"type": "thinking", "thinking": "hmm", "signature": "sig"},
               {"type": "redacted_thinking", "data": "xx"},
               {"type": "server_tool_use", "id": "srv_1", "name": "web_search", "input": {"query": "x"}},
               {"type": "web_search_tool_result", "tool_use_id": "srv_1", "content": []},
               {"type": "text", "text": "A."}]},
           {"role": "user", "content": "more"}),
     [Message("user", "q"), Message("assistant", "A.", thinking="hmm"), Message("user", "more")]),
    # consecutive turns of one role are one turn, as Anthropic combines them
    (convo({"role": "user", "content": "a"}, {"role": "user", "content": [{"type": "text", "text": "b"},
                                                                          {"type": "image", "source": PNG}]}),
     [Message("user", "a\n\nb", images=[ImagePart("data:image/png;base64,AAAA")])]),
    (convo({"role": "user", "content": "q"}, {"role": "assistant", "content": "x"},
           {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {"a": 1}}]}),
     [Message("user", "q"), Message("assistant", "x", tool_calls=[ToolCall("t", "f", '{"a":1}')])]),
    # a system message inside `messages` (typed by anthropic 2.12)
    (convo({"role": "system", "content": [{"type": "text", "text": "rules"}]}, {"role": "user", "content": "q"}),
     [Message("system", "rules"), Message("user", "q")]),
])
def test_parse_conversation(body: dict[str, Any], expected: list[Message]) -> None:
    assert cl.parse_create(body, CTX).messages == expected


@pytest.mark.parametrize("messages, prefill", [
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": "The answer is ("}], True),
    ([{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], False),
    ([{"role": "user", "content": "q"},
      {"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}]}], False),
    ([{"role": "user", "content": "q"}], False),
])
def test_a_last_assistant_message_is_a_prefill(messages: list[dict[str, Any]], prefill: bool) -> None:
    assert cl.parse_create(create(messages=messages), CTX).continue_final_message is prefill
    assert cl.parse_count_tokens(create(messages=messages), CTX).continue_final_message is prefill


def test_parse_count_tokens_renders_the_same_prompt() -> None:
    body = {"model": "m", "system": "s", "messages": USER, "tools": [WEATHER], "thinking": {"type": "disabled"},
            "tool_choice": {"type": "auto"}}
    req = cl.parse_count_tokens(body, CTX)
    assert req == InternalRequest(kind="tokenize", model="m", messages=[Message("system", "s"), Message("user", "hi")],
                                  tools=[Tool("get_weather", "d", {"type": "object"})])


def test_parse_models_pages_and_show() -> None:
    assert cl.parse_list_models(None, CTX) == InternalRequest(
        kind="list_models", render={"limit": 20, "after_id": None, "before_id": None})
    ctx = RequestContext("r", 0, query={"limit": "2", "after_id": "a", "beta": "true"}, method="GET")
    assert cl.parse_list_models(None, ctx).render == {"limit": 2, "after_id": "a", "before_id": None}
    ctx = RequestContext("r", 0, path_params={"model": "org/model:q4"}, method="GET")
    assert cl.parse_show_model(None, ctx) == InternalRequest(kind="show_model", model="org/model:q4")


def test_models_routes_answer_only_anthropic_clients() -> None:
    assert cl.is_anthropic(None, RequestContext("r", 0, headers={"anthropic-version": "2023-06-01"}))
    assert not cl.is_anthropic(None, RequestContext("r", 0, headers={"authorization": "Bearer k"}))


# ---------------------------------------------------------------------------------------------------------------
# Parsing: bad bodies


@pytest.mark.parametrize("body, param", [
    ([], None),
    ({"max_tokens": 5, "messages": USER}, "model"),
    (create(model=3), "model"),
    ({"model": "m", "messages": USER}, "max_tokens"),
    (create(max_tokens=0), "max_tokens"),
    (create(max_tokens=1.5), "max_tokens"),
    (create(max_tokens="64"), "max_tokens"),
    (create(max_tokens=True), "max_tokens"),
    ({"model": "m", "max_tokens": 5}, "messages"),
    (create(messages=[]), "messages"),
    (create(messages="hi"), "messages"),
    (create(messages=["hi"]), "messages.0"),
    (create(messages=[{"content": "x"}]), "messages.0.role"),
    (create(messages=[{"role": "robot", "content": "x"}]), "messages.0.role"),
    (create(messages=[{"role": "tool", "content": "x"}]), "messages.0.role"),
    (create(messages=[{"role": "user"}]), "messages.0.content"),
    (create(messages=[{"role": "user", "content": 5}]), "messages.0.content"),
    (create(messages=[{"role": "user", "content": ["x"]}]), "messages.0.content.0"),
    (create(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages.0.content.0.type"),
    (create(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "video"}]}]),
     "messages.0.content.1.type"),
    (create(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages.0.content.0.text"),
    (create(messages=[{"role": "user", "content": [{"type": "text", "text": 1}]}]), "messages.0.content.0.text"),
    (create(messages=[{"role": "system", "content": [{"type": "image", "source": PNG}]}]),
     "messages.0.content.0.type"),
    (create(messages=[{"role": "user", "content": [{"type": "image"}]}]), "messages.0.content.0.source"),
    (create(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "file", "file_id": "f"}}]}]),
     "messages.0.content.0.source.type"),
    (create(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "base64", "data": "x"}}]}]),
     "messages.0.content.0.source.media_type"),
    (create(messages=[{"role": "user", "content": [{"type": "image", "source": {"type": "url"}}]}]),
     "messages.0.content.0.source.url"),
    (create(messages=[{"role": "user", "content": [{"type": "document", "source": {
        "type": "base64", "media_type": "application/pdf", "data": "JVBERi0"}}]}]),
     "messages.0.content.0.source.type"),
    (create(messages=[{"role": "user", "content": [{"type": "document", "source": {"type": "content", "content": [
        {"type": "document", "source": {"type": "text", "data": "x"}}]}}]}]),
     "messages.0.content.0.source.content.0.type"),
    (create(messages=[{"role": "user", "content": [{"type": "search_result", "source": "s", "title": "t"}]}]),
     "messages.0.content.0.content"),
    (create(messages=[{"role": "assistant", "content": [{"type": "tool_use", "name": "f", "input": {}}]}]),
     "messages.0.content.0.id"),
    (create(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "input": {}}]}]),
     "messages.0.content.0.name"),
    (create(messages=[{"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f",
                                                         "input": "{}"}]}]), "messages.0.content.0.input"),
    (create(messages=[{"role": "user", "content": [{"type": "tool_result", "content": "x"}]}]),
     "messages.0.content.0.tool_use_id"),
    (create(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": 5}]}]),
     "messages.0.content.0.content"),
    (create(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [
        {"type": "tool_use", "id": "x", "name": "f", "input": {}}]}]}]), "messages.0.content.0.content.0.type"),
    (create(messages=[{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t",
                                                   "is_error": "yes"}]}]), "messages.0.content.0.is_error"),
    (create(messages=[{"role": "assistant", "content": [{"type": "thinking", "signature": "s"}]}]),
     "messages.0.content.0.thinking"),
    (create(system=5), "system"),
    (create(system=[{"type": "image", "source": PNG}]), "system.0.type"),
    (create(system=[{"type": "text"}]), "system.0.text"),
    (create(temperature=1.5), "temperature"),
    (create(temperature=-0.1), "temperature"),
    (create(temperature="warm"), "temperature"),
    (create(top_p=2), "top_p"),
    (create(top_k=-1), "top_k"),
    (create(top_k=1.5), "top_k"),
    (create(stop_sequences="END"), "stop_sequences"),
    (create(stop_sequences=["a", 1]), "stop_sequences.1"),
    (create(stream="yes"), "stream"),
    (create(metadata="u"), "metadata"),
    (create(metadata={"user_id": 5}), "metadata.user_id"),
    (create(tools={}), "tools"),
    (create(tools=["f"]), "tools.0"),
    (create(tools=[{"input_schema": {}}]), "tools.0.name"),
    (create(tools=[{"name": "f"}]), "tools.0.input_schema"),
    (create(tools=[{"name": "f", "input_schema": "{}"}]), "tools.0.input_schema"),
    (create(tools=[{"name": "f", "input_schema": {}, "description": 1}]), "tools.0.description"),
    (create(tools=[{"type": 5, "name": "f"}]), "tools.0.type"),
    (create(tools=[{**WEATHER, "defer_loading": "yes"}]), "tools.0.defer_loading"),
    (create(tool_choice="auto"), "tool_choice"),
    (create(tool_choice={}), "tool_choice.type"),
    (create(tool_choice={"type": "required"}), "tool_choice.type"),
    (create(tool_choice={"type": "tool"}), "tool_choice.name"),
    (create(tools=[WEATHER], tool_choice={"type": "tool", "name": "other"}), "tool_choice.name"),
    (create(tools=[{"type": "web_search_20250305", "name": "web_search"}],
            tool_choice={"type": "tool", "name": "web_search"}), "tool_choice.name"),
    (create(thinking=True), "thinking"),
    (create(thinking={}), "thinking.type"),
    (create(thinking={"type": "on"}), "thinking.type"),
    (create(thinking={"type": "enabled"}), "thinking.budget_tokens"),
    (create(thinking={"type": "enabled", "budget_tokens": "1024"}), "thinking.budget_tokens"),
    (create(output_config="json"), "output_config"),
    (create(output_config={"format": "json"}), "output_config.format"),
    (create(output_config={"format": {"type": "regex"}}), "output_config.format.type"),
    (create(output_config={"format": {"type": "json_schema"}}), "output_config.format.schema"),
])
def test_parse_create_rejects(body: Any, param: str | None) -> None:
    assert_invalid(cl.parse_create, body, param)


@pytest.mark.parametrize("body, param", [
    ({"messages": USER}, "model"),
    ({"model": "m"}, "messages"),
    ({"model": "m", "messages": USER, "tools": [{"name": "f"}]}, "tools.0.input_schema"),
])
def test_parse_count_tokens_rejects(body: Any, param: str) -> None:
    assert_invalid(cl.parse_count_tokens, body, param)


@pytest.mark.parametrize("query, param", [
    ({"limit": "0"}, "limit"),
    ({"limit": "1001"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"after_id": "a", "before_id": "b"}, "before_id"),
])
def test_parse_list_models_rejects(query: dict[str, str], param: str) -> None:
    assert_invalid(cl.parse_list_models, None, param, RequestContext("r", 0, query=query, method="GET"))


def assert_invalid(parse: Any, body: Any, param: str | None, ctx: RequestContext = CTX) -> None:
    with pytest.raises(GatewayError) as caught:
        parse(body, ctx)
    err = caught.value
    assert err.kind is ErrorKind.INVALID_REQUEST
    assert err.param == param
    if param is not None:
        assert f"`{param}`" in err.message


# ---------------------------------------------------------------------------------------------------------------
# Rendering finished results

USAGE = Usage(prompt_tokens=9, completion_tokens=2, cached_tokens=4)
USAGE_JSON = {"input_tokens": 5, "output_tokens": 2, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 4}
REQ = InternalRequest(kind="chat", model="claude-sonnet-4-5", sampling=SamplingParams(max_tokens=64))


def render(choice: Choice, usage: Usage = USAGE) -> dict[str, Any]:
    return cl.render_message(GenerationResult([choice], usage), REQ, CTX)


def test_render_message() -> None:
    assert render(Choice(0, text="Hi!")) == {
        "id": "msg_r1", "type": "message", "role": "assistant", "model": "claude-sonnet-4-5",
        "content": [{"type": "text", "text": "Hi!"}],
        "stop_reason": "end_turn", "stop_sequence": None,
        "usage": USAGE_JSON,
    }


@pytest.mark.parametrize("choice, content", [
    (Choice(0, text=""), [{"type": "text", "text": ""}]),
    (Choice(0, thinking="hmm", text="A."), [{"type": "thinking", "thinking": "hmm", "signature": "llm-gateway"},
                                            {"type": "text", "text": "A."}]),
    (Choice(0, thinking="hmm"), [{"type": "thinking", "thinking": "hmm", "signature": "llm-gateway"}]),
    (Choice(0, text="Checking.", tool_calls=[ToolCall("toolu_1", "get_weather", '{"city": "Paris"}'),
                                             ToolCall("toolu_2", "now", "")], finish_reason="tool_calls"),
     [{"type": "text", "text": "Checking."},
      {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
      {"type": "tool_use", "id": "toolu_2", "name": "now", "input": {}}]),
    (Choice(0, tool_calls=[ToolCall("toolu_1", "f", "{}")], finish_reason="tool_calls"),
     [{"type": "tool_use", "id": "toolu_1", "name": "f", "input": {}}]),
])
def test_render_message_blocks(choice: Choice, content: list[dict[str, Any]]) -> None:
    assert render(choice)["content"] == content


@pytest.mark.parametrize("arguments", ["[1, 2]", "{not json", '"text"'])
def test_render_message_refuses_arguments_that_are_not_an_object(arguments: str) -> None:
    with pytest.raises(GatewayError) as caught:
        render(Choice(0, tool_calls=[ToolCall("t", "f", arguments)], finish_reason="tool_calls"))
    assert caught.value.kind is ErrorKind.INTERNAL


@pytest.mark.parametrize("finish, sequence, used_tools, output, expected", [
    ("stop", None, False, 5, ("end_turn", None)),
    ("stop", "END", False, 5, ("stop_sequence", "END")),
    ("length", None, False, 64, ("max_tokens", None)),
    ("length", None, False, 10, ("model_context_window_exceeded", None)),
    ("tool_calls", None, True, 5, ("tool_use", None)),
    ("stop", None, True, 5, ("tool_use", None)),
    ("length", None, True, 64, ("max_tokens", None)),
    ("cancelled", None, False, 5, ("end_turn", None)),
    ("error", None, False, 5, ("end_turn", None)),
])
def test_stop_reason(finish: Any, sequence: str | None, used_tools: bool, output: int,
                     expected: tuple[str, str | None]) -> None:
    assert cl.stop_reason(finish, sequence, used_tools, output, 64) == expected


def test_render_message_stop_sequence() -> None:
    out = render(Choice(0, text="a", finish_reason="stop", stop_sequence="END"))
    assert (out["stop_reason"], out["stop_sequence"]) == ("stop_sequence", "END")
    out = render(Choice(0, text="a", finish_reason="length"), Usage(9, 64, 0))
    assert (out["stop_reason"], out["stop_sequence"]) == ("max_tokens", None)


def test_usage_reports_the_reused_prefix_as_cache_read() -> None:
    """Anthropic's input_tokens excludes cache reads: their sum is the prompt."""
    usage = cl.render_usage(Usage(prompt_tokens=100, completion_tokens=7, cached_tokens=60))
    assert usage == {"input_tokens": 40, "output_tokens": 7, "cache_creation_input_tokens": 0,
                     "cache_read_input_tokens": 60}
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == 100


def test_render_count_tokens() -> None:
    result = TokenizeResult([1, 2, 3], ["a", "b", "c"], 4096, "m")
    assert cl.render_count_tokens(result, InternalRequest(kind="tokenize"), CTX) == {"input_tokens": 3}


MODELS = ModelList([ModelInfo("a", 1700000000, aliases=["claude-x"], context_length=8192, max_model_len=4096),
                    ModelInfo("b", 0, context_length=2048), ModelInfo("c", 86400)])


def models_page(**render: Any) -> dict[str, Any]:
    req = InternalRequest(kind="list_models", render={"limit": 20, "after_id": None, "before_id": None, **render})
    return cl.render_models(MODELS, req, CTX)


def test_render_models() -> None:
    assert models_page() == {
        "data": [
            {"type": "model", "id": "a", "display_name": "a", "created_at": "2023-11-14T22:13:20Z",
             "lifecycle": "active", "max_input_tokens": 4096, "max_tokens": 4096},
            {"type": "model", "id": "claude-x", "display_name": "claude-x", "created_at": "2023-11-14T22:13:20Z",
             "lifecycle": "active", "max_input_tokens": 4096, "max_tokens": 4096},
            {"type": "model", "id": "b", "display_name": "b", "created_at": "1970-01-01T00:00:00Z",
             "lifecycle": "active", "max_input_tokens": 2048, "max_tokens": 2048},
            {"type": "model", "id": "c", "display_name": "c", "created_at": "1970-01-02T00:00:00Z",
             "lifecycle": "active", "max_input_tokens": None, "max_tokens": None},
        ],
        "has_more": False, "first_id": "a", "last_id": "c",
    }


@pytest.mark.parametrize("render, ids, has_more", [
    ({"limit": 2}, ["a", "claude-x"], True),
    ({"limit": 2, "after_id": "claude-x"}, ["b", "c"], False),
    ({"limit": 1, "after_id": "a"}, ["claude-x"], True),
    ({"limit": 5, "after_id": "c"}, [], False),
    ({"limit": 2, "before_id": "c"}, ["claude-x", "b"], True),
    ({"limit": 5, "before_id": "b"}, ["a", "claude-x"], False),
])
def test_render_models_pages_like_the_sdk_pager_expects(render: dict[str, Any], ids: list[str],
                                                        has_more: bool) -> None:
    page = models_page(**render)
    assert [m["id"] for m in page["data"]] == ids and page["has_more"] is has_more
    assert (page["first_id"], page["last_id"]) == ((ids[0], ids[-1]) if ids else (None, None))


def test_render_models_rejects_an_unknown_cursor() -> None:
    with pytest.raises(GatewayError) as caught:
        models_page(after_id="nope")
    assert caught.value.param == "after_id"


def test_render_model() -> None:
    info = ModelInfo("a", 1700000000, aliases=["claude-x"], context_length=8192)
    out = cl.render_model(info, InternalRequest(kind="show_model", model="claude-x"), CTX)
    assert out == {"type": "model", "id": "claude-x", "display_name": "claude-x",
                   "created_at": "2023-11-14T22:13:20Z", "lifecycle": "active", "max_input_tokens": 8192,
                   "max_tokens": 8192}


@pytest.mark.parametrize("kind, status, wire_type", [
    (ErrorKind.INVALID_REQUEST, 400, "invalid_request_error"),
    (ErrorKind.UNAUTHORIZED, 401, "authentication_error"),
    (ErrorKind.NOT_FOUND, 404, "not_found_error"),
    (ErrorKind.TOO_LARGE, 413, "request_too_large"),
    (ErrorKind.OVERLOADED, 429, "rate_limit_error"),
    (ErrorKind.INTERNAL, 500, "api_error"),
    (ErrorKind.UNAVAILABLE, 529, "overloaded_error"),
    (ErrorKind.TIMEOUT, 504, "timeout_error"),
])
def test_render_error(kind: ErrorKind, status: int, wire_type: str) -> None:
    err = GatewayError(kind, "boom", param="p")
    assert cl.render_error(err) == (status, {"type": "error", "error": {"type": wire_type, "message": "boom"}})


@pytest.mark.parametrize("message, details, wire", [
    ("This model's maximum context length is 4096 tokens. However, your prompt has 5000 tokens.",
     {"limit": 4096, "prompt_tokens": 5000}, "prompt is too long: 5000 tokens > 4096 maximum"),
    ("This model's maximum context length is 4096 tokens. However, you requested 4200 tokens.",
     {"limit": 4096, "prompt_tokens": 200, "max_tokens": 4000},
     "input length and `max_tokens` exceed context limit: 200 + 4000 > 4096, decrease input length or "
     "`max_tokens` and try again"),
    ("An input has 600 tokens; the embedding context holds 512.", {},
     "prompt is too long: An input has 600 tokens; the embedding context holds 512."),
])
def test_context_overflow_speaks_claudes_words(message: str, details: dict, wire: str) -> None:
    """Agents match these messages: the first makes Claude Code compact, the second lower max_tokens."""
    err = GatewayError(ErrorKind.CONTEXT_OVERFLOW, message, "messages", details=details)
    assert cl.render_error(err) == (400, {"type": "error", "error": {"type": "invalid_request_error",
                                                                     "message": wire}})


# ---------------------------------------------------------------------------------------------------------------
# Streaming


def run_stream(events: list[Any], req: InternalRequest = REQ) -> list[bytes]:
    renderer = cl.MessagesStream(req, CTX)
    frames = renderer.start()
    for event in events:
        frames += renderer.feed(event)
    return frames


def parse_frames(frames: list[bytes]) -> list[tuple[str, Any]]:
    """Check that every frame is one named SSE event, then return (name, payload) pairs."""
    out = []
    for frame in frames:
        assert frame.startswith(b"event: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 3
        head, data = frame[:-2].decode().split("\n")
        assert data.startswith("data: ")
        payload = json.loads(data[len("data: "):])
        assert head[len("event: "):] == payload["type"]
        out.append((payload["type"], payload))
    return out


def test_stream_bytes_for_a_small_run() -> None:
    frames = run_stream([TextDelta(0, "Hel"), TextDelta(0, "lo"), ChoiceDone(0, "stop", None, USAGE), Done(USAGE)])
    assert frames == [
        b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_r1","type":"message",'
        b'"role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"stop_sequence":null,'
        b'"usage":{"input_tokens":0,"output_tokens":0,"cache_creation_input_tokens":0,'
        b'"cache_read_input_tokens":0}}}\n\n',
        b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
        b'"content_block":{"type":"text","text":""}}\n\n',
        b'event: ping\ndata: {"type": "ping"}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"Hel"}}\n\n',
        b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
        b'"delta":{"type":"text_delta","text":"lo"}}\n\n',
        b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n',
        b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
        b'"stop_sequence":null},"usage":{"input_tokens":5,"output_tokens":2,"cache_creation_input_tokens":0,'
        b'"cache_read_input_tokens":4}}\n\n',
        b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    ]


THINK_AND_CALL = [
    ThinkingDelta(0, "Let me "),
    ThinkingDelta(0, "think."),
    TextDelta(0, "Checking."),
    ToolCallDelta(0, 0, id="toolu_a", name="get_weather", arguments=""),
    ToolCallDelta(0, 0, arguments='{"city":'),
    ToolCallDelta(0, 0, arguments='"Paris"}'),
    ToolCallDelta(0, 1, id="toolu_b", name="now", arguments="{}"),
    ChoiceDone(0, "tool_calls", None, Usage(20, 30, 0)),
    Done(Usage(20, 30, 0)),
]


def test_stream_block_state_machine() -> None:
    events = parse_frames(run_stream(THINK_AND_CALL))
    assert [(name, {k: v for k, v in data.items() if k != "type"}) for name, data in events[1:]] == [
        ("content_block_start", {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}}),
        ("ping", {}),
        ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "Let me "}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "thinking_delta", "thinking": "think."}}),
        ("content_block_delta", {"index": 0, "delta": {"type": "signature_delta", "signature": "llm-gateway"}}),
        ("content_block_stop", {"index": 0}),
        ("content_block_start", {"index": 1, "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"index": 1, "delta": {"type": "text_delta", "text": "Checking."}}),
        ("content_block_stop", {"index": 1}),
        ("content_block_start", {"index": 2, "content_block": {"type": "tool_use", "id": "toolu_a",
                                                               "name": "get_weather", "input": {}}}),
        ("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '{"city":'}}),
        ("content_block_delta", {"index": 2, "delta": {"type": "input_json_delta", "partial_json": '"Paris"}'}}),
        ("content_block_stop", {"index": 2}),
        ("content_block_start", {"index": 3, "content_block": {"type": "tool_use", "id": "toolu_b", "name": "now",
                                                               "input": {}}}),
        ("content_block_delta", {"index": 3, "delta": {"type": "input_json_delta", "partial_json": "{}"}}),
        ("content_block_stop", {"index": 3}),
        ("message_delta", {"delta": {"stop_reason": "tool_use", "stop_sequence": None},
                           "usage": {"input_tokens": 20, "output_tokens": 30, "cache_creation_input_tokens": 0,
                                     "cache_read_input_tokens": 0}}),
        ("message_stop", {}),
    ]


@pytest.mark.parametrize("events, reason", [
    ([TextDelta(0, "a"), ChoiceDone(0, "stop", "END", USAGE), Done(USAGE)], ("stop_sequence", "END")),
    ([TextDelta(0, "a"), ChoiceDone(0, "length", None, Usage(9, 64, 0)), Done(Usage(9, 64, 0))],
     ("max_tokens", None)),
    ([ToolCallDelta(0, 0, id="t", name="f", arguments="{}"), ChoiceDone(0, "stop", None, USAGE), Done(USAGE)],
     ("tool_use", None)),
])
def test_stream_stop_reason(events: list[Any], reason: tuple[str, str | None]) -> None:
    delta = parse_frames(run_stream(events))[-2][1]
    assert (delta["delta"]["stop_reason"], delta["delta"]["stop_sequence"]) == reason


def test_stream_without_output_still_has_one_text_block() -> None:
    events = parse_frames(run_stream([TextDelta(0, ""), ChoiceDone(0, "stop", None, USAGE), Done(USAGE)]))
    assert [name for name, _ in events] == ["message_start", "content_block_start", "ping", "content_block_stop",
                                            "message_delta", "message_stop"]
    assert events[1][1]["content_block"] == {"type": "text", "text": ""}


def test_stream_done_without_choice_done_still_closes_the_blocks() -> None:
    events = parse_frames(run_stream([TextDelta(0, "a"), Done(USAGE)]))
    assert [name for name, _ in events][-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_stream_error_keepalive_and_close() -> None:
    renderer = cl.MessagesStream(REQ, CTX)
    renderer.start()
    renderer.feed(PromptStarted(0, 3, 0))
    assert renderer.keepalive() == [b'event: ping\ndata: {"type": "ping"}\n\n']
    assert renderer.feed(TextDelta(0, "a"))
    frames = renderer.error(GatewayError(ErrorKind.OVERLOADED, "busy"))
    assert frames == [b'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"busy"}}\n\n']
    assert renderer.feed(TextDelta(0, "late")) == []
    assert renderer.feed(Done(Usage())) == []
    assert renderer.error(GatewayError(ErrorKind.INTERNAL, "x")) == []


def test_stream_ends_once() -> None:
    renderer = cl.MessagesStream(REQ, CTX)
    assert len(renderer.feed(Done(USAGE))) == 6  # message_start (never sent yet) and the five closing events
    assert renderer.feed(Done(USAGE)) == []
    assert renderer.error(GatewayError(ErrorKind.INTERNAL, "x")) == []


def test_message_start_waits_for_the_prompt_and_carries_its_usage() -> None:
    renderer = cl.MessagesStream(REQ, CTX)
    assert renderer.start() == []
    assert renderer.keepalive() == [b": ping\n\n"]  # a comment: `event: ping` may not precede message_start
    (frame,) = renderer.feed(PromptStarted(0, 30, 12))
    data = json.loads(frame.decode().split("data: ", 1)[1])
    assert data["type"] == "message_start"
    assert data["message"]["usage"]["input_tokens"] == 18 and data["message"]["usage"]["cache_read_input_tokens"] == 12
    assert renderer.keepalive() == [cl.PING]


def test_stream_ignores_deltas_after_the_choice_ended() -> None:
    renderer = cl.MessagesStream(REQ, CTX)
    renderer.feed(ChoiceDone(0, "stop", None, USAGE))
    assert renderer.feed(TextDelta(0, "late")) == []


# ---------------------------------------------------------------------------------------------------------------
# The SDK's own view: its types validate what we render and its stream helper rebuilds the same message


def test_the_sdk_validates_a_rendered_message() -> None:
    types = pytest.importorskip("anthropic.types")
    choice = Choice(0, thinking="hmm", text="Checking.", tool_calls=[ToolCall("toolu_1", "f", '{"a":1}')],
                    finish_reason="tool_calls")
    message = types.Message.model_validate(render(choice))
    assert [block.type for block in message.content] == ["thinking", "text", "tool_use"]
    assert message.content[2].input == {"a": 1} and message.stop_reason == "tool_use"
    assert message.usage.cache_read_input_tokens == 4
    page = models_page()
    assert [types.ModelInfo.model_validate(m).created_at.year for m in page["data"]] == [2023, 2023, 1970, 1970]


def test_the_sdk_stream_helper_rebuilds_the_message() -> None:
    pytest.importorskip("anthropic")
    pydantic = pytest.importorskip("pydantic")
    from anthropic._streaming import SSEDecoder
    from anthropic.lib.streaming._messages import accumulate_event
    from anthropic.types import RawMessageStreamEvent

    adapter = pydantic.TypeAdapter(RawMessageStreamEvent)
    snapshot, json_bufs = None, {}
    for sse in SSEDecoder().iter_bytes(iter(run_stream(THINK_AND_CALL))):
        if sse.event == "ping":
            continue
        event = adapter.validate_python(sse.json())
        snapshot = accumulate_event(event=event, current_snapshot=snapshot, json_bufs=json_bufs)
    assert snapshot is not None
    assert [block.type for block in snapshot.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, weather, now = snapshot.content
    assert (thinking.thinking, thinking.signature) == ("Let me think.", "llm-gateway")
    assert text.text == "Checking."
    assert (weather.id, weather.name, weather.input) == ("toolu_a", "get_weather", {"city": "Paris"})
    assert now.input == {}
    assert snapshot.stop_reason == "tool_use"
    assert (snapshot.usage.input_tokens, snapshot.usage.output_tokens) == (20, 30)


# ---------------------------------------------------------------------------------------------------------------
# Routes


def test_routes() -> None:
    table = {(r.method, r.path): r for r in cl.ROUTES}
    assert set(table) == {("POST", "/v1/messages"), ("POST", "/v1/messages/count_tokens"), ("GET", "/v1/models"),
                          ("GET", "/v1/models/<path:model>")}
    assert all(r.family == "anthropic" and r.render_error is cl.render_error for r in cl.ROUTES)
    assert table["POST", "/v1/messages"].stream is cl.MessagesStream
    assert table["POST", "/v1/messages/count_tokens"].stream is None
    assert {r.path for r in cl.ROUTES if r.body == "none"} == {"/v1/models", "/v1/models/<path:model>"}
    assert {r.path for r in cl.ROUTES if r.accepts is cl.is_anthropic} == {"/v1/models", "/v1/models/<path:model>"}


def test_tool_use_ids_read_like_claudes() -> None:
    assert cl.tool_use_id("call_abc123") == "toolu_abc123"
    assert cl.tool_use_id("toolu_01xyz") == "toolu_01xyz"  # ids the client sent back stay as they are
