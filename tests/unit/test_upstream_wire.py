"""The OpenAI wire as the upstream backend speaks it: internal requests as request bodies, streamed chunks as the
backend's events (reasoning and tool calls already split by the upstream), and upstream errors as ours."""

from __future__ import annotations

import json

import pytest

from gateway.backends.base import ChoicePlan, SplitPiece
from gateway.backends.upstream import context_size
from gateway.backends.upstream_wire import SSEDecoder, StreamTranslator, refusal, request_body, stream_error
from gateway.engine.jobs import Finished, Started
from gateway.output import ChoiceOutput, OutputPlan
from gateway.types import (
    Constraint,
    ErrorKind,
    GatewayError,
    InternalRequest,
    Message,
    SamplingParams,
    TextDelta,
    ThinkingDelta,
    Tool,
    ToolCall,
    ToolCallDelta,
)
from tests.unit.upstream_fake import CHAT_CHUNKS

URL = "http://gpu-node:8000"


def chat(**fields) -> InternalRequest:
    return InternalRequest(kind="chat", messages=[Message("user", "Weather in Paris?")], **fields)


def body_of(req: InternalRequest, sampling: SamplingParams | None = None) -> tuple[str, dict]:
    return request_body(req, "meta-llama/Llama-3.1-70B", sampling or req.sampling, req.messages)


# -- requests ----------------------------------------------------------------------------------------------------


def test_a_plain_chat_sends_only_what_it_set():
    path, body = body_of(chat())
    assert path == "/v1/chat/completions"
    assert body == {"model": "meta-llama/Llama-3.1-70B", "stream": True,
                    "stream_options": {"include_usage": True, "continuous_usage_stats": True},
                    "messages": [{"role": "user", "content": "Weather in Paris?"}]}


def test_tools_a_named_tool_choice_and_a_schema_go_as_openai_fields():
    schema = {"type": "object", "properties": {"city": {"type": "string"}}}
    req = chat(tools=[Tool("get_weather", "Weather now", schema)], tool_choice="get_weather",
               parallel_tool_calls=False, constraint=Constraint("json_schema", schema))
    body = body_of(req)[1]
    assert body["tools"] == [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
                                                              "parameters": schema}}]
    assert body["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert body["parallel_tool_calls"] is False
    assert body["response_format"] == {"type": "json_schema", "json_schema": {"name": "response", "schema": schema}}


@pytest.mark.parametrize(("constraint", "field"), [
    (Constraint("json"), {"response_format": {"type": "json_object"}}),
    (Constraint("regex", r"\d+"), {"structured_outputs": {"regex": r"\d+"}}),
    (Constraint("choice", ["yes", "no"]), {"structured_outputs": {"choice": ["yes", "no"]}}),
    (Constraint("gbnf", 'root ::= "a"'), {"structured_outputs": {"grammar": 'root ::= "a"'}}),
])
def test_constraints_without_an_openai_field_use_vllms_structured_outputs(constraint, field):
    body = body_of(chat(constraint=constraint))[1]
    assert {key: body[key] for key in field} == field


def test_sampling_extras_use_vllms_names_and_thinking_reaches_the_template():
    sampling = SamplingParams(temperature=0.2, top_k=40, repeat_penalty=1.1, seed=7, max_tokens=64, stop=["END"],
                              logprobs=True, top_logprobs=2, logit_bias={15: -1.0}, min_tokens=3,
                              skip_special_tokens=False)
    body = body_of(chat(think=False, n=2), sampling)[1]
    assert {k: body[k] for k in ("temperature", "top_k", "repetition_penalty", "seed", "max_tokens", "stop",
                                 "logprobs", "top_logprobs", "logit_bias", "min_tokens", "skip_special_tokens",
                                 "n", "chat_template_kwargs")} == {
        "temperature": 0.2, "top_k": 40, "repetition_penalty": 1.1, "seed": 7, "max_tokens": 64, "stop": ["END"],
        "logprobs": True, "top_logprobs": 2, "logit_bias": {"15": -1.0}, "min_tokens": 3,
        "skip_special_tokens": False, "n": 2, "chat_template_kwargs": {"enable_thinking": False}}


def test_earlier_calls_results_images_and_reasoning_keep_their_openai_shape():
    messages = [Message("user", "Look", images=[]), Message("assistant", None, thinking="hmm",
                                                            tool_calls=[ToolCall("call_1", "f", '{"a": 1}')]),
                Message("tool", "42", tool_call_id="call_1", name="f")]
    body = request_body(chat(), "m", SamplingParams(), messages)[1]
    assert body["messages"][1:] == [
        {"role": "assistant", "content": None, "reasoning_content": "hmm",
         "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]},
        {"role": "tool", "content": "42", "tool_call_id": "call_1", "name": "f"}]


def test_a_completion_sends_its_prompt_and_counts_logprobs_as_a_number():
    req = InternalRequest(kind="completion", prompts=["Once upon"], suffix="The end.",
                          sampling=SamplingParams(logprobs=True, top_logprobs=3))
    path, body = body_of(req)
    assert path == "/v1/completions"
    assert (body["prompt"], body["suffix"], body["logprobs"]) == ("Once upon", "The end.", 3)
    assert body_of(InternalRequest(kind="completion", prompts=["a", [1, 2]]))[1]["prompt"] == ["a", [1, 2]]


# -- streams -----------------------------------------------------------------------------------------------------


def translate(chunks: list[dict], n: int = 1, kind: str = "chat") -> list[tuple[int, object]]:
    translator = StreamTranslator([ChoicePlan(i, "", i == 0) for i in range(n)], kind, sent_at=0.0)
    events = [e for chunk in chunks for e in translator.feed(chunk, now=1.0)]
    return events + translator.finish(now=2.0)


def test_a_chat_stream_becomes_split_pieces_and_the_output_stage_passes_them_through():
    events = translate(CHAT_CHUNKS)
    assert events[0] == (0, Started(0, 0))  # the role chunk alone starts nothing
    finished = events[-1][1]
    assert isinstance(finished, Finished)
    assert (finished.reason, finished.prompt_tokens, finished.cached_tokens, finished.completion_tokens) == \
        ("stop", 12, 4, 7)
    output = ChoiceOutput(OutputPlan(), 0)
    out = [o for _, e in events if isinstance(e, SplitPiece)
           for o in output.feed_split(e.text, e.thinking, e.calls, e.logprobs)]
    assert out == [ThinkingDelta(0, "Think"), TextDelta(0, "Hel"), TextDelta(0, "lo"),
                   ToolCallDelta(0, 0, "call_up", "get_weather", ""), ToolCallDelta(0, 0, None, None, '{"city": '),
                   ToolCallDelta(0, 0, None, None, '"Paris"}')]
    assert (output.calls_made, output.reasoning_tokens) == (1, 1)


def test_a_call_without_an_id_gets_one_and_vllms_reasoning_field_is_read():
    chunk = {"choices": [{"index": 0, "delta": {"reasoning": "Hmm", "tool_calls": [
        {"index": 0, "function": {"name": "f", "arguments": "{}"}}]}}]}
    piece = translate([chunk])[1][1]
    assert piece.thinking == "Hmm"
    first = ChoiceOutput(OutputPlan(), 0).feed_split(piece.text, piece.thinking, piece.calls)[1]
    assert first.name == "f" and first.id.startswith("call_")


def test_usage_on_every_chunk_gives_the_prompt_size_at_the_start():
    chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": {"prompt_tokens": 9}}
    assert translate([chunk])[0] == (0, Started(9, 0))


def test_several_choices_each_count_their_own_pieces():
    chunks = [{"choices": [{"index": 1, "text": "b"}]}, {"choices": [{"index": 0, "text": "a"}]},
              {"choices": [{"index": 0, "text": "a", "finish_reason": "length"},
                           {"index": 1, "text": "", "finish_reason": "stop", "stop_reason": "\n"}]},
              {"choices": [], "usage": {"prompt_tokens": 4, "completion_tokens": 3}}]
    done = {i: e for i, e in translate(chunks, n=2, kind="completion") if isinstance(e, Finished)}
    assert (done[0].reason, done[0].completion_tokens, done[0].prompt_tokens) == ("length", 2, 4)
    assert (done[1].reason, done[1].completion_tokens, done[1].prompt_tokens, done[1].stop_sequence) == \
        ("stop", 1, 0, "\n")


def test_a_stream_cut_short_ends_its_open_choices_with_the_error():
    translator = StreamTranslator([ChoicePlan(0, "", True)], "chat", sent_at=0.0)
    translator.feed({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}, now=1.0)
    err = GatewayError(ErrorKind.UNAVAILABLE, "broke")
    assert translator.committed and not translator.complete
    [(_, finished)] = translator.finish(now=2.0, error=err)
    assert (finished.reason, finished.error) == ("error", err)
    [(_, cancelled)] = translator.finish(now=2.0, cancelled=True)
    assert (cancelled.reason, cancelled.error) == ("cancelled", None)


def test_logprobs_of_chat_and_completion_chunks():
    chat_chunk = {"choices": [{"index": 0, "delta": {"content": "Hi"}, "logprobs": {"content": [
        {"token": "Hi", "logprob": -0.5, "bytes": [72, 105], "top_logprobs": [{"token": "Hey", "logprob": -1.0}]}]}}]}
    [lp] = translate([chat_chunk])[1][1].logprobs
    assert (lp.token, lp.logprob, lp.bytes, lp.top) == ("Hi", -0.5, [72, 105], [("Hey", -1.0, [72, 101, 121], -1)])
    completion_chunk = {"choices": [{"index": 0, "text": "a", "logprobs": {
        "tokens": ["a"], "token_logprobs": [-0.25], "top_logprobs": [{"a": -0.25, "b": -2.0}]}}]}
    [lp] = translate([completion_chunk], kind="completion")[1][1].logprobs
    assert (lp.token, lp.logprob, [t[0] for t in lp.top]) == ("a", -0.25, ["a", "b"])


def test_sse_payloads_split_across_reads_and_comments_skipped():
    decoder = SSEDecoder()
    assert decoder.feed(b': keep-alive\n\ndata: {"a"') == []
    assert decoder.feed(b': 1}\r\n\r\ndata: [DONE]\n') == ['{"a": 1}']
    assert decoder.feed(b"\n") == ["[DONE]"]


# -- errors ------------------------------------------------------------------------------------------------------


def test_a_client_error_keeps_the_upstreams_message_and_field():
    refused = refusal(400, {"object": "error", "message": "`temperature` must be at most 2.", "param": "temperature"},
                      URL)
    assert (refused.error.kind, refused.error.message, refused.error.param) == \
        (ErrorKind.INVALID_REQUEST, "`temperature` must be at most 2.", "temperature")
    assert not refused.broken and not refused.busy


@pytest.mark.parametrize(("status", "kind", "broken", "busy"), [
    (500, ErrorKind.UNAVAILABLE, True, False), (502, ErrorKind.UNAVAILABLE, True, False),
    (503, ErrorKind.OVERLOADED, False, True), (429, ErrorKind.OVERLOADED, False, True),
    (404, ErrorKind.UNAVAILABLE, False, False), (401, ErrorKind.UNAVAILABLE, False, False),
    (413, ErrorKind.TOO_LARGE, False, False),
])
def test_what_each_status_means(status, kind, broken, busy):
    refused = refusal(status, "text", URL)
    assert (refused.error.kind, refused.broken, refused.busy) == (kind, broken, busy)


def test_an_error_event_in_a_stream_is_a_failure_unless_it_names_a_client_error():
    assert stream_error({"choices": []}, URL) is None
    crashed = stream_error({"error": {"message": "CUDA out of memory", "code": 500}}, URL)
    assert crashed.broken and "CUDA out of memory" in crashed.error.message
    bad = stream_error({"object": "error", "message": "bad `n`", "code": 400}, URL)
    assert not bad.broken and bad.error.kind == ErrorKind.INVALID_REQUEST


@pytest.mark.parametrize(("answer", "n_ctx"), [
    ({"data": [{"id": "m", "max_model_len": 32768}]}, 32768),  # vLLM, SGLang, llm-gateway
    ({"data": [{"id": "m", "meta": {"n_ctx_train": 8192}}]}, 8192),  # llama-server
    ({"data": [{"id": "other", "max_model_len": 1}, {"id": "m", "max_model_len": 2048}]}, 2048),
    ({"data": [{"id": "m"}]}, 0),  # Ollama's /v1 says nothing
    ({"models": []}, 0),
])
def test_the_context_size_from_v1_models(answer, n_ctx):
    assert context_size(json.loads(json.dumps(answer)), "m") == n_ctx
