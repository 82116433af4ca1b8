"""Values that used to break a thread or the JSON encoder, sent over the raw wire to the real server: each is a
400 in the family's error shape, and afterwards the server, its monitor and its model reaper still work."""

from __future__ import annotations

import json

import pytest
import requests

from tests.integration.support import MODEL, GatewayServer

pytestmark = pytest.mark.integration

HI = [{"role": "user", "content": "Hi"}]
ANTHROPIC = {"anthropic-version": "2023-06-01"}


def post_raw(server: GatewayServer, path: str, text: str, headers: dict | None = None) -> requests.Response:
    return requests.post(server.url + path, data=text.encode("utf-8"), timeout=60,
                         headers={"Content-Type": "application/json", **(headers or {})})


def assert_healthy(server: GatewayServer) -> None:
    """The server answers, its monitor can serialise every record it keeps, and the event feed opens."""
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    listed = requests.get(server.url + "/api/requests", timeout=10)
    assert listed.status_code == 200, listed.text
    with requests.get(server.url + "/api/events", stream=True, timeout=10) as feed:
        first = next(line for line in feed.iter_lines() if line.startswith(b"data:"))
        assert "requests" in json.loads(first[5:])
    assert requests.get(server.url + "/api/ps", timeout=10).status_code == 200


@pytest.mark.parametrize(("field", "raw"), [
    ("temperature", "NaN"), ("temperature", "Infinity"), ("top_p", "-Infinity"), ("temperature", "1e999"),
])
def test_non_finite_numbers_are_a_400_in_openai_shape(server, field, raw):
    r = post_raw(server, "/v1/chat/completions", f'{{"model": "{MODEL}", "messages": {json.dumps(HI)}, '
                                                 f'"{field}": {raw}}}')
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and raw.lstrip("-")[:3] in error["message"]
    assert_healthy(server)


@pytest.mark.parametrize("where", ["model", "content"])
def test_a_lone_surrogate_is_a_400_naming_where_and_leaves_the_monitor_working(server, where):
    model = "\\ud800" if where == "model" else MODEL
    content = "hi \\udfff there" if where == "content" else "hi"
    r = post_raw(server, "/v1/messages", f'{{"model": "{model}", "max_tokens": 4, '
                                         f'"messages": [{{"role": "user", "content": "{content}"}}]}}', ANTHROPIC)
    assert r.status_code == 400, r.text
    body = r.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "surrogate" in body["error"]["message"] and where in body["error"]["message"]
    assert_healthy(server)


def test_deep_nesting_is_a_400_in_ollama_shape(server):
    r = post_raw(server, "/api/chat", '{"model": "x", "messages": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert r.status_code == 400, r.text
    assert "nested too deeply" in r.json()["error"]
    assert_healthy(server)


@pytest.mark.parametrize("keep_alive", ["NaN", "Infinity", '"NaNh"'])
def test_a_keep_alive_that_is_not_a_finite_duration_is_a_400(server, keep_alive):
    r = post_raw(server, "/api/generate", f'{{"model": "{MODEL}", "keep_alive": {keep_alive}}}')
    assert r.status_code == 400, r.text
    assert isinstance(r.json()["error"], str)
    assert_healthy(server)


@pytest.mark.parametrize("keep_alive", [1e12, "99999999999h"])
def test_a_keep_alive_of_centuries_is_clamped_and_the_reaper_keeps_working(server, keep_alive):
    r = requests.post(server.url + "/api/generate", json={"model": MODEL, "keep_alive": keep_alive}, timeout=60)
    assert r.status_code == 200, r.text
    ps = requests.get(server.url + "/api/ps", timeout=10)
    assert ps.status_code == 200, ps.text
    expires = next(m["expires_at"] for m in ps.json()["models"] if m["name"].startswith(MODEL))
    assert expires.startswith("23")  # Go's largest duration from now: the year 2318
    # the reaper thread survived the huge timeout: a keep_alive of 0 still unloads the model
    requests.post(server.url + "/api/generate", json={"model": MODEL, "keep_alive": 0}, timeout=60)
    assert not requests.get(server.url + "/api/ps", timeout=10).json()["models"]
    assert_healthy(server)


def test_a_logit_bias_key_of_non_ascii_digits_is_a_400(server):
    r = requests.post(server.url + "/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": HI, "logit_bias": {"²": 1}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == "logit_bias"
    assert_healthy(server)


@pytest.mark.parametrize("key", ["messages", "tools", "add_generation_prompt"])
def test_chat_template_kwargs_may_not_replace_the_requests_own_fields(server, key):
    r = requests.post(server.url + "/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": HI, "chat_template_kwargs": {key: []}})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == f"chat_template_kwargs.{key}"
    assert_healthy(server)


def test_a_huge_seed_still_generates(server):
    r = requests.post(server.url + "/v1/chat/completions", timeout=60,
                      json={"model": MODEL, "messages": HI, "max_tokens": 4, "seed": 2**100})
    assert r.status_code == 200, r.text
    assert_healthy(server)


def test_past_a_documented_limit_is_a_400_in_each_familys_shape(server):
    stops = ["x"] * 65
    openai_style = requests.post(server.url + "/v1/chat/completions", timeout=60,
                                 json={"model": MODEL, "messages": HI, "stop": stops})
    assert openai_style.status_code == 400 and openai_style.json()["error"]["param"] == "stop"
    ollama_style = requests.post(server.url + "/api/embed", timeout=60, json={"model": MODEL, "input": ["x"] * 4097})
    assert ollama_style.status_code == 400 and "at most 4096" in ollama_style.json()["error"]
    claude_style = requests.post(server.url + "/v1/messages", headers=ANTHROPIC, timeout=60,
                                 json={"model": MODEL, "max_tokens": 4, "messages": HI, "stop_sequences": stops})
    assert claude_style.status_code == 400 and claude_style.json()["error"]["type"] == "invalid_request_error"
    assert_healthy(server)
