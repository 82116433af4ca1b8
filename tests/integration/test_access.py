"""API keys (401) and admission control (429), through the official SDK against the real server."""

from __future__ import annotations

import threading
from typing import Any

import openai
import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer

pytestmark = pytest.mark.integration

KEY = "sk-local-test"
HI = [{"role": "user", "content": "Hi"}]
NO_EOS = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation ids: the long requests really run long


@pytest.fixture(scope="module")
def server_config() -> dict[str, Any]:
    return {**DEFAULT_CONFIG, "api_keys": [KEY], "parallel": 1, "max_queue": 1}


def sdk(server: GatewayServer, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=key, max_retries=0)


def test_a_wrong_key_is_401_in_openai_shape(server):
    with pytest.raises(openai.AuthenticationError) as err:
        sdk(server, "wrong").chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert err.value.status_code == 401
    assert err.value.body["type"] == "authentication_error"


def test_a_missing_key_is_401(server):
    r = requests.post(server.url + "/v1/chat/completions", json={"model": MODEL, "messages": HI})
    assert r.status_code == 401
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_the_right_key_as_bearer_or_x_api_key_is_accepted(server):
    reply = sdk(server, KEY).chat.completions.create(model=MODEL, messages=HI, max_tokens=2)
    assert reply.choices[0].message.content is not None
    r = requests.get(server.url + "/v1/models", headers={"x-api-key": KEY})
    assert r.status_code == 200


def test_health_needs_no_key(server):
    assert requests.get(server.url + "/health").status_code == 200


def test_a_full_queue_answers_429_at_once(server):
    """One sequence busy and the one queue place taken: the next request is refused, not queued."""
    body = {"model": MODEL, "messages": HI, "max_tokens": 1500, "temperature": 0, "stream": True,
            "logit_bias": NO_EOS}
    headers = {"Authorization": f"Bearer {KEY}"}
    running = requests.post(server.url + "/v1/chat/completions", json=body, headers=headers, stream=True)
    assert running.status_code == 200
    lines = running.iter_lines()  # keep the iterator: when urllib3's generator is collected, it closes the socket
    next(lines)  # it holds the only sequence now
    queued: dict[str, requests.Response] = {}
    waiter = threading.Thread(target=lambda: queued.setdefault("r", requests.post(
        server.url + "/v1/chat/completions", json={**body, "stream": False, "max_tokens": 2}, headers=headers)))
    waiter.start()
    try:
        refused, seen = None, []
        for _ in range(20):  # until the waiter holds the queue place (until then, ours waits and times out)
            try:
                sdk(server, KEY).chat.completions.create(model=MODEL, messages=HI, max_tokens=2, timeout=2)
                seen.append("answered")
            except openai.RateLimitError as err:
                refused = err
                break
            except openai.APITimeoutError:
                seen.append("timed out")
        assert refused is not None, f"the queue never refused a request: {seen}, waiter: {queued}"
        assert refused.status_code == 429 and refused.body["type"] == "rate_limit_error"
    finally:
        del lines
        running.close()
        waiter.join(timeout=60)
    assert queued["r"].status_code == 200, queued["r"].text


@pytest.mark.parametrize("header", [{"Authorization": "Bearer clé"}, {"x-api-key": "\xff\xfe"}])
def test_a_key_with_non_ascii_characters_is_a_401_not_a_500(server, header):
    r = requests.post(server.url + "/v1/messages", headers={**header, "anthropic-version": "2023-06-01"},
                      json={"model": MODEL, "max_tokens": 2, "messages": HI})
    assert r.status_code == 401, r.text
    assert r.json()["error"]["type"] == "authentication_error"
