"""The HTTP/1.1 layer of the gateway's own worker (gateway/http_worker.py, gateway/http_wire.py), driven with raw
sockets against the real server: keep-alive and pipelining, `Expect: 100-continue`, chunked request bodies,
HEAD and HTTP/1.0, heads it refuses itself, and kept-alive connections closed when idle."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import time

import pytest

from tests.integration.support import MODEL

pytestmark = pytest.mark.integration

COUNT = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}]}).encode()


def connect(server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=30)


def read_response(sock: socket.socket, buffered: bytearray) -> tuple[int, dict[str, str], bytes]:
    """One response from `sock` (Content-Length or chunked body); bytes after it stay in `buffered`."""
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed mid-head: {bytes(buffered)!r}"
        buffered += chunk
    head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
    buffered[:] = rest
    if "content-length" in headers:
        size = int(headers["content-length"])
        while len(buffered) < size:
            buffered += sock.recv(65536)
        body = bytes(buffered[:size])
        del buffered[:size]
        return status, headers, body
    assert headers.get("transfer-encoding") == "chunked", headers
    body = b""
    while True:
        while b"\r\n" not in buffered:
            buffered += sock.recv(65536)
        size_line, _, _ = bytes(buffered).partition(b"\r\n")
        size = int(size_line, 16)
        need = len(size_line) + 2 + size + 2
        while len(buffered) < need:
            buffered += sock.recv(65536)
        body += bytes(buffered[len(size_line) + 2:len(size_line) + 2 + size])
        del buffered[:need]
        if size == 0:
            return status, headers, body


def closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


def count_request(extra: bytes = b"", body: bytes = COUNT) -> bytes:
    return (b"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"anthropic-version: 2023-06-01\r\n" + extra + b"Content-Length: " + str(len(body)).encode()
            + b"\r\n\r\n" + body)


def test_a_kept_alive_connection_answers_requests_sent_one_after_another_and_pipelined(server) -> None:
    with connect(server) as sock:
        buffered = bytearray()
        sock.sendall(b"GET /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        status, headers, body = read_response(sock, buffered)
        assert status == 200 and MODEL in body.decode(), body[:200]
        assert "connection" not in headers, headers  # HTTP/1.1: kept alive by default
        # three requests in one send: answered in order, on the same connection
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" + count_request()
                     + b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        answers = [read_response(sock, buffered) for _ in range(3)]
        assert [a[0] for a in answers] == [200, 200, 200], answers
        assert "version" in json.loads(answers[0][2])
        assert json.loads(answers[1][2])["input_tokens"] > 0
        assert json.loads(answers[2][2])["object"] == "list"
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status, headers, _ = read_response(sock, buffered)
        assert status == 200 and headers["connection"] == "close"
        assert closed_by_server(sock)


def test_a_stream_is_chunked_and_the_connection_carries_the_next_request(server) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5,
                       "stream": True})
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
    assert resp.read().rstrip().endswith(b"data: [DONE]")
    local = conn.sock.getsockname()
    conn.request("GET", "/api/version")
    resp = conn.getresponse()
    assert resp.status == 200 and json.loads(resp.read())["version"]
    assert conn.sock.getsockname() == local  # the same connection
    conn.close()


def test_expect_100_continue_gets_its_interim_answer_before_the_body(server) -> None:
    with connect(server) as sock:
        head, _, body = count_request(b"Expect: 100-continue\r\n").partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        interim = sock.recv(65536)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n", interim
        sock.sendall(body)
        status, _, answer = read_response(sock, bytearray())
        assert status == 200 and json.loads(answer)["input_tokens"] > 0, answer


def test_a_chunked_request_body_is_read_whole(server) -> None:
    chunks = [COUNT[:10], COUNT[10:25], COUNT[25:]]
    encoded = b"".join(b"%X\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    with connect(server) as sock:
        sock.sendall(b"POST /v1/messages/count_tokens HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded)
        status, _, answer = read_response(sock, bytearray())
    assert status == 200 and json.loads(answer)["input_tokens"] > 0, answer


def test_head_gets_the_headers_of_get_and_no_body(server) -> None:
    with connect(server) as sock:
        sock.sendall(b"HEAD /api/tags HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\nGET /api/version HTTP/1.1\r\n"
                     b"Host: 127.0.0.1\r\n\r\n")
        buffered = bytearray()
        while b"\r\n\r\n" not in buffered:
            buffered += sock.recv(65536)
        head, _, rest = bytes(buffered).partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"Content-Length: " in head, head
        buffered[:] = rest  # the next bytes are the next response's, not a body
        status, _, body = read_response(sock, buffered)
        assert status == 200 and json.loads(body)["version"]


def test_an_http_1_0_client_gets_its_answer_and_the_connection_closes(server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /api/version HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and b"chunked" not in head.lower(), head
    assert json.loads(body)["version"]


@pytest.mark.parametrize(("raw", "status", "says"), [
    (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "not valid HTTP/1.1"),
    (b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400,
     "Transfer-Encoding"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "request target"),
    (b"GET / HTTP/1.1\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(101)) + b"\r\n", 431, "header fields"),
])
def test_a_head_the_server_cannot_take_gets_a_json_error_and_a_close(server, raw: bytes, status: int,
                                                                      says: str) -> None:
    with connect(server) as sock:
        sock.sendall(raw)
        got, headers, body = read_response(sock, bytearray())
        assert got == status, body
        assert headers["connection"] == "close"
        assert says in json.loads(body)["error"]["message"], body
        assert closed_by_server(sock)


def test_an_idle_kept_alive_connection_is_closed_and_the_server_serves_on(server) -> None:
    with connect(server) as sock:
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock, bytearray())[0] == 200
        sock.settimeout(30)  # gunicorn's `keepalive` (5 s in config/gunicorn.conf.py), with room
        assert closed_by_server(sock)
    quiet = connect(server)  # a client that connects and says nothing is closed the same way
    quiet.settimeout(30)
    assert closed_by_server(quiet)
    quiet.close()
    with connect(server) as sock:
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert read_response(sock, bytearray())[0] == 200


def test_clients_that_reset_at_once_cost_no_thread(server) -> None:
    """Connections reset before or while they are accepted, with a head half sent or none: every thread survives
    them (64 resets are as many as the server has threads), and the server answers on."""
    for i in range(64):
        sock = connect(server)
        if i % 2:
            sock.sendall(b"GET /api/version HTTP/1.1\r\nHo")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close sends a reset
        sock.close()
    for _ in range(3):
        with connect(server) as sock:
            sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            assert read_response(sock, bytearray())[0] == 200


def test_a_client_that_speaks_only_after_the_deferred_accept_is_served(server) -> None:
    """The listener wakes a thread when a connection's first bytes arrive (TCP_DEFER_ACCEPT, 1 s); a client that
    connects and sends its request later than that is still answered, and one that sends at once too."""
    with connect(server) as late, connect(server) as prompt:
        prompt.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(prompt, bytearray())[0] == 200
        time.sleep(2.5)
        late.sendall(b"GET /api/version HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status, _, body = read_response(late, bytearray())
        assert status == 200 and json.loads(body)["version"]
