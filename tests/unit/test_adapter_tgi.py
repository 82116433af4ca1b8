"""The TGI adapter, with plain dicts in and plain dicts or bytes out: no server, no model."""

from __future__ import annotations

import json
from typing import Any

import pytest

from adapters import tgi
from adapters.base import RequestContext
from gateway.types import (
    Choice,
    ChoiceDone,
    Constraint,
    Done,
    ErrorKind,
    GatewayError,
    GenerationResult,
    InternalRequest,
    ModelInfo,
    SamplingParams,
    TextDelta,
    TokenizeResult,
    TokenLogprob,
    Usage,
)

CTX = RequestContext(request_id="r1", created=1700000000, server_version="0.1.0")
SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}}


def gen(**parameters: Any) -> dict[str, Any]:
    return {"inputs": "Hello", "parameters": parameters}


def attr(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = obj[int(name)] if name.isdigit() else (obj[name] if isinstance(obj, dict) else getattr(obj, name))
    return obj


# ---------------------------------------------------------------------------------------------------------------
# Parsing: good bodies


@pytest.mark.parametrize("body, path, expected", [
    (gen(), "kind", "completion"),
    (gen(), "prompts", ["Hello"]),
    (gen(), "model", ""),
    (gen(), "stream", False),
    (gen(), "constraint", None),
    (gen(), "truncate_tokens", None),
    (gen(), "render", {"details": False, "full_text": False, "seed": None}),
    # parameters present: serde defaults, so greedy; absent: default_parameters(), which samples
    (gen(), "sampling", SamplingParams(temperature=0.0, logprobs=True)),
    ({"inputs": "Hello"}, "sampling", SamplingParams(logprobs=True)),
    ({"inputs": "Hello", "parameters": None}, "sampling.temperature", None),
    (gen(do_sample=True), "sampling.temperature", None),
    (gen(do_sample=True, seed=7), "render.seed", 7),
    (gen(seed=7), "render.seed", None),
    (gen(seed=7), "sampling.seed", 7),
    (gen(temperature=0.5), "sampling.temperature", 0.5),
    (gen(temperature=1.0), "sampling.temperature", 0.0),
    (gen(temperature=1.0, do_sample=True), "sampling.temperature", 1.0),
    (gen(top_k=10), "sampling", SamplingParams(top_k=10, logprobs=True)),
    (gen(top_p=0.9), "sampling", SamplingParams(top_p=0.9, logprobs=True)),
    (gen(typical_p=0.5), "sampling", SamplingParams(typical_p=0.5, logprobs=True)),
    (gen(top_p=0.9, seed=3), "render.seed", 3),
    (gen(max_new_tokens=20), "sampling.max_tokens", 20),
    (gen(repetition_penalty=1.03), "sampling.repeat_penalty", 1.03),
    (gen(frequency_penalty=-2), "sampling.frequency_penalty", -2),
    (gen(stop=["\n", "", "END"]), "sampling.stop", ["\n", "END"]),
    (gen(stop=None), "sampling.stop", []),
    (gen(top_n_tokens=5), "sampling.top_logprobs", 5),
    (gen(top_n_tokens=0), "sampling.top_logprobs", 0),
    (gen(truncate=100), "truncate_tokens", 100),
    (gen(return_full_text=True), "render.full_text", True),
    (gen(details=True), "render.details", True),
    (gen(decoder_input_details=False, watermark=True, best_of=1), "kind", "completion"),
    (gen(adapter_id="other-model"), "model", "other-model"),
    (gen(grammar={"type": "json", "value": SCHEMA}), "constraint", Constraint("json_schema", SCHEMA)),
    (gen(grammar={"type": "json_object", "value": json.dumps(SCHEMA)}), "constraint",
     Constraint("json_schema", SCHEMA)),
    (gen(grammar={"type": "regex", "value": "[0-9]+"}), "constraint", Constraint("regex", "[0-9]+")),
    (gen(grammar={"type": "json_schema", "value": {"name": "x", "schema": SCHEMA}}), "constraint",
     Constraint("json_schema", SCHEMA)),
    ({**gen(), "stream": True}, "stream", False),  # /generate ignores `stream`
])
def test_parse_generate(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(tgi.parse_generate(body, CTX), path) == expected


@pytest.mark.parametrize("body, path, expected", [
    (gen(), "stream", False),
    ({**gen(), "stream": True}, "stream", True),
    (gen(), "render.full_text", False),
    (gen(return_full_text=True), "render.full_text", True),
    ({"inputs": "Hi"}, "sampling.temperature", None),
])
def test_parse_compat(body: dict[str, Any], path: str, expected: Any) -> None:
    assert attr(tgi.parse_compat(body, CTX), path) == expected


def test_parse_generate_stream_and_queries() -> None:
    req = tgi.parse_generate_stream(gen(details=True), CTX)
    assert req.stream and req.render["details"] and not req.render["full_text"]
    assert tgi.parse_info(None, CTX) == InternalRequest(kind="show_model", model="")
    assert tgi.parse_tokenize({"inputs": "", "parameters": {}}, CTX) == InternalRequest(
        kind="tokenize", prompts=[""], add_special_tokens=True)


@pytest.mark.parametrize("body, accepted", [
    ({"inputs": "x"}, True),
    ({"inputs": None}, True),
    ({"prompt": "x"}, False),
    ({"tokens": [1]}, False),
    ({"messages": []}, False),
    ([], False),
    (None, False),
])
def test_accepts_only_bodies_with_inputs(body: Any, accepted: bool) -> None:
    assert tgi.has_inputs(body, CTX) is accepted


def test_routes_that_share_paths_with_vllm_have_accepts() -> None:
    by_path = {(r.method, r.path): r for r in tgi.ROUTES}
    assert by_path["POST", "/generate"].accepts is tgi.has_inputs
    assert by_path["POST", "/tokenize"].accepts is tgi.has_inputs
    assert by_path["POST", "/"].accepts is None and by_path["POST", "/"].stream is tgi.TGIStream
    assert by_path["POST", "/generate_stream"].stream is tgi.TGIStream
    assert by_path["POST", "/generate"].stream is None
    assert by_path["GET", "/info"].body == "none"
    assert all(r.family == "tgi" for r in tgi.ROUTES)


# ---------------------------------------------------------------------------------------------------------------
# Parsing: bad bodies


@pytest.mark.parametrize("body, param, message", [
    ([], None, "JSON object"),
    ({"parameters": {}}, "inputs", "`inputs`"),
    ({"inputs": 5}, "inputs", "`inputs`"),
    ({"inputs": ""}, "inputs", "`inputs` cannot be empty"),
    ({"inputs": "x", "parameters": []}, "parameters", "`parameters`"),
    (gen(temperature=0), "parameters.temperature", "`temperature` must be strictly positive"),
    (gen(temperature="hot"), "parameters.temperature", "`parameters.temperature`"),
    (gen(repetition_penalty=0), "parameters.repetition_penalty", "`repetition_penalty` must be strictly positive"),
    (gen(frequency_penalty=2.5), "parameters.frequency_penalty", "`frequency_penalty` must be >= -2.0 and <= 2.0"),
    (gen(top_k=0), "parameters.top_k", "`top_k` must be strictly positive"),
    (gen(top_k=1.5), "parameters.top_k", "`parameters.top_k`"),
    (gen(top_p=1.0), "parameters.top_p", "`top_p` must be > 0.0 and < 1.0"),
    (gen(top_p=0), "parameters.top_p", "`top_p` must be > 0.0 and < 1.0"),
    (gen(typical_p=1), "parameters.typical_p", "`typical_p` must be > 0.0 and < 1.0"),
    (gen(max_new_tokens=0), "parameters.max_new_tokens", "`max_new_tokens` must be strictly positive"),
    (gen(stop="x"), "parameters.stop", "`parameters.stop`"),
    (gen(stop=["a", 1]), "parameters.stop[1]", "`parameters.stop[1]`"),
    (gen(stop=["a", "b", "c", "d", "e"]), "parameters.stop", "`stop` supports up to 4 stop sequences. Given: 5"),
    (gen(seed=-1), "parameters.seed", "`parameters.seed`"),
    (gen(top_n_tokens=6), "parameters.top_n_tokens", "`top_n_tokens` must be >= 0 and <= 5. Given: 6"),
    (gen(truncate=0), "parameters.truncate", "`truncate` must be strictly positive. Given: 0"),
    (gen(best_of=2), "parameters.best_of", "`best_of` != 1 is not allowed for this endpoint"),
    (gen(best_of=0), "parameters.best_of", "`best_of` must be > 0 and <= 1. Given: 0"),
    (gen(decoder_input_details=True), "parameters.decoder_input_details", "`decoder_input_details`"),
    (gen(details="yes"), "parameters.details", "`parameters.details`"),
    (gen(do_sample=1), "parameters.do_sample", "`parameters.do_sample`"),
    (gen(return_full_text="no"), "parameters.return_full_text", "`parameters.return_full_text`"),
    (gen(watermark="no"), "parameters.watermark", "`parameters.watermark`"),
    (gen(adapter_id=3), "parameters.adapter_id", "`parameters.adapter_id`"),
    (gen(grammar="json"), "parameters.grammar", "`parameters.grammar`"),
    (gen(grammar={"value": SCHEMA}), "parameters.grammar.type", "`parameters.grammar.type`"),
    (gen(grammar={"type": "ebnf", "value": "x"}), "parameters.grammar.type", "`parameters.grammar.type`"),
    (gen(grammar={"type": "json", "value": "{oops"}), "parameters.grammar.value", "grammar is not valid"),
    (gen(grammar={"type": "json", "value": [1]}), "parameters.grammar.value", "grammar is not valid"),
    (gen(grammar={"type": "regex"}), "parameters.grammar.value", "`parameters.grammar.value`"),
    (gen(grammar={"type": "json_schema", "value": {"name": "x"}}), "parameters.grammar.value.schema",
     "`parameters.grammar.value.schema`"),
])
def test_parse_generate_rejects(body: Any, param: str | None, message: str) -> None:
    err = _invalid(tgi.parse_generate, body)
    assert err.param == param
    assert message in err.message


def test_streams_refuse_decoder_input_details_with_tgis_message() -> None:
    err = _invalid(tgi.parse_generate_stream, gen(decoder_input_details=True))
    assert err.message == "`decoder_input_details` == true is not supported when streaming tokens"


@pytest.mark.parametrize("body, param", [
    ({"inputs": "x", "stream": "yes"}, "stream"),
    ({"stream": True}, "inputs"),
])
def test_parse_compat_rejects(body: Any, param: str) -> None:
    assert _invalid(tgi.parse_compat, body).param == param


def test_parse_tokenize_rejects() -> None:
    assert _invalid(tgi.parse_tokenize, {"inputs": 1}).param == "inputs"


def _invalid(parse: Any, body: Any) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        parse(body, CTX)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    return caught.value


# ---------------------------------------------------------------------------------------------------------------
# Rendering finished results

LP1 = TokenLogprob(" Deep", -0.25, list(b" Deep"), top=[(" Deep", -0.25, list(b" Deep"), 1939),
                                                        (" A", -2.5, list(b" A"), 11)], id=1939)
LP2 = TokenLogprob(" learning", -0.5, list(b" learning"), top=[(" learning", -0.5, list(b" learning"), 4673)],
                   id=4673)
LP_SPECIAL = TokenLogprob("<|im_end|>", -0.125, list(b"<|im_end|>"), id=2, special=True)


def generated(text: str = " Deep learning", reason: Any = "length", stop: str | None = None,
              logprobs: list[TokenLogprob] | None = None) -> GenerationResult:
    choice = Choice(0, text=text, finish_reason=reason, stop_sequence=stop, logprobs=logprobs or [LP1, LP2])
    return GenerationResult([choice], Usage(prompt_tokens=5, completion_tokens=2))


def test_render_generate_plain() -> None:
    req = tgi.parse_generate(gen(), CTX)
    assert tgi.render_generate(generated(), req, CTX) == {"generated_text": " Deep learning"}


def test_render_generate_details_and_top_tokens() -> None:
    req = tgi.parse_generate(gen(details=True, do_sample=True, seed=42, top_n_tokens=2, return_full_text=True), CTX)
    assert tgi.render_generate(generated(), req, CTX) == {
        "generated_text": "Hello Deep learning",
        "details": {
            "finish_reason": "length", "generated_tokens": 2, "seed": 42, "prefill": [],
            "tokens": [{"id": 1939, "text": " Deep", "logprob": -0.25, "special": False},
                       {"id": 4673, "text": " learning", "logprob": -0.5, "special": False}],
            "top_tokens": [
                [{"id": 1939, "text": " Deep", "logprob": -0.25, "special": False},
                 {"id": 11, "text": " A", "logprob": -2.5, "special": False}],
                [{"id": 4673, "text": " learning", "logprob": -0.5, "special": False}],
            ],
        },
    }


def test_render_generate_parses_with_huggingface_hub() -> None:
    types = pytest.importorskip("huggingface_hub.inference._generated.types.text_generation")
    req = tgi.parse_compat(gen(details=True, top_n_tokens=1, return_full_text=True), CTX)
    out = types.TextGenerationOutput.parse_obj_as_instance(tgi.render_compat(generated(), req, CTX)[0])
    assert out.generated_text == "Hello Deep learning"
    assert [t.text for t in out.details.tokens] == [" Deep", " learning"]
    assert out.details.top_tokens[0][0]["id"] == 1939  # nested lists stay plain dicts in huggingface_hub


def test_details_token_texts_add_up_across_a_split_character() -> None:
    """`é` is two byte tokens: the first gets "", the second the character, as TGI's incremental decoding does."""
    lps = [TokenLogprob("\ufffd", -1.0, [0xC3], id=1), TokenLogprob("\ufffd", -2.0, [0xA9], id=2),
           TokenLogprob("!", -0.5, [33], id=3)]
    out = tgi.render_generate(generated("é!", logprobs=lps), tgi.parse_generate(gen(details=True), CTX), CTX)
    assert [t["text"] for t in out["details"]["tokens"]] == ["", "é", "!"]
    assert tgi.token_texts([TokenLogprob("\ufffd", -1.0, [0xC3])]) == ["\ufffd"]  # cut off for good at the end


@pytest.mark.parametrize("reason, stop, wire", [
    ("length", None, "length"),
    ("stop", None, "eos_token"),
    ("stop", "END", "stop_sequence"),
    ("cancelled", None, "eos_token"),
])
def test_finish_reasons(reason: Any, stop: str | None, wire: str) -> None:
    req = tgi.parse_generate(gen(details=True), CTX)
    out = tgi.render_generate(generated(reason=reason, stop=stop, logprobs=[LP_SPECIAL]), req, CTX)
    assert out["details"]["finish_reason"] == wire
    assert out["details"]["seed"] is None and "top_tokens" not in out["details"]
    assert out["details"]["tokens"] == [{"id": 2, "text": "<|im_end|>", "logprob": -0.125, "special": True}]


def test_render_compat_is_a_list() -> None:
    req = tgi.parse_compat({"inputs": "Hello", "parameters": {}}, CTX)
    assert tgi.render_compat(generated(), req, CTX) == [{"generated_text": " Deep learning"}]


def test_render_info() -> None:
    info = ModelInfo("qwen2.5-0.5b", 1, context_length=32768, max_model_len=4096, quantization="Q4_K_M",
                     digest="ab" * 32)
    assert tgi.render_info(info, tgi.parse_info(None, CTX), CTX) == {
        "model_id": "qwen2.5-0.5b", "model_sha": "ab" * 32, "model_dtype": "Q4_K_M",
        "model_pipeline_tag": "text-generation", "max_concurrent_requests": 128, "max_best_of": 1,
        "max_stop_sequences": 4, "max_input_tokens": 4095, "max_total_tokens": 4096, "validation_workers": 2,
        "max_client_batch_size": 4, "router": "text-generation-router", "version": "0.1.0", "sha": None,
        "docker_label": None,
    }


def test_render_info_falls_back_to_the_trained_context() -> None:
    out = tgi.render_info(ModelInfo("m", 1, context_length=2048), InternalRequest(kind="show_model"), CTX)
    assert (out["max_input_tokens"], out["max_total_tokens"], out["model_sha"], out["model_dtype"]) == (
        2047, 2048, None, None)


@pytest.mark.parametrize("text, tokens, pieces, expected", [
    ("Hello world", [9906, 1917], ["Hello", " world"], [(0, 5, "Hello"), (5, 11, " world")]),
    # BOS is not in the text; SentencePiece's added prefix space is not either
    ("Hello world", [1, 15043, 3186], ["<s>", " Hello", " world"],
     [(0, 0, ""), (0, 5, "Hello"), (5, 11, " world")]),
    # a character split into byte tokens: each fragment covers the whole character, as HF tokenizers report
    ("a你b", [64, 1, 2, 3, 65], ["a", "\ufffd", "\ufffd", "\ufffd", "b"],
     [(0, 1, "a"), (1, 4, "你"), (1, 4, "你"), (1, 4, "你"), (4, 5, "b")]),
    # byte-level BPE: a fragment, then a token that completes the character and goes on
    ("你好!", [1, 2, 3], ["\ufffd", "\ufffd好", "!"], [(0, 6, "你好"), (0, 6, "你好"), (6, 7, "!")]),
    ("é", [1, 2], ["\ufffd", "\ufffd"], [(0, 2, "é"), (0, 2, "é")]),
    ("", [1], ["<s>"], [(0, 0, "")]),
])
def test_render_tokenize_offsets(text: str, tokens: list[int], pieces: list[str], expected: list[Any]) -> None:
    req = tgi.parse_tokenize({"inputs": text}, CTX)
    out = tgi.render_tokenize(TokenizeResult(tokens, pieces, 4096, "m"), req, CTX)
    assert out == [{"id": t, "text": s, "start": a, "stop": b} for t, (a, b, s) in zip(tokens, expected, strict=True)]


@pytest.mark.parametrize("kind, status, error_type, message", [
    (ErrorKind.INVALID_REQUEST, 422, "validation", "Input validation error: boom"),
    (ErrorKind.CONTEXT_OVERFLOW, 422, "validation", "Input validation error: boom"),
    (ErrorKind.NOT_FOUND, 404, "not_found", "boom"),
    (ErrorKind.UNAUTHORIZED, 401, "unauthorized", "boom"),
    (ErrorKind.TOO_LARGE, 413, "validation", "Input validation error: boom"),
    (ErrorKind.OVERLOADED, 429, "overloaded", "boom"),
    (ErrorKind.UNAVAILABLE, 503, "unavailable", "boom"),
    (ErrorKind.INTERNAL, 424, "generation", "Request failed during generation: boom"),
])
def test_render_error(kind: ErrorKind, status: int, error_type: str, message: str) -> None:
    assert tgi.render_error(GatewayError(kind, "boom", "p")) == (status, {"error": message, "error_type": error_type})


# ---------------------------------------------------------------------------------------------------------------
# Streaming


def run_stream(req: InternalRequest, events: list[Any]) -> bytes:
    renderer = tgi.TGIStream(req, CTX)
    frames = renderer.start()
    for event in events:
        frames += renderer.feed(event)
    return b"".join(frames)


DONE_USAGE = Usage(prompt_tokens=5, completion_tokens=2)


def test_stream_byte_for_byte() -> None:
    """Each token is sent when the next one arrives; the last token is the final event."""
    req = tgi.parse_generate_stream(gen(), CTX)
    body = run_stream(req, [
        TextDelta(0, " Deep", [LP1]),
        TextDelta(0, " learning", [LP2]),
        ChoiceDone(0, "length", usage=DONE_USAGE),
        Done(DONE_USAGE),
    ])
    assert body == (
        b'data:{"index":1,"token":{"id":1939,"text":" Deep","logprob":-0.25,"special":false},'
        b'"generated_text":null,"details":null}\n\n'
        b'data:{"index":2,"token":{"id":4673,"text":" learning","logprob":-0.5,"special":false},'
        b'"generated_text":" Deep learning","details":null}\n\n'
    )


def test_stream_with_details_top_tokens_and_full_text() -> None:
    req = tgi.parse_compat({**gen(details=True, top_n_tokens=1, do_sample=True, seed=9, return_full_text=True),
                            "stream": True}, CTX)
    body = run_stream(req, [TextDelta(0, " Deep", [LP1]), ChoiceDone(0, "stop", "END", DONE_USAGE), Done(DONE_USAGE)])
    assert body == (
        b'data:{"index":1,"token":{"id":1939,"text":" Deep","logprob":-0.25,"special":false},'
        b'"top_tokens":[{"id":1939,"text":" Deep","logprob":-0.25,"special":false},'
        b'{"id":11,"text":" A","logprob":-2.5,"special":false}],'
        b'"generated_text":"Hello Deep",'
        b'"details":{"finish_reason":"stop_sequence","generated_tokens":2,"seed":9,"input_length":5}}\n\n'
    )


def test_stream_text_without_a_token_joins_the_held_token() -> None:
    """Text held back for a possible stop string comes out at the end without a token of its own."""
    lp = TokenLogprob("EN", -1.0, [69, 78], id=7)
    req = tgi.parse_generate_stream(gen(stop=["END"]), CTX)
    renderer = tgi.TGIStream(req, CTX)
    assert renderer.feed(TextDelta(0, "", [lp])) == []
    assert renderer.feed(TextDelta(0, "EN")) == []
    frames = renderer.feed(ChoiceDone(0, "length", usage=Usage(5, 1)))
    assert [json.loads(f[len(b"data:"):]) for f in frames] == [
        {"index": 1, "token": {"id": 7, "text": "EN", "logprob": -1.0, "special": False},
         "generated_text": "EN", "details": None}]


def test_stream_of_several_tokens_in_one_delta_puts_the_text_on_the_last() -> None:
    req = tgi.parse_generate_stream(gen(), CTX)
    renderer = tgi.TGIStream(req, CTX)
    frames = renderer.feed(TextDelta(0, "é", [TokenLogprob("\ufffd", -1.0, [195], id=1),
                                             TokenLogprob("\ufffd", -2.0, [169], id=2)]))
    frames += renderer.feed(ChoiceDone(0, "length", usage=Usage(5, 2)))
    events = [json.loads(f[len(b"data:"):]) for f in frames]
    assert [(e["index"], e["token"]["text"], e["generated_text"]) for e in events] == [(1, "", None), (2, "é", "é")]


def test_stream_that_ends_before_any_token_sends_one_final_event() -> None:
    req = tgi.parse_generate_stream(gen(details=True), CTX)
    body = run_stream(req, [ChoiceDone(0, "stop", usage=Usage(5, 0)), Done(Usage(5, 0))])
    assert body == (
        b'data:{"index":1,"token":{"id":-1,"text":"","logprob":null,"special":true},"generated_text":"",'
        b'"details":{"finish_reason":"eos_token","generated_tokens":0,"seed":null,"input_length":5}}\n\n'
    )


def test_stream_error_releases_the_held_token_then_ends() -> None:
    req = tgi.parse_generate_stream(gen(), CTX)
    renderer = tgi.TGIStream(req, CTX)
    assert renderer.feed(TextDelta(0, " Deep", [LP1])) == []
    frames = renderer.error(GatewayError(ErrorKind.INTERNAL, "llama_decode failed with status 2."))
    assert frames == [
        b'data:{"index":1,"token":{"id":1939,"text":" Deep","logprob":-0.25,"special":false},'
        b'"generated_text":null,"details":null}\n\n',
        b'data:{"error":"Request failed during generation: llama_decode failed with status 2.",'
        b'"error_type":"generation"}\n\n',
    ]
    assert renderer.feed(ChoiceDone(0, "stop")) == [] and renderer.error(GatewayError(ErrorKind.INTERNAL, "x")) == []


def test_stream_keepalive_and_nothing_after_the_end() -> None:
    req = tgi.parse_generate_stream(gen(), CTX)
    renderer = tgi.TGIStream(req, CTX)
    assert renderer.keepalive() == [b":\n\n"]
    renderer.feed(ChoiceDone(0, "stop"))
    assert renderer.feed(Done(Usage())) == [] and renderer.feed(TextDelta(0, "x", [LP1])) == []


@pytest.mark.parametrize("details", [False, True])
def test_stream_frames_parse_with_huggingface_hub(details: bool) -> None:
    """huggingface_hub's own stream parser reads each `data:` line: `token.text` adds up to the text, and the
    final event's `generated_text` and `details` come through."""
    common = pytest.importorskip("huggingface_hub.inference._common")
    req = tgi.parse_generate_stream(gen(details=details), CTX)
    body = run_stream(req, [TextDelta(0, "Hé", [LP1]), TextDelta(0, '\n"x"', [LP2]),
                            ChoiceDone(0, "stop", None, DONE_USAGE)])
    outputs = list(common._stream_text_generation_response(body.decode().split("\n"), details))
    if not details:
        assert "".join(outputs) == 'Hé\n"x"'
        return
    assert [o.token.id for o in outputs] == [1939, 4673]
    assert outputs[-1].generated_text == 'Hé\n"x"'
    assert outputs[-1].details.finish_reason == "eos_token" and outputs[-1].details.generated_tokens == 2


def test_stream_error_raises_the_typed_huggingface_hub_error() -> None:
    common = pytest.importorskip("huggingface_hub.inference._common")
    errors = pytest.importorskip("huggingface_hub.errors")
    frames = tgi.TGIStream(tgi.parse_generate_stream(gen(), CTX), CTX).error(GatewayError(ErrorKind.OVERLOADED, "full"))
    with pytest.raises(errors.OverloadedError, match="full"):
        list(common._stream_text_generation_response(b"".join(frames).decode().split("\n"), False))
