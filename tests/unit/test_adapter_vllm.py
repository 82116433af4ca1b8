"""The vLLM adapter, with plain dicts in and plain dicts or bytes out: no server, no model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters import openai as oa
from adapters import vllm, vllm_extras
from adapters.base import RequestContext
from gateway.types import (
    Choice,
    ChoiceDone,
    Constraint,
    DetokenizeResult,
    Done,
    ErrorKind,
    GatewayError,
    GenerationResult,
    InternalRequest,
    Message,
    SamplingParams,
    TextDelta,
    TokenizeResult,
    Tool,
    Usage,
    VersionResult,
)

CTX = RequestContext(request_id="r1", created=1700000000)
USER = [{"role": "user", "content": "hi"}]
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}}


def chat(**extra: Any) -> InternalRequest:
    """A chat body through the OpenAI adapter, then vLLM's extras, as the lead's route will do."""
    body = {"model": "m", "messages": USER, **extra}
    req = oa.parse_chat(body, CTX)
    vllm_extras.apply_extras(body, req)
    return req


def completion(**extra: Any) -> InternalRequest:
    body = {"model": "m", "prompt": "Once", **extra}
    req = oa.parse_completion(body, CTX)
    vllm_extras.apply_extras(body, req)
    return req


def attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = obj[int(name)] if name.isdigit() else (obj[name] if isinstance(obj, dict) else getattr(obj, name))
    return obj


# ---------------------------------------------------------------------------------------------------------------
# apply_extras: good bodies


@pytest.mark.parametrize("make, extra, path, expected", [
    (chat, {}, "sampling", SamplingParams()),
    (chat, {}, "constraint", None),
    (chat, {}, "add_generation_prompt", True),
    (chat, {}, "echo", False),
    (chat, {"repetition_penalty": 1.1}, "sampling.repeat_penalty", 1.1),
    (chat, {"ignore_eos": True}, "sampling.ignore_eos", True),
    (chat, {"min_tokens": 3}, "sampling.min_tokens", 3),
    (chat, {"min_tokens": 3, "max_tokens": 3}, "sampling.min_tokens", 3),
    (chat, {"stop_token_ids": [2, 32000]}, "sampling.stop_token_ids", [2, 32000]),
    (chat, {"include_stop_str_in_output": True}, "sampling.include_stop_str", True),
    (chat, {"skip_special_tokens": False}, "sampling.skip_special_tokens", False),
    (chat, {"truncate_prompt_tokens": 100}, "truncate_tokens", 100),
    (chat, {"truncate_prompt_tokens": -1}, "truncate_tokens", None),
    (chat, {"add_generation_prompt": False}, "add_generation_prompt", False),
    (chat, {"continue_final_message": True}, "continue_final_message", True),
    (chat, {"continue_final_message": True}, "add_generation_prompt", False),
    (chat, {"continue_final_message": True, "add_generation_prompt": False}, "add_generation_prompt", False),
    (chat, {"chat_template_kwargs": {"enable_thinking": False}}, "template_kwargs", {"enable_thinking": False}),
    (chat, {"add_special_tokens": True}, "add_special_tokens", True),
    (chat, {"chat_template": None, "use_beam_search": False, "bad_words": [], "allowed_token_ids": None,
            "length_penalty": 1.0, "prompt_logprobs": None, "logits_processors": [], "priority": 0,
            "request_id": "x", "spaces_between_special_tokens": True, "guided_decoding_backend": "xgrammar",
            "guided_whitespace_pattern": None}, "sampling", SamplingParams()),
    # echo repeats the last message only when it has the role being generated
    (chat, {"echo": True}, "echo", False),
    (chat, {"echo": True, "add_generation_prompt": False}, "echo", True),
    (chat, {"echo": True, "messages": [*USER, {"role": "assistant", "content": "Sure,"}]}, "echo", True),
    # guided decoding, old and new spellings
    (chat, {"guided_json": SCHEMA}, "constraint", Constraint("json_schema", SCHEMA)),
    (chat, {"guided_json": json.dumps(SCHEMA)}, "constraint", Constraint("json_schema", SCHEMA)),
    (chat, {"guided_regex": "[a-z]+"}, "constraint", Constraint("regex", "[a-z]+")),
    (chat, {"guided_choice": ["yes", "no"]}, "constraint", Constraint("choice", ["yes", "no"])),
    (chat, {"guided_grammar": "root ::= \"x\""}, "constraint", Constraint("gbnf", "root ::= \"x\"")),
    (chat, {"structured_outputs": {"json": SCHEMA}}, "constraint", Constraint("json_schema", SCHEMA)),
    (chat, {"structured_outputs": {"regex": "\\d+", "disable_any_whitespace": True}}, "constraint",
     Constraint("regex", "\\d+")),
    (chat, {"structured_outputs": {"choice": ["a"]}}, "constraint", Constraint("choice", ["a"])),
    (chat, {"structured_outputs": {"grammar": "g"}}, "constraint", Constraint("gbnf", "g")),
    (chat, {"structured_outputs": {"json_object": True}}, "constraint", Constraint("json")),
    (chat, {"structured_outputs": {"json_object": False}}, "constraint", None),
    (chat, {"structured_outputs": None}, "constraint", None),
    # a guided field wins over response_format, as in vLLM
    (chat, {"response_format": {"type": "json_object"}, "guided_regex": "x"}, "constraint", Constraint("regex", "x")),
    (chat, {"response_format": {"type": "json_object"}}, "constraint", Constraint("json")),
    # completions: max_tokens defaults to 16, and echo stays the OpenAI adapter's
    (completion, {"min_tokens": 16}, "sampling.min_tokens", 16),
    (completion, {"echo": True}, "echo", True),
    (completion, {"guided_choice": ["a", "b"]}, "constraint", Constraint("choice", ["a", "b"])),
    (completion, {"add_generation_prompt": False}, "add_generation_prompt", True),
])
def test_apply_extras(make: Any, extra: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(make(**extra), path) == expected


# ---------------------------------------------------------------------------------------------------------------
# apply_extras: bad bodies


@pytest.mark.parametrize("make, extra, param", [
    (chat, {"repetition_penalty": 0}, "repetition_penalty"),
    (chat, {"repetition_penalty": "1"}, "repetition_penalty"),
    (chat, {"ignore_eos": "yes"}, "ignore_eos"),
    (chat, {"min_tokens": -1}, "min_tokens"),
    (chat, {"min_tokens": 1.5}, "min_tokens"),
    (chat, {"min_tokens": 5, "max_tokens": 4}, "min_tokens"),
    (completion, {"min_tokens": 17}, "min_tokens"),
    (chat, {"stop_token_ids": 2}, "stop_token_ids"),
    (chat, {"stop_token_ids": [-1]}, "stop_token_ids"),
    (chat, {"stop_token_ids": [True]}, "stop_token_ids"),
    (chat, {"include_stop_str_in_output": 1}, "include_stop_str_in_output"),
    (chat, {"skip_special_tokens": "no"}, "skip_special_tokens"),
    (chat, {"truncate_prompt_tokens": 0}, "truncate_prompt_tokens"),
    (chat, {"truncate_prompt_tokens": -2}, "truncate_prompt_tokens"),
    (chat, {"echo": "yes"}, "echo"),
    (chat, {"add_generation_prompt": "no"}, "add_generation_prompt"),
    (chat, {"continue_final_message": True, "add_generation_prompt": True}, "continue_final_message"),
    (chat, {"chat_template": "{{ messages }}"}, "chat_template"),
    (chat, {"chat_template_kwargs": []}, "chat_template_kwargs"),
    (chat, {"add_special_tokens": 1}, "add_special_tokens"),
    (chat, {"use_beam_search": True}, "use_beam_search"),
    (chat, {"allowed_token_ids": [1, 2]}, "allowed_token_ids"),
    (chat, {"bad_words": ["x"]}, "bad_words"),
    (chat, {"prompt_logprobs": 0}, "prompt_logprobs"),
    (chat, {"logits_processors": ["pkg.fn"]}, "logits_processors"),
    (chat, {"structural_tag": "{}"}, "structural_tag"),
    (chat, {"guided_json": "{oops"}, "guided_json"),
    (chat, {"guided_json": [1]}, "guided_json"),
    (chat, {"guided_regex": ""}, "guided_regex"),
    (chat, {"guided_choice": []}, "guided_choice"),
    (chat, {"guided_choice": ["a", 1]}, "guided_choice"),
    (chat, {"guided_grammar": 5}, "guided_grammar"),
    (chat, {"structured_outputs": "json"}, "structured_outputs"),
    (chat, {"structured_outputs": {"json_object": "yes"}}, "structured_outputs.json_object"),
    (chat, {"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag"),
    (chat, {"guided_json": SCHEMA, "guided_regex": "x"}, "guided_regex"),
    (chat, {"guided_choice": ["a"], "structured_outputs": {"json": SCHEMA}}, "structured_outputs.json"),
    (chat, {"structured_outputs": {"regex": "x", "grammar": "g"}}, "structured_outputs.grammar"),
])
def test_apply_extras_rejects(make: Any, extra: dict[str, Any], param: str) -> None:
    err = _invalid(make, **extra)
    assert err.param == param
    assert f"`{param}`" in err.message


def test_conflicting_constraints_message_names_both() -> None:
    err = _invalid(chat, guided_json=SCHEMA, guided_regex="x")
    assert err.message == ("You can only use one kind of structured outputs constraint but multiple are specified: "
                           "`guided_json`, `guided_regex`.")


def _invalid(parse: Any, *args: Any, **extra: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse(*args, **extra)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# /tokenize, /detokenize, /version


@pytest.mark.parametrize("body, path, expected", [
    ({"prompt": "Hello"}, "kind", "tokenize"),
    ({"prompt": "Hello"}, "prompts", ["Hello"]),
    ({"prompt": "Hello"}, "model", ""),
    ({"prompt": "Hello", "model": "m"}, "model", "m"),
    ({"prompt": ""}, "prompts", [""]),
    ({"prompt": "Hello"}, "add_special_tokens", True),
    ({"prompt": "Hello", "add_special_tokens": False}, "add_special_tokens", False),
    ({"prompt": "Hello"}, "render", {"return_token_strs": False}),
    ({"prompt": "Hello", "return_token_strs": True}, "render", {"return_token_strs": True}),
    ({"prompt": "Hello", "return_token_strs": None}, "render", {"return_token_strs": False}),
    ({"messages": USER}, "messages", [Message(role="user", content="hi")]),
    ({"messages": USER}, "prompts", []),
    ({"messages": USER}, "add_special_tokens", False),
    ({"messages": USER}, "add_generation_prompt", True),
    ({"messages": USER, "add_generation_prompt": False}, "add_generation_prompt", False),
    ({"messages": USER, "continue_final_message": True}, "continue_final_message", True),
    ({"messages": USER, "continue_final_message": True}, "add_generation_prompt", False),
    ({"messages": USER, "chat_template_kwargs": {"x": 1}}, "template_kwargs", {"x": 1}),
    ({"messages": USER, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools", [Tool("f")]),
])
def test_parse_tokenize(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(vllm.parse_tokenize(body, CTX), path) == expected


@pytest.mark.parametrize("body, param", [
    ([], None),
    ({}, "prompt"),
    ({"prompt": 5}, "prompt"),
    ({"prompt": "x", "model": 1}, "model"),
    ({"prompt": "x", "add_special_tokens": "yes"}, "add_special_tokens"),
    ({"prompt": "x", "return_token_strs": 1}, "return_token_strs"),
    ({"messages": []}, "messages"),
    ({"messages": USER, "tools": {}}, "tools"),
    ({"messages": USER, "continue_final_message": True, "add_generation_prompt": True}, "continue_final_message"),
    ({"messages": USER, "chat_template": "x"}, "chat_template"),
])
def test_parse_tokenize_rejects(body: Any, param: str | None) -> None:
    assert _invalid(vllm.parse_tokenize, body, CTX).param == param


def test_parse_detokenize_and_version() -> None:
    assert vllm.parse_detokenize({"tokens": [1, 2]}, CTX) == InternalRequest(kind="detokenize", prompts=[[1, 2]])
    assert vllm.parse_detokenize({"tokens": [], "model": "m"}, CTX) == InternalRequest(
        kind="detokenize", model="m", prompts=[[]])
    assert vllm.parse_version(None, CTX) == InternalRequest(kind="version")


@pytest.mark.parametrize("body", [{}, {"tokens": "1 2"}, {"tokens": [1, -2]}, {"tokens": [1.0]}, {"tokens": [False]}])
def test_parse_detokenize_rejects(body: Any) -> None:
    err = _invalid(vllm.parse_detokenize, body, CTX)
    assert err.param == "tokens" and "`tokens`" in err.message


def test_render_tokenize() -> None:
    result = TokenizeResult([1, 9906], ["<s>", "Hello"], 4096, "m")
    plain = vllm.render_tokenize(result, vllm.parse_tokenize({"prompt": "Hello"}, CTX), CTX)
    assert plain == {"count": 2, "max_model_len": 4096, "tokens": [1, 9906], "token_strs": None}
    req = vllm.parse_tokenize({"prompt": "Hello", "return_token_strs": True}, CTX)
    assert vllm.render_tokenize(result, req, CTX)["token_strs"] == ["<s>", "Hello"]


def test_render_detokenize_and_version() -> None:
    assert vllm.render_detokenize(DetokenizeResult("Hello"), InternalRequest(kind="detokenize"), CTX) == {
        "prompt": "Hello"}
    assert vllm.render_version(VersionResult("0.1.0"), InternalRequest(kind="version"), CTX) == {"version": "0.1.0"}


# ---------------------------------------------------------------------------------------------------------------
# Legacy /generate


@pytest.mark.parametrize("body, path, expected", [
    ({"prompt": "Hi"}, "kind", "completion"),
    ({"prompt": "Hi"}, "prompts", ["Hi"]),
    ({"prompt": "Hi"}, "model", ""),
    ({"prompt": "Hi"}, "echo", False),
    ({"prompt": "Hi"}, "stream", False),
    ({"prompt": "Hi"}, "n", 1),
    ({"prompt": "Hi"}, "sampling", SamplingParams(max_tokens=16)),
    ({"prompt": "Hi", "stream": True, "n": 2, "model": "m"}, "n", 2),
    ({"prompt": "Hi", "n": 2, "best_of": 2}, "n", 2),
    ({"prompt": "Hi", "temperature": 0, "top_p": 1, "top_k": -1, "min_p": 0.1, "presence_penalty": 2,
      "frequency_penalty": -2, "seed": 5, "max_tokens": 50, "stop": "\n"}, "sampling",
     SamplingParams(temperature=0, top_p=1, top_k=0, min_p=0.1, presence_penalty=2, frequency_penalty=-2, seed=5,
                    max_tokens=50, stop=["\n"])),
    ({"prompt": "Hi", "top_k": 40, "stop": ["a", "b"]}, "sampling.stop", ["a", "b"]),
    ({"prompt": "Hi", "repetition_penalty": 1.2, "ignore_eos": True, "min_tokens": 4, "stop_token_ids": [7],
      "skip_special_tokens": False, "include_stop_str_in_output": True}, "sampling",
     SamplingParams(repeat_penalty=1.2, ignore_eos=True, min_tokens=4, stop_token_ids=[7], skip_special_tokens=False,
                    include_stop_str=True, max_tokens=16)),
    ({"prompt": "Hi", "logprobs": 2, "use_beam_search": False, "unknown_future_field": 1}, "sampling.logprobs", False),
    ({"prompt": "Hi", "structured_outputs": {"regex": "a+"}}, "constraint", Constraint("regex", "a+")),
])
def test_parse_generate(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(vllm.parse_generate(body, CTX), path) == expected


@pytest.mark.parametrize("body, param", [
    ({}, "prompt"),
    ({"prompt": ["a"]}, "prompt"),
    ({"prompt": "Hi", "stream": "yes"}, "stream"),
    ({"prompt": "Hi", "temperature": -0.1}, "temperature"),
    ({"prompt": "Hi", "top_p": 0}, "top_p"),
    ({"prompt": "Hi", "top_k": -2}, "top_k"),
    ({"prompt": "Hi", "min_p": 1.5}, "min_p"),
    ({"prompt": "Hi", "presence_penalty": 3}, "presence_penalty"),
    ({"prompt": "Hi", "frequency_penalty": -3}, "frequency_penalty"),
    ({"prompt": "Hi", "seed": 1.5}, "seed"),
    ({"prompt": "Hi", "max_tokens": 0}, "max_tokens"),
    ({"prompt": "Hi", "n": 0}, "n"),
    ({"prompt": "Hi", "n": 17}, "n"),
    ({"prompt": "Hi", "logprobs": -1}, "logprobs"),
    ({"prompt": "Hi", "stop": 5}, "stop"),
    ({"prompt": "Hi", "stop": ["a", ""]}, "stop"),
    ({"prompt": "Hi", "best_of": 3}, "best_of"),
    ({"prompt": "Hi", "min_tokens": 17}, "min_tokens"),
    ({"prompt": "Hi", "use_beam_search": True}, "use_beam_search"),
])
def test_parse_generate_rejects(body: Any, param: str) -> None:
    err = _invalid(vllm.parse_generate, body, CTX)
    assert err.param == param and f"`{param}`" in err.message


def test_legacy_messages_follow_vllm_wording() -> None:
    assert _invalid(vllm.parse_generate, {"prompt": "Hi", "temperature": -1}, CTX).message == (
        "`temperature` must be non-negative, got -1.")
    assert _invalid(vllm.parse_generate, {"prompt": "Hi", "min_tokens": 20}, CTX).message == (
        "`min_tokens` must be less than or equal to max_tokens=16, got 20.")


def test_render_generate_includes_the_prompt() -> None:
    req = vllm.parse_generate({"prompt": "San Francisco is", "n": 2}, CTX)
    result = GenerationResult([Choice(1, text=" cold"), Choice(0, text=" a city")], Usage())
    assert vllm.render_generate(result, req, CTX) == {"text": ["San Francisco is a city", "San Francisco is cold"]}


def test_generate_stream_byte_for_byte() -> None:
    """Cumulative text with the prompt, one `json.dumps` line per new text, nothing else."""
    req = vllm.parse_generate({"prompt": "Hi", "stream": True, "n": 2}, CTX)
    renderer = vllm.GenerateStream(req, CTX)
    frames = renderer.start()
    for event in [TextDelta(0, " there"), TextDelta(1, " é"), TextDelta(0, ""), TextDelta(0, "!"),
                  ChoiceDone(0, "stop"), ChoiceDone(1, "length"), Done(Usage())]:
        frames += renderer.feed(event)
    assert b"".join(frames) == (
        b'{"text": ["Hi there", "Hi"]}\n'
        b'{"text": ["Hi there", "Hi \\u00e9"]}\n'
        b'{"text": ["Hi there!", "Hi \\u00e9"]}\n'
    )
    assert renderer.feed(TextDelta(0, "x")) == [] and renderer.keepalive() == []


def test_generate_stream_without_text_still_sends_one_line() -> None:
    renderer = vllm.GenerateStream(vllm.parse_generate({"prompt": "Hi", "stream": True}, CTX), CTX)
    assert renderer.keepalive() == [b'{"text": ["Hi"]}\n']
    assert renderer.feed(ChoiceDone(0, "stop")) == []
    assert renderer.feed(Done(Usage())) == [b'{"text": ["Hi"]}\n']


def test_generate_stream_error_is_one_line() -> None:
    renderer = vllm.GenerateStream(vllm.parse_generate({"prompt": "Hi", "stream": True}, CTX), CTX)
    frames = renderer.error(GatewayError(ErrorKind.INTERNAL, "boom"))
    assert frames == [b'{"error": {"message": "boom", "type": "InternalServerError", "param": null, "code": 500}}\n']
    assert renderer.error(GatewayError(ErrorKind.INTERNAL, "again")) == []


# ---------------------------------------------------------------------------------------------------------------
# Errors and routes


@pytest.mark.parametrize("kind, status, wire_type", [
    (ErrorKind.INVALID_REQUEST, 400, "BadRequestError"),
    (ErrorKind.CONTEXT_OVERFLOW, 400, "BadRequestError"),
    (ErrorKind.NOT_FOUND, 404, "NotFoundError"),
    (ErrorKind.UNAUTHORIZED, 401, "Unauthorized"),
    (ErrorKind.TOO_LARGE, 413, "Request Entity Too Large"),
    (ErrorKind.OVERLOADED, 429, "Too Many Requests"),
    (ErrorKind.UNAVAILABLE, 503, "Service Unavailable"),
    (ErrorKind.INTERNAL, 500, "InternalServerError"),
])
def test_render_error(kind: ErrorKind, status: int, wire_type: str) -> None:
    assert vllm.render_error(GatewayError(kind, "boom", "p")) == (
        status, {"error": {"message": "boom", "type": wire_type, "param": "p", "code": status}})


def test_routes() -> None:
    by_path = {(r.method, r.path): r for r in vllm.ROUTES}
    assert set(by_path) == {("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/version"),
                            ("POST", "/generate")}
    assert all(r.accepts is None and r.family == "vllm" for r in vllm.ROUTES)  # TGI's routes pick `inputs` bodies
    assert by_path["POST", "/generate"].stream is vllm.GenerateStream
    assert by_path["POST", "/generate"].media_type == "application/x-ndjson"
    assert by_path["GET", "/version"].body == "none"
