"""API keys with limits through the real server: past a key's limit every family answers its own 429 with
`Retry-After`, a key may be held to some models, and metrics and logs name keys, never show them."""

from __future__ import annotations

import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL

pytestmark = pytest.mark.integration

KEYS = [
    {"key": "sk-alice-secret", "name": "alice", "requests_per_minute": 1},
    {"key": "sk-bob-secret", "name": "bob", "models": ["gpt-*"]},
    {"key": "sk-carol-secret", "name": "carol", "tokens_per_minute": 10},
]
HI = [{"role": "user", "content": "Hi"}]
# family → (path, body, how its 429 body names the error)
FAMILIES = {
    "openai": ("/v1/chat/completions", {"model": MODEL, "messages": HI, "max_tokens": 2},
               lambda body: body["error"]["type"] == "rate_limit_error"),
    "anthropic": ("/v1/messages", {"model": MODEL, "messages": HI, "max_tokens": 2},
                  lambda body: body["type"] == "error" and body["error"]["type"] == "rate_limit_error"),
    "ollama": ("/api/chat", {"model": MODEL, "messages": HI, "stream": False, "options": {"num_predict": 2}},
               lambda body: "Rate limit" in body["error"]),
    "tgi": ("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 2}},
            lambda body: body["error_type"] == "overloaded"),
    "vllm": ("/v1/completions", {"model": MODEL, "prompt": "Hi", "max_tokens": 2},
             lambda body: "error" in body),
}


@pytest.fixture(scope="module")
def server_config() -> dict:
    return {**DEFAULT_CONFIG, "api_keys": KEYS, "metrics": True}


def post(server, path: str, body: dict, key: str) -> requests.Response:
    return requests.post(server.url + path, json=body, headers={"Authorization": f"Bearer {key}",
                                                               "anthropic-version": "2023-06-01"}, timeout=60)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_past_its_requests_per_minute_a_key_gets_each_familys_429_with_retry_after(server, family):
    path, body, names_it = FAMILIES[family]
    first = post(server, path, body, "sk-alice-secret")  # the minute's one request (or an earlier test's)
    assert first.status_code in (200, 429), first.text
    refused = post(server, path, body, "sk-alice-secret")
    assert refused.status_code == 429, refused.text
    assert names_it(refused.json()), refused.text
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert "sk-alice-secret" not in refused.text and "alice" in refused.text
    assert post(server, path, body, "sk-carol-secret").status_code in (200, 429)  # other keys are not held back


def test_a_key_held_to_some_models_gets_403_for_others(server):
    refused = post(server, "/v1/chat/completions", FAMILIES["openai"][1], "sk-bob-secret")
    assert refused.status_code == 403 and "bob" in refused.json()["error"]["message"]
    allowed = post(server, "/v1/chat/completions", {**FAMILIES["openai"][1], "model": "gpt-4o-mini"},
                   "sk-bob-secret")
    assert allowed.status_code == 200, allowed.text


def test_tokens_per_minute_count_what_requests_used(server):
    body = {"model": MODEL, "messages": HI, "max_tokens": 8}
    statuses = [post(server, "/v1/chat/completions", body, "sk-carol-secret").status_code for _ in range(3)]
    assert statuses[-1] == 429, statuses  # the chat template alone is more than 10 tokens


def test_metrics_count_keys_by_name_only(server):
    text = requests.get(server.url + "/metrics", headers={"Authorization": "Bearer sk-bob-secret"},
                        timeout=10).text
    assert 'llm_gateway_key_requests_total{key="bob",status="completed"}' in text
    assert "secret" not in text
