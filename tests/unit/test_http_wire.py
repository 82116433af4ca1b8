"""gateway/http_wire.py on a socket pair: the environ a head becomes, a body read only when asked for (short or
chunked), and the bytes a reply puts on the wire."""

from __future__ import annotations

import socket

import pytest

from gateway import http_wire
from gateway.http_wire import Connection, Reply, WireError, base_environ, environ


@pytest.fixture
def pair():
    server, client = socket.socketpair()
    server.settimeout(5)
    client.settimeout(5)
    yield Connection(server, ("127.0.0.1", 4321), ("127.0.0.1", 8080)), client
    server.close()
    client.close()


def parsed(conn: Connection, client: socket.socket, raw: bytes):
    client.sendall(raw)
    while not conn.pending:
        assert conn.receive()
    msg = conn.pending[0]
    return msg, environ(conn, msg, base_environ(conn.server))


def test_a_head_becomes_a_pep_3333_environ(pair) -> None:
    conn, client = pair
    _, env = parsed(conn, client, b"GET /api/a%20b?x=1&y=%20 HTTP/1.1\r\nHost: h:8080\r\nAccept: a\r\n"
                                  b"Accept: b\r\nX_Api_Key: sneaky\r\nContent-Type: text/plain\r\n\r\n")
    assert env["REQUEST_METHOD"] == "GET"
    assert env["PATH_INFO"] == "/api/a b" and env["QUERY_STRING"] == "x=1&y=%20"
    assert env["RAW_URI"] == "/api/a%20b?x=1&y=%20"
    assert env["SERVER_PROTOCOL"] == "HTTP/1.1" and env["SERVER_PORT"] == "8080"
    assert env["REMOTE_ADDR"] == "127.0.0.1" and env["REMOTE_PORT"] == "4321"
    assert env["HTTP_HOST"] == "h:8080" and env["HTTP_ACCEPT"] == "a,b"
    assert env["CONTENT_TYPE"] == "text/plain"
    # a name with an underscore would become HTTP_X_API_KEY, the same as X-Api-Key: it is dropped
    assert "HTTP_X_API_KEY" not in env
    assert env["gateway.socket"] is conn.sock


def test_the_body_is_read_as_the_app_asks_and_a_short_one_ends_at_the_clients_close(pair) -> None:
    conn, client = pair
    msg, env = parsed(conn, client, b"POST /x HTTP/1.1\r\nContent-Length: 10\r\n\r\n")
    assert not msg.complete and env["CONTENT_LENGTH"] == "10"
    client.sendall(b"0123")
    client.shutdown(socket.SHUT_WR)
    assert env["wsgi.input"].read() == b"0123"  # six bytes never came
    assert env["wsgi.input"].read(5) == b""


def test_a_chunked_body_is_read_in_pieces_and_the_next_request_waits_its_turn(pair) -> None:
    conn, client = pair
    msg, env = parsed(conn, client, b"POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    body = env["wsgi.input"]
    assert body.read(3) == b"hel" and body.read(3) == b"lo"
    client.sendall(b"6\r\n world\r\n0\r\n\r\nGET /next HTTP/1.1\r\n\r\n")
    assert body.read() == b" world"
    assert msg.complete and len(conn.pending) == 2 and conn.pending[1].url == b"/next"


def test_expect_100_continue_is_answered_at_the_first_read_only(pair) -> None:
    conn, client = pair
    _, env = parsed(conn, client, b"POST /x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
    client.setblocking(False)
    with pytest.raises(BlockingIOError):  # nothing yet: the app has not asked for the body
        client.recv(100)
    client.setblocking(True)
    client.sendall(b"ok")
    assert env["wsgi.input"].read() == b"ok"
    assert client.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", "400 Bad Request"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", "414 URI Too Long"),
    (b"GET / HTTP/1.1\r\nX: " + b"v" * 70000 + b"\r\n\r\n", "431 Request Header Fields Too Large"),
])
def test_heads_the_server_refuses(pair, raw: bytes, status: str) -> None:
    conn, client = pair
    client.sendall(raw)
    with pytest.raises(WireError) as caught:
        while conn.receive():
            pass
    assert caught.value.status == status


def test_a_head_that_trickles_in_past_its_deadline_is_refused(pair, monkeypatch) -> None:
    conn, client = pair
    client.sendall(b"GET / HTTP/1.1\r\nHo")
    assert conn.receive() and not conn.pending
    monkeypatch.setattr(http_wire, "HEAD_SECONDS", 0.0)  # as if the rest came after the deadline
    client.sendall(b"st: x")
    with pytest.raises(WireError) as caught:
        conn.receive()
    assert caught.value.status == "408 Request Timeout"


def test_a_target_that_is_no_url_is_refused(pair) -> None:
    conn, client = pair
    client.sendall(b"GET http://h:99999/ HTTP/1.1\r\n\r\n")
    while not conn.pending:
        assert conn.receive()
    with pytest.raises(WireError) as caught:
        environ(conn, conn.pending[0], base_environ(conn.server))
    assert caught.value.status == "400 Bad Request"


def reply_bytes(conn: Connection, client: socket.socket, raw: bytes, status: str, headers, chunks) -> bytes:
    client.sendall(raw)
    while not conn.pending:
        conn.receive()
    msg = conn.pending.popleft()
    reply = Reply(conn, msg, msg.keep_alive)
    write = reply.start_response(status, headers)
    for chunk in chunks:
        write(chunk)
    reply.finish()
    client.settimeout(0.5)
    out = b""
    try:
        while chunk := client.recv(65536):
            out += chunk
    except TimeoutError:
        pass
    return out


def test_a_reply_without_a_length_is_chunked_and_its_head_goes_with_the_first_bytes(pair) -> None:
    conn, client = pair
    out = reply_bytes(conn, client, b"GET / HTTP/1.1\r\n\r\n", "200 OK", [("Content-Type", "text/event-stream")],
                      [b"data: 1\n\n", b"", b"data: 2\n\n"])
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Transfer-Encoding: chunked" in head and b"Connection" not in head and b"Date: " in head
    assert body == b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"


def test_head_and_http_1_0_replies(pair) -> None:
    conn, client = pair
    out = reply_bytes(conn, client, b"HEAD / HTTP/1.1\r\n\r\n", "200 OK", [("Content-Length", "5")], [b"hello"])
    assert out.endswith(b"\r\n\r\n") and b"Content-Length: 5" in out and b"hello" not in out
    out = reply_bytes(conn, client, b"GET / HTTP/1.0\r\n\r\n", "200 OK", [], [b"hello"])
    head, _, body = out.partition(b"\r\n\r\n")
    assert b"Connection: close" in head and b"chunked" not in head and body == b"hello"
