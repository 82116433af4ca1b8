"""The worker's listener option: first bytes, not the handshake, wake a thread (gateway/http_worker.py)."""

from __future__ import annotations

import socket

from gateway.http_worker import defer_accept


def test_a_tcp_listener_defers_accept_until_data_arrives() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
        defer_accept(listener)
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        client = socket.create_connection(listener.getsockname())
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        listener.settimeout(5)
        conn, _ = listener.accept()
        with client, conn:
            assert conn.recv(100).startswith(b"GET /")


def test_a_unix_listener_is_left_as_it_is(tmp_path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "gateway.sock"))
        defer_accept(listener)  # no TCP option on a unix socket, and no error
