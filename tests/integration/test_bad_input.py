"""Bad requests over the raw wire (`requests`): each is a 4xx with OpenAI's error body
`{"error": {"message", "type", "param", "code"}}` naming the offending field, and none of them hurts the server.
"""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest
import requests

from gateway.engine.llama import supports_gpu_offload
from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer

pytestmark = pytest.mark.integration

MAX_BODY = 1024 * 1024
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
USER = [{"role": "user", "content": "Hi"}]


@pytest.fixture(scope="module")
def server_config() -> dict[str, Any]:
    return {**DEFAULT_CONFIG, "max_body_bytes": MAX_BODY}


def post_raw(server: GatewayServer, path: str, data: bytes | str) -> requests.Response:
    return requests.post(server.url + path, data=data, headers={"Content-Type": "application/json"}, timeout=30)


def assert_openai_error(r: requests.Response, status: int, param: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    assert error["type"] == "invalid_request_error"
    assert "Traceback" not in error["message"]
    if param is not None:
        assert error["param"] == param, error
        assert f"`{param}`" in error["message"], error["message"]  # the message names the field too
    return error


@pytest.mark.parametrize("data", [b"{", b"not json", b'{"model": "x",}', b"\xff\xfe", b"", b"   "],
                         ids=["truncated", "text", "trailing-comma", "not-utf8", "empty", "blank"])
def test_malformed_body(server: GatewayServer, data: bytes) -> None:
    assert_openai_error(post_raw(server, CHAT, data), 400)


@pytest.mark.parametrize("data", ["[]", "[1, 2]", '"chat"', "42", "null", "true"])
def test_body_not_an_object(server: GatewayServer, data: str) -> None:
    assert_openai_error(post_raw(server, CHAT, data), 400)


BAD_CHAT: list[tuple[str, dict[str, Any], str]] = [
    ("missing-model", {"messages": USER}, "model"),
    ("model-not-string", {"model": 5, "messages": USER}, "model"),
    ("missing-messages", {"model": MODEL}, "messages"),
    ("messages-not-list", {"model": MODEL, "messages": "Hi"}, "messages"),
    ("messages-object", {"model": MODEL, "messages": {"role": "user", "content": "Hi"}}, "messages"),
    ("messages-empty", {"model": MODEL, "messages": []}, "messages"),
    ("message-not-object", {"model": MODEL, "messages": ["Hi"]}, "messages[0]"),
    ("bad-role", {"model": MODEL, "messages": [{"role": "wizard", "content": "Hi"}]}, "messages[0].role"),
    ("temperature-string", {"model": MODEL, "messages": USER, "temperature": "hot"}, "temperature"),
    ("temperature-too-high", {"model": MODEL, "messages": USER, "temperature": 5}, "temperature"),
    ("max-tokens-negative", {"model": MODEL, "messages": USER, "max_tokens": -1}, "max_tokens"),
    ("max-tokens-float", {"model": MODEL, "messages": USER, "max_tokens": 1.5}, "max_tokens"),
    ("n-zero", {"model": MODEL, "messages": USER, "n": 0}, "n"),
    ("stream-string", {"model": MODEL, "messages": USER, "stream": "yes"}, "stream"),
    ("stop-number", {"model": MODEL, "messages": USER, "stop": 5}, "stop"),
    ("stop-too-many", {"model": MODEL, "messages": USER, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ("logit-bias-bad-key", {"model": MODEL, "messages": USER, "logit_bias": {"abc": 1}}, "logit_bias"),
    ("logit-bias-not-object", {"model": MODEL, "messages": USER, "logit_bias": [1]}, "logit_bias"),
    ("tools-unknown-type", {"model": MODEL, "messages": USER,
                            "tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ("tools-not-list", {"model": MODEL, "messages": USER, "tools": {"type": "function"}}, "tools"),
    ("response-format-unknown", {"model": MODEL, "messages": USER, "response_format": {"type": "xml"}},
     "response_format.type"),
    ("top-logprobs-without-logprobs", {"model": MODEL, "messages": USER, "top_logprobs": 3}, "top_logprobs"),
    ("top-logprobs-too-many", {"model": MODEL, "messages": USER, "logprobs": True, "top_logprobs": 50},
     "top_logprobs"),
]


@pytest.mark.parametrize(("body", "param"), [(b, p) for _, b, p in BAD_CHAT], ids=[i for i, _, _ in BAD_CHAT])
def test_bad_chat_fields(server: GatewayServer, body: dict[str, Any], param: str) -> None:
    assert_openai_error(post_raw(server, CHAT, json.dumps(body)), 400, param)


BAD_COMPLETIONS: list[tuple[str, dict[str, Any], str]] = [
    ("suffix", {"model": MODEL, "prompt": "def f():", "suffix": "return 1"}, "suffix"),
    ("missing-prompt", {"model": MODEL}, "prompt"),
    ("prompt-number", {"model": MODEL, "prompt": 5}, "prompt"),
    ("prompt-mixed-list", {"model": MODEL, "prompt": ["Hi", {"x": 1}]}, "prompt[1]"),
    ("logprobs-too-many", {"model": MODEL, "prompt": "Hi", "logprobs": 10}, "logprobs"),
    ("echo-string", {"model": MODEL, "prompt": "Hi", "echo": "yes"}, "echo"),
]


@pytest.mark.parametrize(("body", "param"), [(b, p) for _, b, p in BAD_COMPLETIONS],
                         ids=[i for i, _, _ in BAD_COMPLETIONS])
def test_bad_completion_fields(server: GatewayServer, body: dict[str, Any], param: str) -> None:
    assert_openai_error(post_raw(server, COMPLETIONS, json.dumps(body)), 400, param)


def test_token_id_outside_the_vocabulary(server: GatewayServer) -> None:
    body = {"model": MODEL, "prompt": [1, 2, 10**9], "max_tokens": 2}
    assert_openai_error(post_raw(server, COMPLETIONS, json.dumps(body)), 400, "prompt")


def test_bad_embedding_fields(server: GatewayServer) -> None:
    for body, param in [({"model": MODEL}, "input"), ({"model": MODEL, "input": ""}, "input"),
                        ({"model": MODEL, "input": "Hi", "encoding_format": "int8"}, "encoding_format"),
                        ({"model": MODEL, "input": "Hi", "dimensions": 64}, "dimensions")]:
        assert_openai_error(post_raw(server, "/v1/embeddings", json.dumps(body)), 400, param)


def test_unknown_fields_are_accepted(server: GatewayServer) -> None:
    """Lenient on extras: vendor fields that real clients send are ignored, not refused."""
    body = {"model": MODEL, "messages": USER, "max_tokens": 2, "user": "u1", "store": False, "metadata": {"a": "b"},
            "reasoning_effort": "low", "some_vendor_extra": {"x": [1, 2]}}
    r = post_raw(server, CHAT, json.dumps(body))
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"


def test_unknown_path_is_a_json_404(server: GatewayServer) -> None:
    for r in (requests.get(server.url + "/v1/nothing-here", timeout=10),
              requests.post(server.url + "/v2/chat/completions", json={"model": MODEL}, timeout=10)):
        assert r.status_code == 404
        assert r.headers["Content-Type"].startswith("application/json")
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert r.headers.get("X-Request-Id")


def test_wrong_method_is_a_json_error(server: GatewayServer) -> None:
    r = requests.get(server.url + CHAT, timeout=10)
    assert r.status_code == 405
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_body_over_the_limit_is_413(server: GatewayServer) -> None:
    content = "a" * (2 * MAX_BODY)
    data = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": content}]})
    r = post_raw(server, CHAT, data)
    assert r.status_code == 413, r.text[:300]
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    # just under the limit is read and parsed (then refused for its content, not its size)
    near = json.dumps({"model": MODEL, "messages": "x" * (MAX_BODY - 100)})
    assert len(near) < MAX_BODY
    assert_openai_error(post_raw(server, CHAT, near), 400, "messages")


def test_a_chunked_body_without_end_is_cut_at_the_limit_with_a_413(server: GatewayServer) -> None:
    """No Content-Length to refuse up front: the body is read until the limit, then refused, not buffered whole
    (the chunks would go on for ever)."""
    def chunks():
        yield b'{"model": "' + MODEL.encode() + b'", "messages": "'
        for _ in range(4 * MAX_BODY // 65536):  # four times the limit, in 64 KiB chunks
            yield b"x" * 65536

    try:
        r = requests.post(server.url + CHAT, data=chunks(), headers={"Content-Type": "application/json"}, timeout=30)
    except requests.ConnectionError:  # the server answered and closed while the client was still sending
        pytest.fail("the server closed the connection before the client could read its 413")
    assert r.status_code == 413, r.text[:300]
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_still_healthy_after_all_that(server: GatewayServer) -> None:
    r = requests.get(server.url + "/health", timeout=10)
    assert r.status_code == 200
    health = r.json()
    assert {k: health[k] for k in ("status", "models_loaded", "gpu_offload")} == {
        "status": "ok", "models_loaded": [MODEL], "gpu_offload": supports_gpu_offload()}
    assert [d["type"] for d in health["devices"]][-1] == "cpu"  # ggml lists the CPU after any GPU
    ok = post_raw(server, CHAT, json.dumps({"model": MODEL, "messages": USER, "max_tokens": 2, "temperature": 0}))
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize("short", [True, False])
def test_a_client_that_closes_its_sending_side_gets_a_4xx(server: GatewayServer, short: bool) -> None:
    """A body shorter than its Content-Length is refused; a whole body followed by a half-close (the client's
    side shut, so it looks gone) ends the generation with a 4xx, never a 500."""
    body = json.dumps({"model": MODEL, "stream": False, "messages": [{"role": "user", "content": "Hi"}],
                       "max_tokens": 200, "min_tokens": 200}).encode()
    length = len(body) + (1000 if short else 0)
    with socket.create_connection(("127.0.0.1", server.port), timeout=60) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(length).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    assert 400 <= status < 500, reply[:300]
    message = json.loads(reply.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    assert ("Content-Length" in message) if short else ("closed the connection" in message)
