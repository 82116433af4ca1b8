"""The options the worker sets on its listeners, which every accepted connection inherits
(gateway/http_worker.py): the send timeout, and first bytes rather than the handshake waking a thread."""

from __future__ import annotations

import socket
import struct

from gateway.http_worker import prepare_listener, set_timeouts


def timeout_of(sock: socket.socket, option: int) -> float:
    seconds, micros = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, option, 16))
    return seconds + micros / 1e6


def test_a_tcp_listener_defers_accept_and_its_connections_inherit_the_send_timeout() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) == 0
        assert prepare_listener(listener, 7.5)
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT) > 0
        client = socket.create_connection(listener.getsockname())
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        listener.settimeout(5)
        conn, _ = listener.accept()
        with client, conn:
            assert conn.recv(100).startswith(b"GET /")
            # the kernel keeps timeouts in scheduler ticks, so allow a few milliseconds
            assert abs(timeout_of(conn, socket.SO_SNDTIMEO) - 7.5) < 0.02
            assert abs(timeout_of(conn, socket.SO_RCVTIMEO) - 7.5) < 0.02


def test_a_unix_listeners_connections_inherit_nothing_so_they_get_their_own_timeouts(tmp_path) -> None:
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(tmp_path / "gateway.sock"))
        listener.listen()
        assert not prepare_listener(listener, 3.0)
        client = socket.socket(socket.AF_UNIX)
        client.connect(str(tmp_path / "gateway.sock"))
        conn, _ = listener.accept()
        with client, conn:
            assert timeout_of(conn, socket.SO_SNDTIMEO) == 0
            set_timeouts(conn, 3.0)
            assert abs(timeout_of(conn, socket.SO_SNDTIMEO) - 3.0) < 0.02
