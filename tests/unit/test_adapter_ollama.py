"""The Ollama adapter, with plain dicts in and plain dicts or bytes out: no server, no model."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from ollama import (
    ChatResponse,
    EmbeddingsResponse,
    EmbedResponse,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    ProgressResponse,
    ShowResponse,
)

from adapters import ollama as ol
from adapters import ollama_models as om
from adapters.base import RequestContext
from gateway.types import (
    Choice,
    ChoiceDone,
    Constraint,
    Done,
    EmbeddingResult,
    ErrorKind,
    GatewayError,
    GenerationResult,
    ImagePart,
    InternalRequest,
    LoadResult,
    Message,
    ModelChange,
    ModelInfo,
    ModelList,
    Progress,
    RunningList,
    RunningModel,
    SamplingParams,
    TextDelta,
    ThinkingDelta,
    Timings,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
    VersionResult,
)

CTX = RequestContext(request_id="r1", created=1700000000)
CREATED_AT = "2023-11-14T22:13:20Z"
USER = [{"role": "user", "content": "hi"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "d",
                                            "parameters": {"type": "object"}}}


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **extra}


def generate(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "Once", **extra}


def attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = obj[int(name)] if name.isdigit() else (obj[name] if isinstance(obj, dict) else getattr(obj, name))
    return obj


def assert_invalid(parse: Any, body: Any, param: str | None) -> None:
    with pytest.raises(GatewayError) as caught:
        parse(body, CTX)
    err = caught.value
    assert err.kind is ErrorKind.INVALID_REQUEST
    assert err.param == param
    if param is not None:
        assert f"`{param}`" in err.message


# ---------------------------------------------------------------------------------------------------------------
# Parsing: chat


@pytest.mark.parametrize("body, path, expected", [
    (chat(), "kind", "chat"),
    (chat(), "model", "m"),
    (chat(model="llama3.2:latest"), "model", "llama3.2:latest"),
    (chat(), "messages", [Message(role="user", content="hi")]),
    (chat(), "stream", True),
    (chat(stream=False), "stream", False),
    (chat(), "keep_alive", None),
    (chat(), "truncate", "drop_turns"),
    (chat(truncate=False), "truncate", "error"),
    (chat(), "think", None),
    (chat(think=False), "think", False),
    (chat(think=True), "think", True),
    (chat(think="high"), "think", True),
    (chat(think="low"), "template_kwargs", {"reasoning_effort": "low"}),
    (chat(format="json"), "constraint", Constraint("json")),
    (chat(format={"type": "object"}), "constraint", Constraint("json_schema", {"type": "object"})),
    (chat(format=""), "constraint", None),
    (chat(tools=[WEATHER]), "tools", [Tool("get_weather", "d", {"type": "object"})]),
    (chat(tools=[]), "tools", []),
    (chat(messages=[{"role": "USER", "content": "x"}]), "messages.0.role", "user"),
    (chat(messages=[{"role": "system"}]), "messages.0.content", ""),
    (chat(messages=[{"role": "user", "content": "what", "images": [PNG]}]), "messages.0.images",
     [ImagePart(f"data:image/png;base64,{PNG}")]),
    (chat(messages=[{"role": "user", "content": "x", "images": ["/9j/4AAQ"]}]), "messages.0.images.0.url",
     "data:image/jpeg;base64,/9j/4AAQ"),
    (chat(messages=[{"role": "user", "content": "x", "images": ["AAAA"]}]), "messages.0.images.0.url",
     "data:application/octet-stream;base64,AAAA"),
    (chat(messages=[{"role": "user", "content": "x", "images": ["data:image/gif;base64,R0lG"]}]),
     "messages.0.images.0.url", "data:image/gif;base64,R0lG"),
    (chat(messages=[{"role": "assistant", "content": "", "thinking": "hmm", "tool_calls": [
        {"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris", "days": 2}}}]}]),
     "messages.0", Message(role="assistant", content="", thinking="hmm",
                           tool_calls=[ToolCall("", "get_weather", '{"city":"Paris","days":2}')])),
    (chat(messages=[{"role": "assistant", "tool_calls": [
        {"id": "call_1", "function": {"name": "f", "arguments": '{"a":1}'}}]}]),
     "messages.0.tool_calls", [ToolCall("call_1", "f", '{"a":1}')]),
    (chat(messages=[{"role": "tool", "content": "sunny", "tool_name": "get_weather", "tool_call_id": "call_1"}]),
     "messages.0", Message(role="tool", content="sunny", name="get_weather", tool_call_id="call_1")),
    (chat(logprobs=True, top_logprobs=3), "sampling.logprobs", True),
    (chat(logprobs=True, top_logprobs=3), "sampling.top_logprobs", 3),
    (chat(top_logprobs=3), "sampling.top_logprobs", 0),
    (chat(shift=False, unknown_field=1, options=None), "kind", "chat"),
])
def test_parse_chat(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(ol.parse_chat(body, CTX), path) == expected


@pytest.mark.parametrize("body, kind, keep_alive", [
    ({"model": "m"}, "load_model", None),
    ({"model": "m", "messages": []}, "load_model", None),
    ({"model": "m", "messages": None, "keep_alive": "5m"}, "load_model", 300.0),
    ({"model": "m", "messages": [], "keep_alive": 0}, "unload_model", 0.0),
    ({"model": "m", "messages": [], "keep_alive": 0.0}, "unload_model", 0.0),
    ({"model": "m", "messages": [], "keep_alive": "0s"}, "unload_model", 0.0),
    ({"model": "m", "messages": [], "keep_alive": -1}, "load_model", -1.0),
])
def test_chat_without_messages_loads_or_unloads(body: dict[str, Any], kind: str, keep_alive: float | None) -> None:
    req = ol.parse_chat(body, CTX)
    assert (req.kind, req.keep_alive, req.model) == (kind, keep_alive, "m")


@pytest.mark.parametrize("body, param", [
    ([], None),
    ({"messages": USER}, "model"),
    (chat(model=5), "model"),
    (chat(messages="hi"), "messages"),
    (chat(messages=["hi"]), "messages[0]"),
    (chat(messages=[{"content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "developer", "content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": ["x"]}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": "x", "images": "AAAA"}]), "messages[0].images"),
    (chat(messages=[{"role": "user", "content": "x", "images": ["not base64!"]}]), "messages[0].images[0]"),
    (chat(messages=[{"role": "user", "content": "x", "images": [""]}]), "messages[0].images[0]"),
    (chat(messages=[{"role": "user", "content": "x", "images": [5]}]), "messages[0].images[0]"),
    (chat(messages=[{"role": "assistant", "tool_calls": {}}]), "messages[0].tool_calls"),
    (chat(messages=[{"role": "assistant", "tool_calls": [{}]}]), "messages[0].tool_calls[0].function"),
    (chat(messages=[{"role": "assistant", "tool_calls": [{"function": {"arguments": {}}}]}]),
     "messages[0].tool_calls[0].function.name"),
    (chat(messages=[{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    (chat(messages=[{"role": "tool", "content": "x", "tool_name": 1}]), "messages[0].tool_name"),
    (chat(messages=[{"role": "assistant", "content": "x", "thinking": 1}]), "messages[0].thinking"),
    (chat(stream="yes"), "stream"),
    (chat(truncate="no"), "truncate"),
    (chat(shift=1), "shift"),
    (chat(think="extreme"), "think"),
    (chat(think=1), "think"),
    (chat(format="yaml"), "format"),
    (chat(format=["json"]), "format"),
    (chat(tools={}), "tools"),
    (chat(tools=["f"]), "tools[0]"),
    (chat(tools=[{"type": "code"}]), "tools[0].type"),
    (chat(tools=[{"type": "function"}]), "tools[0].function"),
    (chat(tools=[{"type": "function", "function": {"description": "d"}}]), "tools[0].function.name"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
     "tools[0].function.parameters"),
    (chat(logprobs="yes"), "logprobs"),
    (chat(top_logprobs=21), "top_logprobs"),
    (chat(top_logprobs=-1), "top_logprobs"),
    (chat(keep_alive="soon"), "keep_alive"),
    (chat(keep_alive=True), "keep_alive"),
    (chat(keep_alive=[1]), "keep_alive"),
    (chat(options=[]), "options"),
    (chat(options={"temperature": "hot"}), "options.temperature"),
])
def test_parse_chat_rejects(body: Any, param: str | None) -> None:
    assert_invalid(ol.parse_chat, body, param)


def test_invalid_think_value_keeps_ollamas_words() -> None:
    """The CLI keeps its REPL going when the error text contains "invalid think value"."""
    with pytest.raises(GatewayError) as caught:
        ol.parse_chat(chat(think="extreme"), CTX)
    assert "invalid think value" in caught.value.message


# ---------------------------------------------------------------------------------------------------------------
# Parsing: generate


@pytest.mark.parametrize("body, path, expected", [
    (generate(), "kind", "chat"),
    (generate(), "messages", [Message(role="user", content="Once")]),
    (generate(system="Be a pirate."), "messages",
     [Message(role="system", content="Be a pirate."), Message(role="user", content="Once")]),
    (generate(images=[PNG]), "messages.0.images", [ImagePart(f"data:image/png;base64,{PNG}")]),
    (generate(system="", template="", context=[], suffix="", options=None), "messages",
     [Message(role="user", content="Once")]),
    (generate(raw=True), "kind", "completion"),
    (generate(raw=True), "prompts", ["Once"]),
    (generate(raw=True), "messages", []),
    (generate(raw=True, suffix="end"), "suffix", None),
    (generate(suffix="return x"), "kind", "completion"),
    (generate(suffix="return x"), "suffix", "return x"),
    (generate(suffix="return x"), "prompts", ["Once"]),
    (generate(), "stream", True),
    (generate(stream=False), "stream", False),
    (generate(format="json"), "constraint", Constraint("json")),
    (generate(think="medium"), "template_kwargs.reasoning_effort", "medium"),
    (generate(keep_alive="1h30m"), "keep_alive", 5400.0),
    (generate(options={"num_predict": 4, "temperature": 0}), "sampling",
     SamplingParams(max_tokens=4, temperature=0.0)),
])
def test_parse_generate(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(ol.parse_generate(body, CTX), path) == expected


@pytest.mark.parametrize("body, kind", [
    ({"model": "m"}, "load_model"),
    ({"model": "m", "prompt": "", "suffix": "", "system": "", "template": "", "options": None}, "load_model"),
    ({"model": "m", "prompt": "", "keep_alive": "0s"}, "unload_model"),
    ({"model": "m", "prompt": "", "keep_alive": 0}, "unload_model"),
    ({"model": "m", "prompt": "", "images": [PNG]}, "load_model"),
])
def test_generate_without_prompt_loads_or_unloads(body: dict[str, Any], kind: str) -> None:
    assert ol.parse_generate(body, CTX).kind == kind


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x"}, "model"),
    (generate(prompt=5), "prompt"),
    (generate(system=1), "system"),
    (generate(suffix=1), "suffix"),
    (generate(raw="yes"), "raw"),
    (generate(raw=True, system="s"), "raw"),
    (generate(template="{{ .Prompt }}"), "template"),
    (generate(template=1), "template"),
    (generate(context=[1, 2, 3]), "context"),
    (generate(context="1,2"), "context"),
    (generate(raw=True, images=[PNG]), "images"),
    (generate(suffix="x", images=[PNG]), "images"),
    (generate(images=[1]), "images[0]"),
    (generate(options={"num_predict": "10"}), "options.num_predict"),
])
def test_parse_generate_rejects(body: Any, param: str | None) -> None:
    assert_invalid(ol.parse_generate, body, param)


# ---------------------------------------------------------------------------------------------------------------
# keep_alive and options


@pytest.mark.parametrize("value, seconds", [
    (None, None),
    ("5m", 300.0),
    ("1h30m", 5400.0),
    ("300ms", 0.3),
    ("0s", 0.0),
    ("5m0s", 300.0),
    (10, 10.0),
    (2.5, 2.5),
    (0, 0.0),
    (0.0, 0.0),
    (-1, -1.0),
    (-0.5, -1.0),
    ("-5m", -1.0),
])
def test_keep_alive(value: Any, seconds: float | None) -> None:
    parsed = ol.parse_keep_alive(value)
    assert parsed == pytest.approx(seconds) if seconds is not None else parsed is None


@pytest.mark.parametrize("value", ["soon", "5x", "", "m", True, [], {}])
def test_keep_alive_rejects(value: Any) -> None:
    with pytest.raises(GatewayError) as caught:
        ol.parse_keep_alive(value)
    assert caught.value.param == "keep_alive" and "`keep_alive`" in caught.value.message


@pytest.mark.parametrize("options, path, expected", [
    ({"num_predict": 10}, "sampling.max_tokens", 10),
    ({"num_predict": -1}, "sampling.max_tokens", None),
    ({"num_predict": -2}, "sampling.max_tokens", None),
    ({"num_predict": 0}, "sampling.max_tokens", None),
    ({"num_predict": 12.9}, "sampling.max_tokens", 12),  # Go's int conversion truncates
    ({"temperature": 0}, "sampling.temperature", 0.0),
    ({"temperature": 0.7, "top_k": 40, "top_p": 0.9, "min_p": 0.05, "typical_p": 1, "repeat_penalty": 1.1,
      "repeat_last_n": 64, "presence_penalty": 0.5, "frequency_penalty": -0.5, "seed": 42}, "sampling",
     SamplingParams(temperature=0.7, top_k=40, top_p=0.9, min_p=0.05, typical_p=1.0, repeat_penalty=1.1,
                    repeat_last_n=64, presence_penalty=0.5, frequency_penalty=-0.5, seed=42)),
    ({"seed": -1}, "sampling.seed", None),
    ({"stop": ["\n", "", "END"]}, "sampling.stop", ["\n", "END"]),
    ({"num_ctx": 2048}, "num_ctx", 2048),
    ({"num_ctx": 0}, "num_ctx", None),
    ({"num_thread": 8}, "load_options", {"n_threads": 8}),
    ({"num_thread": 0}, "load_options", {}),
    ({"num_gpu": 0}, "load_options", {"n_gpu_layers": 0}),
    ({"num_gpu": 99}, "load_options", {"n_gpu_layers": 99}),
    ({"num_gpu": -1}, "load_options", {}),
    ({"num_keep": 4, "num_batch": 512, "main_gpu": 0, "use_mmap": True, "draft_num_predict": 4}, "sampling",
     SamplingParams()),
    ({"mirostat": 2, "tfs_z": 1.0, "penalize_newline": True, "low_vram": False, "unknown": "x"}, "sampling",
     SamplingParams()),
    ({"temperature": None, "stop": None}, "sampling", SamplingParams()),
])
def test_options(options: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(ol.parse_chat(chat(options=options), CTX), path) == expected


@pytest.mark.parametrize("options, param", [
    ({"temperature": "0.5"}, "options.temperature"),
    ({"temperature": True}, "options.temperature"),
    ({"num_predict": "10"}, "options.num_predict"),
    ({"num_ctx": False}, "options.num_ctx"),
    ({"seed": [1]}, "options.seed"),
    ({"stop": "\n"}, "options.stop"),
    ({"stop": ["a", 1]}, "options.stop[1]"),
    ({"use_mmap": 1}, "options.use_mmap"),
    ({"main_gpu": "0"}, "options.main_gpu"),
])
def test_options_reject_wrong_types(options: dict[str, Any], param: str) -> None:
    assert_invalid(ol.parse_chat, chat(options=options), param)


# ---------------------------------------------------------------------------------------------------------------
# Parsing: embeddings, model views and changes


@pytest.mark.parametrize("body, path, expected", [
    ({"model": "e", "input": "red"}, "prompts", ["red"]),
    ({"model": "e", "input": ["red", "blue"]}, "prompts", ["red", "blue"]),
    ({"model": "e", "input": "red"}, "kind", "embedding"),
    ({"model": "e", "input": "red"}, "truncate", "drop_turns"),
    ({"model": "e", "input": "red", "truncate": False}, "truncate", "error"),
    ({"model": "e", "input": "red"}, "render.dimensions", 0),
    ({"model": "e", "input": "red", "dimensions": 64}, "render.dimensions", 64),
    ({"model": "e", "input": "red", "keep_alive": "1m", "options": {"num_ctx": 512}}, "keep_alive", 60.0),
    ({"model": "e", "input": "red", "options": {"num_ctx": 512}}, "num_ctx", 512),
    ({"model": "e"}, "kind", "load_model"),
    ({"model": "e", "input": ""}, "kind", "load_model"),
    ({"model": "e", "input": []}, "kind", "load_model"),
    ({"model": "e", "input": [], "keep_alive": 0}, "kind", "load_model"),
])
def test_parse_embed(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(ol.parse_embed(body, CTX), path) == expected


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": "e", "input": 5}, "input"),
    ({"model": "e", "input": [1, 2]}, "input[0]"),
    ({"model": "e", "input": ["a", ""]}, "input[1]"),
    ({"model": "e", "input": "x", "truncate": "yes"}, "truncate"),
    ({"model": "e", "input": "x", "dimensions": -1}, "dimensions"),
    ({"model": "e", "input": "x", "dimensions": 1.5}, "dimensions"),
    ({"model": "e", "input": "x", "options": {"num_ctx": "big"}}, "options.num_ctx"),
])
def test_parse_embed_rejects(body: Any, param: str) -> None:
    assert_invalid(ol.parse_embed, body, param)


def test_parse_legacy_embeddings() -> None:
    req = ol.parse_embeddings({"model": "e", "prompt": "red", "keep_alive": "2m"}, CTX)
    assert (req.kind, req.prompts, req.keep_alive) == ("embedding", ["red"], 120.0)
    assert ol.parse_embeddings({"model": "e", "prompt": ""}, CTX).kind == "load_model"
    assert_invalid(ol.parse_embeddings, {"model": "e", "prompt": ["red"]}, "prompt")


def test_parse_queries() -> None:
    assert ol.parse_banner(None, CTX) == InternalRequest(kind="health")
    assert ol.parse_version(None, CTX) == InternalRequest(kind="version")
    assert om.parse_tags(None, CTX) == InternalRequest(kind="list_models")
    assert om.parse_ps(None, CTX) == InternalRequest(kind="list_running")


@pytest.mark.parametrize("body, model, render", [
    ({"model": "m"}, "m", {"verbose": False, "system": "", "options": {}}),
    ({"model": "", "name": "m", "system": "", "template": "", "verbose": True, "options": None}, "m",
     {"verbose": True, "system": "", "options": {}}),
    ({"model": "m", "system": "Be brief.", "options": {"temperature": 1, "bogus": 1}}, "m",
     {"verbose": False, "system": "Be brief.", "options": {"temperature": 1.0}}),
])
def test_parse_show(body: dict[str, Any], model: str, render: dict[str, Any]) -> None:
    assert om.parse_show(body, CTX) == InternalRequest(kind="show_model", model=model, render=render)


@pytest.mark.parametrize("parse, body, param", [
    (om.parse_show, {}, "model"),
    (om.parse_show, {"model": "", "name": ""}, "model"),
    (om.parse_show, {"model": 1}, "model"),
    (om.parse_show, {"model": "m", "verbose": "yes"}, "verbose"),
    (om.parse_show, {"model": "m", "options": {"top_k": "x"}}, "options.top_k"),
    (om.parse_copy, {"source": "a"}, "destination"),
    (om.parse_copy, {"destination": "b"}, "source"),
    (om.parse_copy, {"source": "", "destination": "b"}, "source"),
    (om.parse_delete, {}, "model"),
    (om.parse_delete, {"name": 5}, "name"),
    (om.parse_pull, {"insecure": False}, "model"),
    (om.parse_pull, {"model": "m", "insecure": "no"}, "insecure"),
    (om.parse_pull, {"model": "m", "stream": "no"}, "stream"),
    (om.parse_create, {"from": "m"}, "model"),
    (om.parse_create, {"model": "x"}, "from"),
    (om.parse_create, {"model": "x", "files": {"m.gguf": "sha256:abc"}}, "files"),
    (om.parse_create, {"model": "x", "from": "m", "quantize": "q4_K_M"}, "quantize"),
    (om.parse_create, {"model": "x", "from": "m", "adapters": {"a.gguf": "sha256:abc"}}, "adapters"),
    (om.parse_create, {"model": "x", "from": "m", "messages": [{"role": "user", "content": "hi"}]}, "messages"),
    (om.parse_create, {"model": "x", "from": "m", "parameters": {"temperature": "hot"}}, "parameters.temperature"),
    (om.parse_create, {"model": "x", "from": "m", "system": 1}, "system"),
    (om.parse_push, {"model": "m"}, None),
    (om.parse_blob_upload, None, None),
])
def test_model_changes_reject(parse: Any, body: Any, param: str | None) -> None:
    assert_invalid(parse, body, param)


def test_parse_model_changes() -> None:
    copy = om.parse_copy({"source": "a", "destination": "b:v1"}, CTX)
    assert (copy.kind, copy.change) == ("copy_model", ModelChange("copy", name="b:v1", source="a"))
    for body in ({"model": "a"}, {"name": "a"}, {"model": "", "name": "a"}):
        delete = om.parse_delete(body, CTX)
        assert (delete.kind, delete.change) == ("delete_model", ModelChange("delete", name="a"))
    pull = om.parse_pull({"name": "m", "username": "", "password": ""}, CTX)
    assert (pull.kind, pull.stream, pull.change) == ("pull_model", True, ModelChange("pull", name="m"))
    pull = om.parse_pull({"model": "m", "insecure": True, "stream": False}, CTX)
    assert (pull.stream, pull.change) == (False, ModelChange("pull", name="m", insecure=True))
    create = om.parse_create({"model": "pirate", "from": "/models/x.gguf", "system": "Arr.", "template": "{{ x }}",
                              "parameters": {"temperature": 0, "num_predict": 5, "stop": ["\n"], "bogus": 1},
                              "license": "MIT", "files": {}, "stream": False}, CTX)
    assert (create.kind, create.stream) == ("create_model", False)
    assert create.change == ModelChange("create", name="pirate", source="/models/x.gguf", template="{{ x }}",
                                        system="Arr.",
                                        parameters={"temperature": 0.0, "num_predict": 5, "stop": ["\n"]})
    assert om.parse_create({"name": "p", "from": "m"}, CTX).stream is True


# ---------------------------------------------------------------------------------------------------------------
# Rendering finished results

LP = TokenLogprob("Hi", -0.1, [72, 105], top=[("Hi", -0.1, [72, 105], 5), ("Yo", -2.5, [89, 111], 6)], id=5)
USAGE = Usage(prompt_tokens=26, completion_tokens=282, cached_tokens=4)
TIMINGS = Timings(load=0.001334875, queued=0.0, prompt=0.342546, generation=4.535599, total=4.883583458)
METRICS = {"total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_count": 26,
           "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000}


def test_render_chat_result() -> None:
    result = GenerationResult([Choice(0, text="Hello", finish_reason="length")], USAGE, TIMINGS)
    out = ol.render_chat(result, InternalRequest(kind="chat", model="llama3.2"), CTX)
    assert out == {"model": "llama3.2", "created_at": CREATED_AT,
                   "message": {"role": "assistant", "content": "Hello"},
                   "done": True, "done_reason": "length", **METRICS}
    assert list(out)[:5] == ["model", "created_at", "message", "done", "done_reason"]
    assert all(isinstance(out[key], int) for key in METRICS)


def test_render_chat_thinking_tool_calls_and_logprobs() -> None:
    calls = [ToolCall("call_1", "get_weather", '{"city":"Tokyo","unit":"c"}'), ToolCall("", "noop", "")]
    choice = Choice(0, thinking="hmm", tool_calls=calls, finish_reason="tool_calls", logprobs=[LP])
    out = ol.render_chat(GenerationResult([choice], Usage()), InternalRequest(kind="chat", model="m"), CTX)
    assert out["message"] == {
        "role": "assistant", "content": "", "thinking": "hmm",
        "tool_calls": [
            {"id": "call_1", "function": {"index": 0, "name": "get_weather",
                                          "arguments": {"city": "Tokyo", "unit": "c"}}},
            {"function": {"index": 1, "name": "noop", "arguments": {}}},
        ]}
    assert list(out["message"]["tool_calls"][0]["function"]["arguments"]) == ["city", "unit"]
    assert out["done_reason"] == "stop"
    assert out["logprobs"] == [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
        {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]}, {"token": "Yo", "logprob": -2.5, "bytes": [89, 111]}]}]


def test_render_generate_result() -> None:
    result = GenerationResult([Choice(0, text="Hi there", thinking="plan")], USAGE, TIMINGS)
    out = ol.render_generate(result, InternalRequest(kind="chat", model="m:latest"), CTX)
    assert out == {"model": "m:latest", "created_at": CREATED_AT, "response": "Hi there", "thinking": "plan",
                   "done": True, "done_reason": "stop", **METRICS}
    assert list(out)[:6] == ["model", "created_at", "response", "thinking", "done", "done_reason"]
    assert "context" not in out


@pytest.mark.parametrize("reason, wire", [
    ("stop", "stop"), ("length", "length"), ("tool_calls", "stop"), ("cancelled", "stop"), ("error", "stop"),
])
def test_done_reason(reason: Any, wire: str) -> None:
    assert ol.done_reason(reason) == wire


@pytest.mark.parametrize("text, expected", [
    ('{"a":1}', {"a": 1}), ("", {}), ("not json", {}), ("[1,2]", {}), ('"x"', {}),
])
def test_tool_arguments_are_always_an_object(text: str, expected: dict[str, Any]) -> None:
    assert ol.tool_arguments(text) == expected


@pytest.mark.parametrize("action", ["load", "unload"])
def test_render_load_and_unload(action: Any) -> None:
    result = LoadResult("resolved-name", action)
    chat_out = ol.render_chat(result, InternalRequest(kind="load_model", model="m"), CTX)
    assert chat_out == {"model": "m", "created_at": CREATED_AT, "message": {"role": "assistant", "content": ""},
                        "done": True, "done_reason": action}
    gen_out = ol.render_generate(result, InternalRequest(kind="load_model", model="m"), CTX)
    assert gen_out == {"model": "m", "created_at": CREATED_AT, "response": "", "done": True, "done_reason": action}


def test_render_embed_normalizes_and_cuts_dimensions() -> None:
    result = EmbeddingResult([[3.0, 4.0, 12.0], [0.0, 0.0, 0.0]], Usage(prompt_tokens=7),
                             Timings(load=0.5, total=1.25))
    req = InternalRequest(kind="embedding", model="e", render={"dimensions": 0})
    out = ol.render_embed(result, req, CTX)
    assert out["model"] == "e" and out["prompt_eval_count"] == 7
    assert (out["total_duration"], out["load_duration"]) == (1_250_000_000, 500_000_000)
    assert out["embeddings"][0] == pytest.approx([3 / 13, 4 / 13, 12 / 13])
    assert out["embeddings"][1] == [0.0, 0.0, 0.0]
    req.render["dimensions"] = 2
    short = ol.render_embed(result, req, CTX)["embeddings"][0]
    assert short == pytest.approx([0.6, 0.8]) and math.isclose(sum(v * v for v in short), 1.0)
    req.render["dimensions"] = 10
    assert len(ol.render_embed(result, req, CTX)["embeddings"][0]) == 3


def test_render_embed_load_and_legacy() -> None:
    req = InternalRequest(kind="load_model", model="e")
    assert ol.render_embed(LoadResult("e", "load"), req, CTX) == {"model": "e", "embeddings": []}
    assert ol.render_embeddings(LoadResult("e", "load"), req, CTX) == {"embedding": []}
    legacy = ol.render_embeddings(EmbeddingResult([[3.0, 4.0]], Usage()), InternalRequest(kind="embedding"), CTX)
    assert legacy == {"embedding": [3.0, 4.0]}  # the legacy route returns the vector untouched


def test_render_banner_and_version() -> None:
    assert ol.render_banner(VersionResult("x"), InternalRequest(kind="health"), CTX) == "Ollama is running"
    out = ol.render_version(VersionResult("1.2.3-gateway"), InternalRequest(kind="version"), CTX)
    assert out == {"version": ol.OLLAMA_VERSION}
    assert [int(part) for part in ol.OLLAMA_VERSION.split(".")] >= [0, 9, 0]


def test_render_progress_and_empty() -> None:
    req = InternalRequest(kind="pull_model")
    assert om.render_progress(Progress("success"), req, CTX) == {"status": "success"}
    assert om.progress_object(Progress("pulling abc", "sha256:abc", 100, 0)) == {
        "status": "pulling abc", "digest": "sha256:abc", "total": 100}
    assert om.render_empty(Progress("success"), InternalRequest(kind="copy_model"), CTX) is None


# ---------------------------------------------------------------------------------------------------------------
# Rendering model views

INFO = ModelInfo("smollm2", 1700000000, path="/models/smollm2.gguf", size=105_000_000, architecture="llama",
                 context_length=8192, parameter_count=134_515_008, parameter_size="135M", quantization="Q4_1",
                 digest="sha256:" + "ab" * 32, aliases=["small"], capabilities=["completion", "tools"])
DETAILS = {"parent_model": "", "format": "gguf", "family": "llama", "families": ["llama"], "parameter_size": "135M",
           "quantization_level": "Q4_1"}


def test_render_tags() -> None:
    newer = ModelInfo("hf.co/u/r:Q8_0", 1800000000, size=1, digest="sha256:" + "cd" * 32)
    out = om.render_tags(ModelList([INFO, newer]), InternalRequest(kind="list_models"), CTX)
    assert [m["name"] for m in out["models"]] == ["hf.co/u/r:Q8_0", "smollm2:latest", "small:latest"]
    assert out["models"][1] == {"name": "smollm2:latest", "model": "smollm2:latest", "modified_at": CREATED_AT,
                                "size": 105_000_000, "digest": "ab" * 32, "details": DETAILS,
                                "capabilities": ["completion", "tools"]}
    assert out["models"][0]["details"]["families"] is None and "capabilities" not in out["models"][0]
    assert om.render_tags(ModelList([]), InternalRequest(kind="list_models"), CTX) == {"models": []}


def test_render_ps() -> None:
    forever = RunningModel(INFO, size=200, size_vram=0, expires_at=None, context_length=4096,
                           runner={"pid": 42, "restarts": 1})
    soon = RunningModel(ModelInfo("other:q4", 1, digest="ef" * 32), size=10, size_vram=10,
                        expires_at=1700000300.25, context_length=2048)
    out = om.render_ps(RunningList([soon, forever]), InternalRequest(kind="list_running"), CTX)
    first, second = out["models"]
    assert first == {"name": "smollm2:latest", "model": "smollm2:latest", "size": 200, "digest": "ab" * 32,
                     "details": DETAILS, "expires_at": "2316-02-24T22:00:36.854776Z", "size_vram": 0,
                     "context_length": 4096, "runner": {"pid": 42, "restarts": 1}}
    assert second["name"] == "other:q4" and second["expires_at"] == "2023-11-14T22:18:20.25Z"


def test_render_show() -> None:
    info = ModelInfo(**{**INFO.__dict__, "template": "{% for m in messages %}{{ m.content }}{% endfor %}",
                        "system": "You are helpful.",
                        "parameters": {"temperature": 0.6, "stop": ["<|im_end|>", "\n\n"], "num_ctx": 4096},
                        "metadata": {"general.architecture": "llama", "general.name": "SmolLM2",
                                     "llama.context_length": 8192, "tokenizer.chat_template": "{{ x }}",
                                     "tokenizer.ggml.merges_like": list(range(6)), "short": [1, 2]}})
    req = InternalRequest(kind="show_model", model="smollm2", render={"verbose": False, "system": "",
                                                                      "options": {"seed": 3}})
    out = om.render_show(info, req, CTX)
    assert list(out) == ["modelfile", "parameters", "template", "system", "details", "model_info", "capabilities",
                         "modified_at"]
    assert out["parameters"] == ('temperature                    0.6\n'
                                 'stop                           "<|im_end|>"\n'
                                 'stop                           "\\n\\n"\n'
                                 'num_ctx                        4096')
    assert out["modelfile"] == ('# Modelfile generated by "ollama show"\n'
                                "# To build a new Modelfile based on this, replace FROM with:\n"
                                "# FROM smollm2:latest\n\n"
                                "FROM /models/smollm2.gguf\n"
                                "TEMPLATE {% for m in messages %}{{ m.content }}{% endfor %}\n"
                                "SYSTEM You are helpful.\n"
                                "PARAMETER temperature 0.6\n"
                                "PARAMETER stop <|im_end|>\n"
                                'PARAMETER stop "\n\n"\n'
                                "PARAMETER num_ctx 4096\n"
                                "PARAMETER seed 3\n")
    assert out["model_info"] == {"general.architecture": "llama", "llama.context_length": 8192,
                                 "tokenizer.ggml.merges_like": [], "short": [1, 2],
                                 "general.parameter_count": 134_515_008}
    assert out["details"] == DETAILS and out["capabilities"] == ["completion", "tools"]
    assert out["modified_at"] == CREATED_AT and out["system"] == "You are helpful."
    req.render.update(verbose=True, system="Be brief.")
    verbose = om.render_show(info, req, CTX)
    assert verbose["model_info"]["tokenizer.ggml.merges_like"] == list(range(6))
    assert verbose["system"] == "Be brief." and "SYSTEM Be brief.\n" in verbose["modelfile"]


def test_render_show_always_has_model_info_and_capabilities() -> None:
    out = om.render_show(ModelInfo("m", 0), InternalRequest(kind="show_model", model="m"), CTX)
    assert out["model_info"] == {} and out["capabilities"] == []
    assert "parameters" not in out and "template" not in out and "system" not in out


@pytest.mark.parametrize("text, quoted", [
    ("plain", "plain"),
    ("two\nlines", '"two\nlines"'),
    (' edge', '" edge"'),
    ('say "hi"\nnow', '"""say "hi"\nnow"""'),
    ('say "hi"', 'say "hi"'),
])
def test_modelfile_quote(text: str, quoted: str) -> None:
    assert om.modelfile_quote(text) == quoted


# ---------------------------------------------------------------------------------------------------------------
# Go formatting and names


@pytest.mark.parametrize("epoch, text", [
    (1700000000, "2023-11-14T22:13:20Z"),
    (1700000000.5, "2023-11-14T22:13:20.5Z"),
    (1700000000.123456, "2023-11-14T22:13:20.123456Z"),
    (0, "1970-01-01T00:00:00Z"),
])
def test_go_time(epoch: float, text: str) -> None:
    assert om.go_time(epoch) == text


@pytest.mark.parametrize("value, text", [
    (0.6, "0.6"), (1.0, "1"), (4096, "4096"), (0, "0"), (123456.0, "123456"), (1e6, "1e+06"),
    (1234567.0, "1.234567e+06"), (1e-5, "1e-05"), (0.0001, "0.0001"), (-2.5e7, "-2.5e+07"),
])
def test_go_float(value: float, text: str) -> None:
    assert om.go_float(value) == text


def test_go_value() -> None:
    assert om.go_value('<|eot_id|>\t"x"\\\x00é', quoted=True) == '"<|eot_id|>\\t\\"x\\"\\\\\\x00é"'
    assert om.go_value("<|eot_id|>", quoted=False) == "<|eot_id|>"
    assert om.go_value(True, quoted=True) == "true"


@pytest.mark.parametrize("name, shown", [
    ("smollm2", "smollm2:latest"),
    ("llama3.2:3b", "llama3.2:3b"),
    ("registry.ollama.ai/library/llama3.2:latest", "llama3.2:latest"),
    ("registry.ollama.ai/user/model", "user/model:latest"),
    ("hf.co/user/repo:Q4_K_M", "hf.co/user/repo:Q4_K_M"),
    ("localhost:5000/x/y", "localhost:5000/x/y:latest"),
])
def test_display_name(name: str, shown: str) -> None:
    assert om.display_name(name) == shown


# ---------------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("kind, status", [
    (ErrorKind.INVALID_REQUEST, 400), (ErrorKind.NOT_FOUND, 404), (ErrorKind.CONTEXT_OVERFLOW, 400),
    (ErrorKind.UNAUTHORIZED, 401), (ErrorKind.TOO_LARGE, 413), (ErrorKind.OVERLOADED, 503),
    (ErrorKind.UNAVAILABLE, 500), (ErrorKind.INTERNAL, 500),
])
def test_render_error(kind: ErrorKind, status: int) -> None:
    assert ol.render_error(GatewayError(kind, "boom", param="p")) == (status, {"error": "boom"})


@pytest.mark.parametrize("message, details, wire", [
    ("The model `no-such-model` does not exist.", {"model": "no-such-model"}, "model 'no-such-model' not found"),
    ("The model `a:b` does not exist.", {"model": "a:b"}, "model 'a:b' not found"),
    ("model 'x' not found", {}, "model 'x' not found"),
    ("No model is configured.", {}, "No model is configured."),
])
def test_not_found_uses_ollamas_wording(message: str, details: dict, wire: str) -> None:
    err = GatewayError(ErrorKind.NOT_FOUND, message, param="model", code="model_not_found", details=details)
    assert ol.render_error(err) == (404, {"error": wire})


# ---------------------------------------------------------------------------------------------------------------
# Streaming


def lines(frames: list[bytes]) -> list[dict[str, Any]]:
    """Check the NDJSON framing of every frame (one compact object, one newline, never a blank line)."""
    out = []
    for frame in frames:
        obj = json.loads(frame)
        assert frame == json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n"
        out.append(obj)
    return out


def run_stream(renderer: Any, events: list[Any]) -> list[bytes]:
    frames = renderer.start()
    for event in events:
        frames += renderer.feed(event)
    return frames


EVENTS = [
    ThinkingDelta(0, "hm"),
    TextDelta(0, "Hel"),
    TextDelta(0, "lo", logprobs=[LP]),
    ChoiceDone(0, "length"),
    Done(USAGE, TIMINGS),
]


def test_chat_stream() -> None:
    renderer = ol.GenerationStream(InternalRequest(kind="chat", model="llama3.2", stream=True), CTX)
    frames = run_stream(renderer, EVENTS)
    assert frames[1] == (b'{"model":"llama3.2","created_at":"2023-11-14T22:13:20Z",'
                         b'"message":{"role":"assistant","content":"Hel"},"done":false}\n')
    objs = lines(frames)
    assert [o["message"] for o in objs] == [
        {"role": "assistant", "content": "", "thinking": "hm"},
        {"role": "assistant", "content": "Hel"},
        {"role": "assistant", "content": "lo"},
        {"role": "assistant", "content": ""},
    ]
    assert [o["done"] for o in objs] == [False, False, False, True]
    assert all(o["model"] == "llama3.2" and o["created_at"] == CREATED_AT for o in objs)
    assert objs[2]["logprobs"][0]["token"] == "Hi"
    assert all("done_reason" not in o and "eval_count" not in o for o in objs[:-1])
    assert objs[-1] == {"model": "llama3.2", "created_at": CREATED_AT,
                        "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "length",
                        **METRICS}
    assert renderer.feed(TextDelta(0, "late")) == [] and renderer.feed(Done(Usage())) == []


def test_generate_stream() -> None:
    renderer = ol.GenerateStream(InternalRequest(kind="chat", model="m", stream=True), CTX)
    objs = lines(run_stream(renderer, EVENTS))
    assert objs[0] == {"model": "m", "created_at": CREATED_AT, "response": "", "thinking": "hm", "done": False}
    assert [o["response"] for o in objs] == ["", "Hel", "lo", ""]
    assert objs[-1] == {"model": "m", "created_at": CREATED_AT, "response": "", "done": True,
                        "done_reason": "length", **METRICS}
    assert list(objs[-1])[:5] == ["model", "created_at", "response", "done", "done_reason"]


def test_stream_sends_each_tool_call_whole() -> None:
    renderer = ol.GenerationStream(InternalRequest(kind="chat", model="m", stream=True), CTX)
    events = [
        ToolCallDelta(0, 0, id="call_a", name="get_weather", arguments=""),
        ToolCallDelta(0, 0, arguments='{"city":'),
        ToolCallDelta(0, 0, arguments='"Paris"}'),
        ToolCallDelta(0, 1, id="call_b", name="noop", arguments="{}"),
        ChoiceDone(0, "tool_calls"),
        Done(Usage(prompt_tokens=3, completion_tokens=9)),
    ]
    objs = lines(run_stream(renderer, events))
    assert len(objs) == 2
    assert objs[0] == {"model": "m", "created_at": CREATED_AT, "done": False, "message": {
        "role": "assistant", "content": "", "tool_calls": [
            {"id": "call_a", "function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}},
            {"id": "call_b", "function": {"index": 1, "name": "noop", "arguments": {}}}]}}
    assert objs[1]["done"] and objs[1]["done_reason"] == "stop" and objs[1]["eval_count"] == 9


def test_stream_error_keepalive_and_close() -> None:
    renderer = ol.GenerationStream(InternalRequest(kind="chat", model="m", stream=True), CTX)
    assert renderer.start() == [] and renderer.keepalive() == []
    renderer.feed(TextDelta(0, "partial"))
    frames = renderer.error(GatewayError(ErrorKind.INTERNAL, "engine died"))
    assert frames == [b'{"error":"engine died"}\n']
    assert renderer.feed(TextDelta(0, "late")) == [] and renderer.error(GatewayError(ErrorKind.INTERNAL, "x")) == []


def test_stream_error_rewords_not_found() -> None:
    renderer = ol.ProgressStream(InternalRequest(kind="pull_model", stream=True), CTX)
    err = GatewayError(ErrorKind.NOT_FOUND, "The model `x` does not exist.", code="model_not_found",
                       details={"model": "x"})
    assert lines(renderer.error(err)) == [{"error": "model 'x' not found"}]


def test_progress_stream() -> None:
    renderer = ol.ProgressStream(InternalRequest(kind="pull_model", stream=True), CTX)
    events = [Progress("pulling manifest"), Progress("pulling a80c4f17acd5", "sha256:a80c", 2019377376, 241970),
              Progress("verifying sha256 digest"), Progress("success")]
    assert renderer.start() == [] and renderer.keepalive() == []
    assert lines(run_stream(renderer, events)) == [
        {"status": "pulling manifest"},
        {"status": "pulling a80c4f17acd5", "digest": "sha256:a80c", "total": 2019377376, "completed": 241970},
        {"status": "verifying sha256 digest"},
        {"status": "success"},
    ]
    assert renderer.feed(TextDelta(0, "x")) == []
    assert lines(renderer.error(GatewayError(ErrorKind.INVALID_REQUEST, "pulling is not supported"))) == [
        {"error": "pulling is not supported"}]
    assert renderer.feed(Progress("late")) == []


# ---------------------------------------------------------------------------------------------------------------
# Routes


def test_routes() -> None:
    table = {(r.method, r.path): r for r in ol.ROUTES}
    assert set(table) == {
        ("GET", "/"), ("GET", "/api/version"), ("POST", "/api/chat"), ("POST", "/api/generate"),
        ("POST", "/api/embed"), ("POST", "/api/embeddings"), ("GET", "/api/tags"), ("GET", "/api/ps"),
        ("POST", "/api/show"), ("POST", "/api/copy"), ("DELETE", "/api/delete"), ("POST", "/api/create"),
        ("POST", "/api/pull"), ("POST", "/api/push"), ("POST", "/api/blobs/<digest>"),
    }
    assert all(r.family == "ollama" and r.render_error is ol.render_error for r in ol.ROUTES)
    assert all(r.media_type == "application/x-ndjson" and r.accepts is None for r in ol.ROUTES)
    assert table["POST", "/api/chat"].stream is ol.GenerationStream
    assert table["POST", "/api/generate"].stream is ol.GenerateStream
    assert table["POST", "/api/pull"].stream is table["POST", "/api/create"].stream is ol.ProgressStream
    assert {path for (_, path), r in table.items() if r.stream is None} == {
        "/", "/api/version", "/api/embed", "/api/embeddings", "/api/tags", "/api/ps", "/api/show", "/api/copy",
        "/api/delete", "/api/push", "/api/blobs/<digest>"}
    assert {r.path for r in ol.ROUTES if r.body == "none"} == {"/", "/api/version", "/api/tags", "/api/ps",
                                                                "/api/blobs/<digest>"}


# ---------------------------------------------------------------------------------------------------------------
# The official client's own models accept every shape (ollama-python requires `message`, `model_info`, mappings
# for tool arguments, integer counters)


def test_ollama_python_parses_every_render() -> None:
    req = InternalRequest(kind="chat", model="m")
    result = GenerationResult([Choice(0, text="x", thinking="t", tool_calls=[ToolCall("c", "f", '{"a":1}')],
                                      logprobs=[LP])], USAGE, TIMINGS)
    reply = ChatResponse(**ol.render_chat(result, req, CTX))
    assert reply.message.tool_calls[0].function.arguments == {"a": 1} and reply.eval_count == 282
    assert ChatResponse(**ol.render_chat(LoadResult("m", "load"), req, CTX)).message.role == "assistant"
    assert GenerateResponse(**ol.render_generate(LoadResult("m", "unload"), req, CTX)).done_reason == "unload"
    for frame in run_stream(ol.GenerationStream(req, CTX), EVENTS):
        ChatResponse(**json.loads(frame))
    for frame in run_stream(ol.GenerateStream(req, CTX), EVENTS):
        GenerateResponse(**json.loads(frame))
    embedded = EmbeddingResult([[1.0, 2.0]], Usage(1))
    assert EmbedResponse(**ol.render_embed(embedded, InternalRequest(kind="embedding"), CTX)).embeddings
    assert EmbeddingsResponse(**ol.render_embeddings(embedded, InternalRequest(kind="embedding"), CTX)).embedding
    listed = ListResponse(**om.render_tags(ModelList([INFO]), InternalRequest(kind="list_models"), CTX))
    assert listed.models[0].model == "smollm2:latest" and listed.models[0].modified_at.year == 2023
    shown = ShowResponse(**om.render_show(INFO, InternalRequest(kind="show_model", model="smollm2"), CTX))
    assert shown.modelinfo == {"general.parameter_count": 134_515_008}
    running = RunningList([RunningModel(INFO, 1, 0, None, 4096)])
    assert ProcessResponse(**om.render_ps(running, InternalRequest(kind="list_running"), CTX)).models[0].expires_at
    assert ProgressResponse(**om.progress_object(Progress("success"))).status == "success"
