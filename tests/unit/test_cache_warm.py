"""`POST /api/cache/warm` reads any family's body with that family's own parser: which family a shape means."""

from __future__ import annotations

import pytest

from adapters import openai
from adapters.base import RequestContext
from gateway.app import ROUTES
from gateway.cache_warm import render, warm_route
from gateway.types import ErrorKind, GatewayError, Message, WarmResult

ROUTE = warm_route(ROUTES, openai.ROUTES[0].render_error)
SYSTEM = [{"role": "system", "content": "You are brief."}]


def parse(body: dict, query: dict | None = None, headers: dict | None = None):
    return ROUTE.parse(body, RequestContext("id", 0, headers=headers or {}, query=query or {}))


@pytest.mark.parametrize("body, query, headers, kind", [
    ({"model": "m", "messages": SYSTEM}, None, None, "chat"),  # OpenAI
    ({"model": "m", "messages": SYSTEM, "options": {"num_ctx": 4096}}, None, None, "chat"),  # Ollama
    ({"model": "m", "max_tokens": 1, "system": "You are brief.", "messages": [{"role": "user", "content": "hi"}]},
     None, None, "chat"),  # Anthropic, told by its top-level system
    ({"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]}, None,
     {"anthropic-version": "2023-06-01"}, "chat"),
    ({"model": "m", "prompt": "Once upon a time"}, None, None, "completion"),  # OpenAI completions
    ({"model": "m", "prompt": "Once upon a time", "system": "Be brief."}, None, None, "chat"),  # Ollama templates
    ({"model": "m", "prompt": "Once upon a time", "raw": True}, None, None, "completion"),  # Ollama, raw
    ({"inputs": "Once upon a time"}, None, None, "completion"),  # TGI
    ({"model": "m", "prompt": "Once upon a time", "stream": True}, {"family": "ollama"}, None, "chat"),
])
def test_each_family_shape_becomes_a_prefill_only_request(body, query, headers, kind):
    req = parse(body, query, headers)
    assert req.kind == kind and req.warm and not req.stream and req.n == 1


def test_the_family_parser_reads_its_own_fields():
    req = parse({"model": "m", "max_tokens": 1, "system": "You are brief.",
                 "messages": [{"role": "user", "content": "hi"}]})
    assert req.messages[0] == Message("system", "You are brief.")


@pytest.mark.parametrize("body, query, param", [
    ({"model": "m"}, None, "messages"),
    ({"model": "m", "prompt": "x"}, {"family": "cohere"}, "family"),
    ({"model": "m", "prompt": "x"}, {"family": "anthropic"}, "messages"),
    ({"model": "m", "messages": []}, None, "messages"),
])
def test_a_body_with_nothing_to_warm_is_a_400_naming_the_field(body, query, param):
    with pytest.raises(GatewayError) as err:
        parse(body, query)
    assert err.value.kind == ErrorKind.INVALID_REQUEST and err.value.param == param


def test_the_answer_names_what_the_cache_holds():
    result = WarmResult("m", 2048, 2048, 10, 1.23456, True)
    assert render(result, None, None) == {"model": "m", "prompt_tokens": 2048, "cached_tokens": 2048,
                                          "reused_tokens": 10, "seconds": 1.235, "persisted": True}
