"""The OpenAI adapter, with plain dicts in and plain dicts or bytes out: no server, no model."""

from __future__ import annotations

import base64
import json
import struct
from typing import Any

import pytest

from adapters import openai as oa
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
    HealthResult,
    ImagePart,
    InternalRequest,
    Message,
    ModelInfo,
    ModelList,
    TextDelta,
    ThinkingDelta,
    TokenLogprob,
    Tool,
    ToolCall,
    ToolCallDelta,
    Usage,
)

CTX = RequestContext(request_id="r1", created=1700000000)
USER = [{"role": "user", "content": "hi"}]
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def chat(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "messages": USER, **extra}


def completion(**extra: Any) -> dict[str, Any]:
    return {"model": "m", "prompt": "Once", **extra}


def embedding(**extra: Any) -> dict[str, Any]:
    return {"model": "e", "input": "text", **extra}


def attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = obj[int(name)] if name.isdigit() else (obj[name] if isinstance(obj, dict) else getattr(obj, name))
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Parsing: good bodies


@pytest.mark.parametrize("body, path, expected", [
    (chat(), "model", "m"),
    (chat(), "kind", "chat"),
    (chat(), "messages", [Message(role="user", content="hi")]),
    (chat(messages=[{"role": "developer", "content": "be brief"}]), "messages.0.role", "system"),
    (chat(messages=[{"role": "system", "content": None}]), "messages.0.content", None),
    (chat(messages=[{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]),
     "messages.0.content", "ab"),
    (chat(messages=[{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA", "detail": "low"}}]}]),
     "messages.0", Message(role="user", content="what is this", images=[ImagePart("data:image/png;base64,AAAA")])),
    (chat(messages=[{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}}]}]),
     "messages.0.tool_calls", [ToolCall("call_1", "f", "{\"a\":1}")]),
    (chat(messages=[{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": {"a": 1}}}]}]),
     "messages.0.tool_calls.0.arguments", "{\"a\":1}"),
    (chat(messages=[{"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]),
     "messages.0", Message(role="tool", content="sunny", tool_call_id="call_1")),
    (chat(messages=[{"role": "assistant", "content": "x", "reasoning_content": "hmm"}]), "messages.0.thinking",
     "hmm"),
    (chat(temperature=0.5, top_p=1, presence_penalty=-2, frequency_penalty=2, seed=7),
     "sampling", oa.SamplingParams(temperature=0.5, top_p=1, presence_penalty=-2, frequency_penalty=2, seed=7)),
    (chat(top_k=40, min_p=0.05, typical_p=1.0, repeat_penalty=1.1), "sampling",
     oa.SamplingParams(top_k=40, min_p=0.05, typical_p=1.0, repeat_penalty=1.1)),
    (chat(top_k=-1), "sampling.top_k", 0),
    (chat(stop="END"), "sampling.stop", ["END"]),
    (chat(stop=["a", "b", "", "d"]), "sampling.stop", ["a", "b", "d"]),
    (chat(stop=None), "sampling.stop", []),
    (chat(max_tokens=10), "sampling.max_tokens", 10),
    (chat(max_tokens=10, max_completion_tokens=20), "sampling.max_tokens", 20),
    (chat(), "sampling.max_tokens", None),
    (chat(logit_bias={"50256": -100, "11": 2.5}), "sampling.logit_bias", {50256: -100.0, 11: 2.5}),
    (chat(logprobs=True, top_logprobs=3), "sampling.logprobs", True),
    (chat(logprobs=True, top_logprobs=3), "sampling.top_logprobs", 3),
    (chat(top_logprobs=0), "sampling.logprobs", False),
    (chat(n=3), "n", 3),
    (chat(stream=True), "stream", True),
    (chat(stream=True), "render", {"include_usage": False}),
    (chat(stream=True, stream_options={"include_usage": True}), "render", {"include_usage": True}),
    (chat(response_format={"type": "text"}), "constraint", None),
    (chat(response_format={"type": "json_object"}), "constraint", Constraint("json")),
    (chat(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}),
     "constraint", Constraint("json_schema", {"type": "object"})),
    (chat(tools=[WEATHER]), "tools", [Tool("get_weather", "", {"type": "object"}, False)]),
    (chat(tools=[{"type": "function", "function": {"name": "f", "description": "d", "strict": True}}]),
     "tools", [Tool("f", "d", {}, True)]),
    (chat(tool_choice="required"), "tool_choice", "required"),
    (chat(tool_choice="none"), "tool_choice", "none"),
    (chat(), "tool_choice", "auto"),
    (chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}}),
     "tool_choice", "get_weather"),
    (chat(user="u", metadata={"a": "b"}, store=False, service_tier="auto", parallel_tool_calls=True,
          reasoning_effort="low", modalities=["text"]), "model", "m"),
])
def test_parse_chat(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(oa.parse_chat(body, CTX), path) == expected


@pytest.mark.parametrize("body, path, expected", [
    (completion(), "kind", "completion"),
    (completion(), "prompts", ["Once"]),
    (completion(prompt=""), "prompts", [""]),
    (completion(prompt=["a", "b"]), "prompts", ["a", "b"]),
    (completion(prompt=[1, 2, 3]), "prompts", [[1, 2, 3]]),
    (completion(prompt=[[1, 2], [3]]), "prompts", [[1, 2], [3]]),
    (completion(), "sampling.max_tokens", 16),
    (completion(max_tokens=5), "sampling.max_tokens", 5),
    (completion(echo=True), "echo", True),
    (completion(logprobs=0), "sampling.logprobs", True),
    (completion(logprobs=0), "sampling.top_logprobs", 0),
    (completion(logprobs=5), "sampling.top_logprobs", 5),
    (completion(), "sampling.logprobs", False),
    (completion(suffix=""), "model", "m"),
    (completion(suffix=None, best_of=None), "model", "m"),
    (completion(n=2, best_of=2), "n", 2),
    (completion(best_of=1), "n", 1),
    (completion(stream=True, stream_options={"include_usage": True}), "render.include_usage", True),
    (completion(stop=["\n"], seed=1, temperature=0), "sampling.stop", ["\n"]),
])
def test_parse_completion(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(oa.parse_completion(body, CTX), path) == expected


@pytest.mark.parametrize("body, path, expected", [
    (embedding(), "kind", "embedding"),
    (embedding(), "prompts", ["text"]),
    (embedding(input=["a", "b"]), "prompts", ["a", "b"]),
    (embedding(input=[5, 6]), "prompts", [[5, 6]]),
    (embedding(input=[[5], [6, 7]]), "prompts", [[5], [6, 7]]),
    (embedding(), "render", {"encoding_format": "float"}),
    (embedding(encoding_format="base64"), "render", {"encoding_format": "base64"}),
    (embedding(dimensions=None), "model", "e"),
])
def test_parse_embedding(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(oa.parse_embedding(body, CTX), path) == expected


def test_parse_models_health() -> None:
    assert oa.parse_list_models(None, CTX) == InternalRequest(kind="list_models")
    assert oa.parse_health(None, CTX) == InternalRequest(kind="health")
    ctx = RequestContext("r", 0, path_params={"model": "org/model:q4"}, method="GET")
    assert oa.parse_show_model(None, ctx) == InternalRequest(kind="show_model", model="org/model:q4")


# ---------------------------------------------------------------------------------------------------------------
# Parsing: bad bodies


@pytest.mark.parametrize("body, param", [
    ([], None),
    ({"messages": USER}, "model"),
    (chat(model=3), "model"),
    ({"model": "m"}, "messages"),
    (chat(messages=[]), "messages"),
    (chat(messages="hi"), "messages"),
    (chat(messages=["hi"]), "messages[0]"),
    (chat(messages=[{"content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "function", "content": "x"}]), "messages[0].role"),
    (chat(messages=[{"role": "user", "content": 5}]), "messages[0].content"),
    (chat(messages=[{"role": "user", "content": ["x"]}]), "messages[0].content[0]"),
    (chat(messages=[{"role": "user", "content": [{"text": "x"}]}]), "messages[0].content[0].type"),
    (chat(messages=[{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}]),
     "messages[0].content[0].type"),
    (chat(messages=[{"role": "user", "content": [{"type": "text"}]}]), "messages[0].content[0].text"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]),
     "messages[0].content[0].image_url.url"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}]), "messages[0].content[0].image_url"),
    (chat(messages=[{"role": "assistant", "tool_calls": {}}]), "messages[0].tool_calls"),
    (chat(messages=[{"role": "assistant", "tool_calls": [{"id": "c"}]}]), "messages[0].tool_calls[0].function"),
    (chat(messages=[{"role": "assistant", "tool_calls": [{"id": "c", "function": {"arguments": "{}"}}]}]),
     "messages[0].tool_calls[0].function.name"),
    (chat(messages=[{"role": "tool", "tool_call_id": 1, "content": "x"}]), "messages[0].tool_call_id"),
    (chat(temperature=2.5), "temperature"),
    (chat(temperature="hot"), "temperature"),
    (chat(temperature=True), "temperature"),
    (chat(top_p=1.5), "top_p"),
    (chat(presence_penalty=-3), "presence_penalty"),
    (chat(frequency_penalty=2.1), "frequency_penalty"),
    (chat(seed=1.5), "seed"),
    (chat(top_k=-2), "top_k"),
    (chat(min_p=2), "min_p"),
    (chat(repeat_penalty=-1), "repeat_penalty"),
    (chat(stop=5), "stop"),
    (chat(stop=["a", "b", "c", "d", "e"]), "stop"),
    (chat(stop=["a", 1]), "stop[1]"),
    (chat(max_tokens=0), "max_tokens"),
    (chat(max_completion_tokens=-1), "max_completion_tokens"),
    (chat(max_tokens="10"), "max_tokens"),
    (chat(logit_bias=[1]), "logit_bias"),
    (chat(logit_bias={"abc": 1}), "logit_bias"),
    (chat(logit_bias={"-5": 1}), "logit_bias"),
    (chat(logit_bias={"5": 101}), "logit_bias.5"),
    (chat(logit_bias={"5": "x"}), "logit_bias.5"),
    (chat(logprobs="yes"), "logprobs"),
    (chat(top_logprobs=3), "top_logprobs"),
    (chat(logprobs=True, top_logprobs=21), "top_logprobs"),
    (chat(n=0), "n"),
    (chat(n=17), "n"),
    (chat(stream="true"), "stream"),
    (chat(stream=True, stream_options=[]), "stream_options"),
    (chat(stream=True, stream_options={"include_usage": 1}), "stream_options.include_usage"),
    (chat(response_format="json"), "response_format"),
    (chat(response_format={}), "response_format.type"),
    (chat(response_format={"type": "regex"}), "response_format.type"),
    (chat(response_format={"type": "json_schema"}), "response_format.json_schema"),
    (chat(response_format={"type": "json_schema", "json_schema": {"schema": "x"}}),
     "response_format.json_schema.schema"),
    (chat(tools={}), "tools"),
    (chat(tools=["f"]), "tools[0]"),
    (chat(tools=[{"type": "code_interpreter"}]), "tools[0].type"),
    (chat(tools=[{"type": "function"}]), "tools[0].function"),
    (chat(tools=[{"type": "function", "function": {"description": "d"}}]), "tools[0].function.name"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "parameters": "{}"}}]),
     "tools[0].function.parameters"),
    (chat(tools=[{"type": "function", "function": {"name": "f", "strict": "yes"}}]), "tools[0].function.strict"),
    (chat(tool_choice="any"), "tool_choice"),
    (chat(tool_choice=1), "tool_choice"),
    (chat(tool_choice={"type": "function"}), "tool_choice.function"),
    (chat(tool_choice={"type": "function", "function": {}}), "tool_choice.function.name"),
    (chat(tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "other"}}),
     "tool_choice.function.name"),
])
def test_parse_chat_rejects(body: Any, param: str | None) -> None:
    assert_invalid(oa.parse_chat, body, param)


@pytest.mark.parametrize("body, param", [
    ({"prompt": "x"}, "model"),
    ({"model": "m"}, "prompt"),
    (completion(prompt=[]), "prompt"),
    (completion(prompt=5), "prompt"),
    (completion(prompt=["a", 1]), "prompt[1]"),
    (completion(prompt=[[1], []]), "prompt[1]"),
    (completion(prompt=[[1, -2]]), "prompt[0]"),
    (completion(prompt=[True]), "prompt[0]"),
    (completion(suffix="end"), "suffix"),
    (completion(suffix=1), "suffix"),
    (completion(best_of=3), "best_of"),
    (completion(n=2, best_of=3), "best_of"),
    (completion(logprobs=6), "logprobs"),
    (completion(logprobs=True), "logprobs"),
    (completion(echo="no"), "echo"),
    (completion(max_tokens=0), "max_tokens"),
    (completion(n=20), "n"),
])
def test_parse_completion_rejects(body: Any, param: str | None) -> None:
    assert_invalid(oa.parse_completion, body, param)


@pytest.mark.parametrize("body, param", [
    ({"input": "x"}, "model"),
    ({"model": "e"}, "input"),
    (embedding(input=""), "input"),
    (embedding(input=[]), "input"),
    (embedding(input=["a", ""]), "input[1]"),
    (embedding(input=[[]]), "input[0]"),
    (embedding(input={"text": "a"}), "input"),
    (embedding(encoding_format="int8"), "encoding_format"),
    (embedding(dimensions=256), "dimensions"),
])
def test_parse_embedding_rejects(body: Any, param: str | None) -> None:
    assert_invalid(oa.parse_embedding, body, param)


def assert_invalid(parse: Any, body: Any, param: str | None) -> None:
    with pytest.raises(GatewayError) as caught:
        parse(body, CTX)
    err = caught.value
    assert err.kind is ErrorKind.INVALID_REQUEST
    assert err.param == param
    if param is not None:
        assert f"`{param}`" in err.message


# ---------------------------------------------------------------------------------------------------------------
# Rendering finished results

LP = TokenLogprob("Hi", -0.1, [72, 105], top=[("Hi", -0.1, [72, 105], 5), ("Yo", -2.5, [89, 111], 6)], id=5)
LP2 = TokenLogprob("!", -0.2, [33])
USAGE = Usage(prompt_tokens=9, completion_tokens=2, cached_tokens=4)
USAGE_JSON = {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11,
              "prompt_tokens_details": {"cached_tokens": 4}}


def test_render_chat_text_and_logprobs() -> None:
    result = GenerationResult(
        [Choice(1, text="B", finish_reason="cancelled"), Choice(0, text="Hi", finish_reason="length", logprobs=[LP])],
        USAGE)
    out = oa.render_chat(result, InternalRequest(kind="chat", model="alias", n=2), CTX)
    assert out == {
        "id": "chatcmpl-r1", "object": "chat.completion", "created": 1700000000, "model": "alias",
        "system_fingerprint": None,
        "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "Hi", "refusal": None},
             "logprobs": {"content": [{"token": "Hi", "logprob": -0.1, "bytes": [72, 105], "top_logprobs": [
                 {"token": "Hi", "logprob": -0.1, "bytes": [72, 105]},
                 {"token": "Yo", "logprob": -2.5, "bytes": [89, 111]}]}], "refusal": None},
             "finish_reason": "length"},
            {"index": 1, "message": {"role": "assistant", "content": "B", "refusal": None},
             "logprobs": None, "finish_reason": "stop"},
        ],
        "usage": USAGE_JSON,
    }


def test_render_chat_tool_calls_and_reasoning() -> None:
    choice = Choice(0, thinking="think", tool_calls=[ToolCall("call_1", "f", "{\"a\":1}")], finish_reason="tool_calls")
    out = oa.render_chat(GenerationResult([choice], Usage()), InternalRequest(kind="chat", model="m"), CTX)
    assert out["choices"][0] == {
        "index": 0,
        "message": {"role": "assistant", "content": None, "refusal": None, "reasoning_content": "think",
                    "tool_calls": [{"id": "call_1", "type": "function",
                                    "function": {"name": "f", "arguments": "{\"a\":1}"}}]},
        "logprobs": None, "finish_reason": "tool_calls",
    }


@pytest.mark.parametrize("reason, wire", [
    ("stop", "stop"), ("length", "length"), ("tool_calls", "tool_calls"), ("cancelled", "stop"), ("error", "stop"),
])
def test_finish_reason(reason: Any, wire: str) -> None:
    assert oa.finish_reason(reason) == wire


def test_render_completion_with_text_offsets() -> None:
    req = InternalRequest(kind="completion", model="m", prompts=["Say", [1, 2]], n=1)
    result = GenerationResult([Choice(1, text="Hi!", logprobs=[LP, LP2]), Choice(0, text="Hi!", finish_reason="length",
                                                                              logprobs=[LP, LP2])], USAGE)
    out = oa.render_completion(result, req, CTX)
    assert out["id"] == "cmpl-r1" and out["object"] == "text_completion" and out["model"] == "m"
    assert out["system_fingerprint"] is None and out["usage"] == USAGE_JSON
    assert out["choices"][0] == {
        "text": "Hi!", "index": 0, "finish_reason": "length",
        "logprobs": {"tokens": ["Hi", "!"], "token_logprobs": [-0.1, -0.2],
                     "top_logprobs": [{"Hi": -0.1, "Yo": -2.5}, {}], "text_offset": [3, 5]},
    }
    assert out["choices"][1]["logprobs"]["text_offset"] == [0, 2]  # token-id prompt: no known length


def test_render_completion_echo_counts_from_zero() -> None:
    req = InternalRequest(kind="completion", model="m", prompts=["Say"], echo=True)
    out = oa.render_completion(GenerationResult([Choice(0, text="Hi", logprobs=[LP])], Usage()), req, CTX)
    assert out["choices"][0]["logprobs"]["text_offset"] == [0]
    assert out["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("encoding", ["float", "base64"])
def test_render_embedding(encoding: str) -> None:
    vectors = [[0.5, -1.0], [0.25, 2.0]]
    req = InternalRequest(kind="embedding", model="e", render={"encoding_format": encoding})
    out = oa.render_embedding(EmbeddingResult(vectors, Usage(prompt_tokens=4)), req, CTX)
    assert out["object"] == "list" and out["model"] == "e"
    assert out["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert [(d["object"], d["index"]) for d in out["data"]] == [("embedding", 0), ("embedding", 1)]
    for item, vec in zip(out["data"], vectors, strict=True):
        got = item["embedding"]
        if encoding == "base64":
            raw = base64.b64decode(got)
            got = list(struct.unpack(f"<{len(raw) // 4}f", raw))
        assert got == vec


def test_render_models_lists_aliases() -> None:
    models = ModelList([ModelInfo("a", 1, aliases=["x", "y"], max_model_len=8192, context_reason="why"),
                        ModelInfo("b", 2)])
    out = oa.render_models(models, InternalRequest(kind="list_models"), CTX)
    a = {"object": "model", "created": 1, "owned_by": "llm-gateway", "max_model_len": 8192, "context_size": 8192,
         "context_reason": "why"}
    assert out == {"object": "list", "data": [
        {"id": "a", **a}, {"id": "x", **a}, {"id": "y", **a},
        {"id": "b", "object": "model", "created": 2, "owned_by": "llm-gateway", "max_model_len": 0,
         "context_size": 0, "context_reason": ""},
    ]}


def test_render_model_and_health() -> None:
    req = InternalRequest(kind="show_model", model="x")
    assert oa.render_model(ModelInfo("a", 5, aliases=["x"]), req, CTX) == {
        "id": "x", "object": "model", "created": 5, "owned_by": "llm-gateway", "max_model_len": 0,
        "context_size": 0, "context_reason": ""}
    gpu = {"name": "CUDA0", "description": "NVIDIA H200", "type": "gpu", "memory_free": 1, "memory_total": 2}
    health = oa.render_health(HealthResult("ok", ["a"], gpu_offload=True, devices=[gpu]),
                              InternalRequest(kind="health"), CTX)
    assert health == {"status": "ok", "models_loaded": ["a"], "gpu_offload": True, "devices": [gpu]}


@pytest.mark.parametrize("kind, code, status, wire_type, wire_code", [
    (ErrorKind.INVALID_REQUEST, None, 400, "invalid_request_error", None),
    (ErrorKind.NOT_FOUND, None, 404, "invalid_request_error", "model_not_found"),
    (ErrorKind.NOT_FOUND, "route_not_found", 404, "invalid_request_error", "route_not_found"),
    (ErrorKind.CONTEXT_OVERFLOW, None, 400, "invalid_request_error", "context_length_exceeded"),
    (ErrorKind.UNAUTHORIZED, None, 401, "authentication_error", None),
    (ErrorKind.TOO_LARGE, None, 413, "invalid_request_error", None),
    (ErrorKind.OVERLOADED, None, 429, "rate_limit_error", None),
    (ErrorKind.UNAVAILABLE, None, 503, "server_error", None),
    (ErrorKind.TIMEOUT, None, 504, "server_error", "request_timeout"),
    (ErrorKind.INTERNAL, None, 500, "server_error", None),
])
def test_render_error(kind: ErrorKind, code: str | None, status: int, wire_type: str, wire_code: str | None) -> None:
    err = GatewayError(kind, "boom", param="p", code=code)
    assert oa.render_error(err) == (status, {"error": {"message": "boom", "type": wire_type, "param": "p",
                                                       "code": wire_code}})


# ---------------------------------------------------------------------------------------------------------------
# Streaming


def frames_json(frames: list[bytes]) -> list[Any]:
    """Check the SSE framing of every frame, then return each payload ("[DONE]" stays a string)."""
    out = []
    for frame in frames:
        assert frame.startswith(b"data: ") and frame.endswith(b"\n\n") and frame.count(b"\n") == 2
        payload = frame[len(b"data: "):-2].decode()
        out.append(payload if payload == "[DONE]" else json.loads(payload))
    return out


def run_stream(renderer: Any, events: list[Any]) -> list[bytes]:
    frames = renderer.start()
    for event in events:
        frames += renderer.feed(event)
    return frames


CHAT_EVENTS = [
    ThinkingDelta(0, "hm"),
    TextDelta(0, "Hel"),
    TextDelta(0, "lo", logprobs=[LP2]),
    ChoiceDone(0, "length"),
    Done(USAGE),
]


@pytest.mark.parametrize("include_usage", [False, True])
def test_chat_stream(include_usage: bool) -> None:
    req = InternalRequest(kind="chat", model="m", stream=True, render={"include_usage": include_usage})
    frames = run_stream(oa.ChatStream(req, CTX), CHAT_EVENTS)
    assert frames[0] == (b'data: {"id":"chatcmpl-r1","object":"chat.completion.chunk","created":1700000000,'
                         b'"model":"m","system_fingerprint":null,"choices":[{"index":0,"delta":{"role":"assistant",'
                         b'"content":""},"logprobs":null,"finish_reason":null}]'
                         + (b',"usage":null' if include_usage else b"") + b"}\n\n")
    assert frames[-1] == b"data: [DONE]\n\n"
    chunks = frames_json(frames)[:-1]
    for chunk in chunks:
        assert (chunk["id"], chunk["object"], chunk["created"], chunk["model"], chunk["system_fingerprint"]) == (
            "chatcmpl-r1", "chat.completion.chunk", 1700000000, "m", None)
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert deltas == [{"role": "assistant", "content": ""}, {"reasoning_content": "hm"}, {"content": "Hel"},
                      {"content": "lo"}, {}]
    assert sum("role" in d for d in deltas) == 1
    assert chunks[3]["choices"][0]["logprobs"] == {
        "content": [{"token": "!", "logprob": -0.2, "bytes": [33], "top_logprobs": []}], "refusal": None}
    assert chunks[4]["choices"][0]["finish_reason"] == "length"
    if include_usage:
        assert chunks[-1] == {**chunks[-1], "choices": [], "usage": USAGE_JSON}
        assert all(c["usage"] is None for c in chunks[:-1])
        assert len(chunks) == 6
    else:
        assert all("usage" not in c for c in chunks) and len(chunks) == 5


def test_chat_stream_tool_calls_send_id_and_name_once() -> None:
    req = InternalRequest(kind="chat", model="m", stream=True)
    events = [
        ToolCallDelta(0, 0, id="call_a", name="f", arguments=""),
        ToolCallDelta(0, 0, arguments="{\"x\":"),
        ToolCallDelta(0, 0, arguments="1}"),
        ToolCallDelta(0, 1, id="call_b", name="g", arguments="{}"),
        ChoiceDone(0, "tool_calls"),
        Done(Usage()),
    ]
    chunks = frames_json(run_stream(oa.ChatStream(req, CTX), events))
    fragments = [c["choices"][0]["delta"]["tool_calls"][0] for c in chunks[1:5]]
    assert fragments == [
        {"index": 0, "id": "call_a", "type": "function", "function": {"name": "f", "arguments": ""}},
        {"index": 0, "function": {"arguments": "{\"x\":"}},
        {"index": 0, "function": {"arguments": "1}"}},
        {"index": 1, "id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{}"}},
    ]
    assert chunks[5]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "tool_calls"}
    assert chunks[6] == "[DONE]"


def test_chat_stream_role_chunk_per_choice() -> None:
    req = InternalRequest(kind="chat", model="m", stream=True, n=3)
    chunks = frames_json(oa.ChatStream(req, CTX).start())
    assert [c["choices"][0]["index"] for c in chunks] == [0, 1, 2]


def test_completion_stream_offsets_and_usage() -> None:
    req = InternalRequest(kind="completion", model="m", prompts=["Say", "Go"], n=2, stream=True,
                          render={"include_usage": True})
    renderer = oa.CompletionStream(req, CTX)
    assert renderer.start() == []
    events = [
        TextDelta(3, "Hi", logprobs=[LP]),
        TextDelta(3, "!", logprobs=[LP2]),
        TextDelta(0, "x"),
        ChoiceDone(3, "stop"),
        ChoiceDone(0, "length"),
        Done(USAGE),
    ]
    frames = run_stream(renderer, events)
    chunks = frames_json(frames)
    assert chunks[0] == {
        "id": "cmpl-r1", "object": "text_completion", "created": 1700000000, "model": "m",
        "system_fingerprint": None,
        "choices": [{"text": "Hi", "index": 3, "finish_reason": None, "logprobs": {
            "tokens": ["Hi"], "token_logprobs": [-0.1], "top_logprobs": [{"Hi": -0.1, "Yo": -2.5}],
            "text_offset": [2]}}],
        "usage": None,
    }
    assert chunks[1]["choices"][0]["logprobs"]["text_offset"] == [4]  # "Go" + "Hi"
    assert chunks[2]["choices"][0] == {"text": "x", "index": 0, "logprobs": None, "finish_reason": None}
    assert [c["choices"][0]["finish_reason"] for c in chunks[3:5]] == ["stop", "length"]
    assert chunks[5] == {"id": "cmpl-r1", "object": "text_completion", "created": 1700000000, "model": "m",
                         "system_fingerprint": None, "choices": [], "usage": USAGE_JSON}
    assert chunks[6] == "[DONE]"


def test_completion_stream_ignores_chat_only_events() -> None:
    renderer = oa.CompletionStream(InternalRequest(kind="completion", model="m", prompts=["a"]), CTX)
    assert renderer.feed(ThinkingDelta(0, "x")) == []
    assert renderer.feed(ToolCallDelta(0, 0, id="c", name="f")) == []


@pytest.mark.parametrize("make", [oa.ChatStream, oa.CompletionStream])
def test_stream_error_keepalive_and_close(make: Any) -> None:
    renderer = make(InternalRequest(kind="chat", model="m", prompts=["a"], stream=True), CTX)
    assert renderer.keepalive() == [b": ping\n\n"]
    err = GatewayError(ErrorKind.INTERNAL, "engine died")
    frames = renderer.error(err)
    assert frames_json(frames) == [
        {"error": {"message": "engine died", "type": "server_error", "param": None, "code": None}}, "[DONE]"]
    assert renderer.feed(TextDelta(0, "late")) == []
    assert renderer.feed(Done(Usage())) == []


def test_stream_ends_once() -> None:
    renderer = oa.ChatStream(InternalRequest(kind="chat", model="m", stream=True), CTX)
    assert renderer.feed(Done(Usage())) == [b"data: [DONE]\n\n"]
    assert renderer.feed(Done(Usage())) == []
    assert renderer.error(GatewayError(ErrorKind.INTERNAL, "x")) == []


# ---------------------------------------------------------------------------------------------------------------
# Routes


def test_routes() -> None:
    table = {(r.method, r.path): r for r in oa.ROUTES}
    assert set(table) == {
        ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
        ("GET", "/v1/models"), ("GET", "/v1/models/<path:model>"), ("GET", "/health"),
        ("POST", "/api/chat/completions"), ("GET", "/api/models"),  # the seed service's paths
    }
    assert all(r.family == "openai" and r.render_error is oa.render_error for r in oa.ROUTES)
    assert table["POST", "/v1/chat/completions"].stream is oa.ChatStream
    assert table["POST", "/v1/completions"].stream is oa.CompletionStream
    assert table["POST", "/v1/embeddings"].stream is None
    assert table["POST", "/api/chat/completions"].parse is oa.parse_chat
    assert {r.path for r in oa.ROUTES if r.body == "none"} == {"/v1/models", "/v1/models/<path:model>", "/health",
                                                               "/api/models"}
