"""Every adapter's parse over arbitrary JSON (hypothesis): a valid body of the route with one field, at any of
the places clients put values, replaced by any JSON value, and whole bodies of any shape. Nothing but the
gateway's own `GatewayError` may come out: anything else would be a 500. Derandomized, so CI runs the same cases
every time."""

from __future__ import annotations

import contextlib
import copy
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters.base import RequestContext
from gateway.app import ROUTES
from gateway.types import GatewayError, InternalRequest

HI = [{"role": "user", "content": "hi"}]
BASES: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "m", "messages": HI, "max_tokens": 4},
    "/api/chat/completions": {"model": "m", "messages": HI, "max_tokens": 4},
    "/v1/completions": {"model": "m", "prompt": "hi", "max_tokens": 4},
    "/v1/embeddings": {"model": "m", "input": "hi"},
    "/v1/responses": {"model": "m", "input": [{"role": "user", "content": [{"type": "input_text", "text": "hi"}]}],
                      "max_output_tokens": 4, "tools": [{"type": "function", "name": "f", "parameters": {}}]},
    "/v1/messages": {"model": "m", "max_tokens": 4, "messages": HI},
    "/v1/messages/count_tokens": {"model": "m", "messages": HI},
    "/api/chat": {"model": "m", "messages": HI, "options": {"temperature": 0}},
    "/api/generate": {"model": "m", "prompt": "hi", "options": {"num_predict": 4}},
    "/api/embed": {"model": "m", "input": "hi"},
    "/api/embeddings": {"model": "m", "prompt": "hi"},
    "/api/show": {"model": "m"},
    "/api/copy": {"source": "m", "destination": "n"},
    "/api/delete": {"model": "m"},
    "/api/create": {"model": "n", "from": "m", "parameters": {"temperature": 0}},
    "/api/pull": {"model": "m"},
    "/api/push": {"model": "m"},
    "/generate": {"inputs": "hi", "parameters": {"max_new_tokens": 4}},
    "/generate_stream": {"inputs": "hi", "parameters": {"max_new_tokens": 4}},
    "/": {"inputs": "hi", "parameters": {"max_new_tokens": 4}},
    "/tokenize": {"inputs": "hi"},
    "/detokenize": {"tokens": [1, 2]},
    "vllm /tokenize": {"model": "m", "prompt": "hi"},
    "vllm /generate": {"prompt": "hi", "max_tokens": 4},
}
FIELDS = ["model", "messages", "prompt", "input", "inputs", "parameters", "stream", "max_tokens", "max_new_tokens",
          "max_completion_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_sequences", "n", "seed",
          "logit_bias", "logprobs", "top_logprobs", "tools", "tool_choice", "response_format", "stream_options",
          "options", "format", "keep_alive", "system", "suffix", "images", "raw", "template", "think", "thinking",
          "metadata", "guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs",
          "chat_template_kwargs", "add_generation_prompt", "continue_final_message", "min_tokens", "ignore_eos",
          "stop_token_ids", "truncate", "truncate_prompt_tokens", "encoding_format", "dimensions", "details",
          "decoder_input_details", "return_full_text", "grammar", "do_sample", "best_of", "frequency_penalty",
          "presence_penalty", "repetition_penalty", "echo", "user", "source", "destination", "from", "insecure",
          "files", "adapters", "tokens", "prompt_token_ids", "output_config", "context_management", "top_n_tokens",
          "typical_p", "watermark", "num_ctx", "num_predict", "num_thread", "num_gpu", "service_tier", "modalities",
          "instructions", "max_output_tokens", "text", "reasoning", "truncation", "previous_response_id", "include",
          "store", "parallel_tool_calls", "background", "conversation"]
NESTED = [("messages", 0), ("messages", 0, "content"), ("messages", 0, "role"), ("messages", 0, "tool_calls"),
          ("messages", 0, "images"), ("options", "temperature"), ("options", "stop"), ("options", "num_ctx"),
          ("parameters", "stop"), ("parameters", "max_new_tokens"), ("parameters", "grammar"),
          ("parameters", "temperature"), ("parameters", "details"), ("input", 0), ("input", 0, "content"),
          ("input", 0, "type"), ("input", 0, "content", 0), ("tools", 0), ("tools", 0, "type")]

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
# values shaped like what clients send, so that more of each parser is reached
AWKWARD = [
    [], {}, "", -1, 0, 2**64, 1e308, "json", "auto", "required", "none", {"type": "json_object"},
    {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}},
    [{"type": "function", "function": {"name": "f", "parameters": {}}}], [{"type": "text", "text": "hi"}],
    [{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}], {"type": "regex", "value": "a+"},
    [{"role": "assistant", "content": None, "tool_calls": [{"id": "1", "type": "function",
                                                           "function": {"name": "f", "arguments": "{"}}]}],
    {"²": 1}, {"-1": 1}, {"99999999999999999999": 1}, "²", "\x00", "𝟘", -2**63, 2**63, -1e308, 0.5, True,
    [None], [[]], [{}], {"": None}, "1h", "-1", "5m", "nope",
    {"format": {"type": "json_schema", "name": "x", "schema": {"type": "object"}}}, {"effort": "low"},
    [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{}"},
     {"type": "function_call_output", "call_id": "c", "output": "1"}],
    [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "t"}]}, {"role": "assistant", "content": "a"}],
]
LIKELY = JSON | st.sampled_from(AWKWARD)


def routes_with_bodies():
    return [pytest.param(r, id=f"{r.family}:{r.method} {r.path}") for r in ROUTES if r.body == "json"]


def base(route) -> dict[str, Any]:
    """The route's valid body; TGI and vLLM share two paths with different bodies."""
    return BASES.get(f"{route.family} {route.path}", BASES[route.path])


def context(route) -> RequestContext:
    headers = {"anthropic-version": "2023-06-01"} if route.family == "anthropic" else {}
    return RequestContext("req", 0, headers=headers, method=route.method)


def set_at(body: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(body)
    target: Any = body
    for key in path[:-1]:
        try:
            target = target[key]
        except (KeyError, IndexError, TypeError):
            return body
    with contextlib.suppress(IndexError, TypeError):
        target[path[-1]] = value
    return body


def parse_only_fails_with_gateway_errors(route, body: Any) -> None:
    ctx = context(route)
    try:
        if route.accepts is not None:
            route.accepts(body, ctx)
        result = route.parse(body, ctx)
    except GatewayError as err:
        assert isinstance(err.message, str) and err.message
        err.message.encode("utf-8")
        return
    assert isinstance(result, InternalRequest)


FUZZ = settings(max_examples=150, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.mark.parametrize("route", routes_with_bodies())
@FUZZ
@given(where=st.sampled_from([(f,) for f in FIELDS] + NESTED), value=LIKELY)
def test_one_field_of_a_valid_body_replaced_by_anything(route, where, value):
    parse_only_fails_with_gateway_errors(route, set_at(base(route), where, value))


@pytest.mark.parametrize("route", routes_with_bodies())
def test_every_field_with_every_awkward_value(route):
    for where in [(f,) for f in FIELDS] + NESTED:
        for value in AWKWARD:
            parse_only_fails_with_gateway_errors(route, set_at(base(route), where, value))


@pytest.mark.parametrize("route", routes_with_bodies())
@FUZZ
@given(body=JSON)
def test_a_body_of_any_shape(route, body):
    parse_only_fails_with_gateway_errors(route, body)


@pytest.mark.parametrize("route", [r for r in routes_with_bodies() if r.values[0].path != "/api/push"])
def test_every_base_body_is_valid(route):
    """The fuzz starts from bodies that parse (pushing is refused whatever the body), or its mutations would all
    stop at the first check."""
    assert isinstance(route.parse(base(route), context(route)), InternalRequest)
