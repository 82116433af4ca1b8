"""A client that stops reading a stream: once the socket's buffers are full, the write times out after
`send_timeout`, the connection is closed and the generation cancelled, so the HTTP thread and the sequence are
free again."""

from __future__ import annotations

import json
import socket

import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

TOKENS = 1900


@pytest.fixture(scope="module")
def server_config() -> dict:
    return {**DEFAULT_CONFIG, "send_timeout": 2.0}


def test_a_client_that_stops_reading_is_cut_off_and_its_generation_cancelled(server):
    # four choices with 20 alternatives per token: megabytes of SSE, more than loopback buffers hold
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Tell a story."}], "n": 4,
                       "max_tokens": TOKENS, "min_tokens": TOKENS, "logprobs": True, "top_logprobs": 20,
                       "stream": True}).encode()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window: the server's writes block soon
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                 b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    try:
        def ended() -> dict | None:  # the client never reads a byte
            records = requests.get(server.url + "/api/requests", timeout=10).json()["requests"]
            record = next((r for r in records if r["endpoint"] == "/v1/chat/completions"), None)
            return record if record is not None and record["status"] not in ("running", "queued") else None

        record = wait_for(ended, "the stalled request to end", interval=0.2)
        assert record["status"] == "cancelled", record
        assert record["tokens_generated"] < TOKENS
    finally:
        sock.close()
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
