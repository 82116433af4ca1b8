"""HTTP/1.1 on one blocking socket, for the gateway's worker (`http_worker.py`): requests parsed by httptools
(llhttp, Node's parser: strict about header tokens, and about Content-Length beside Transfer-Encoding), the
WSGI environ, a request body read only when the app asks for it, and responses whose head goes out in the same
send as their first bytes, so a small answer is one segment and a stream's token is one chunk per send.

Nothing here knows about threads, the poller or the app; `Connection` is one client's socket and parser state.
"""

from __future__ import annotations

import collections
import json
import select
import socket
import sys
import time
import urllib.parse
from email.utils import formatdate

import httptools

HEAD_SECONDS = 10.0
"""From a head's first byte to its end: a client that trickles a head (one byte every few seconds keeps a
kept-alive connection from expiring) is answered 408 and closed, so it cannot pin connections for long."""
MAX_URL = 8192
MAX_FIELDS = 100
MAX_HEAD = 65536
RECV = 65536


def readable(sock: socket.socket, timeout_ms: int) -> bool:
    """Whether `sock` has bytes (or its end) to read within `timeout_ms`: one poll(2), for any descriptor number."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(timeout_ms))


class WireError(Exception):
    """A request this server answers itself, before any app sees it: a bad head, or one too long."""

    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status = status


class Message:
    """One request as parsed: its head, and its body as it arrives."""

    def __init__(self) -> None:
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.head_bytes = 0
        self.head_received = 0  # bytes read while this head was incomplete: a header value llhttp is still
        # collecting counts here before `on_header` sees it
        self.head_done = False
        self.begun = 0.0  # time.monotonic() at the head's first byte
        self.method = "GET"
        self.version = "1.1"
        self.keep_alive = False
        self.expect_continue = False
        self.body: collections.deque[bytes] = collections.deque()
        self.complete = False
        self.body_read = False  # whether the app has started reading, so `100 Continue` went out


class Connection:
    """One client: its socket, its parser, and the requests parsed from it that have not been answered yet."""

    def __init__(self, sock: socket.socket, client: tuple | str, server: tuple) -> None:
        self.sock = sock
        self.client = client
        self.server = server
        self.pending: collections.deque[Message] = collections.deque()  # complete heads, oldest first
        self.upgraded = False  # an Upgrade or CONNECT head: answered as a plain request, then the connection closes
        self.idle_until = 0.0  # for the worker: when a kept-alive connection with nothing to say is closed
        self.registered = False  # for the worker: whether its descriptor is in the epoll set
        self.closed = False
        self._parsing: Message | None = None
        self._parser = httptools.HttpRequestParser(self)

    # the parser's callbacks
    def on_message_begin(self) -> None:
        self._parsing = Message()
        self._parsing.begun = time.monotonic()

    def on_url(self, url: bytes) -> None:
        msg = self._parsing
        msg.url += url
        msg.head_bytes += len(url)
        if len(msg.url) > MAX_URL:
            raise WireError("414 URI Too Long", f"The request target is longer than {MAX_URL} bytes.")

    def on_header(self, name: bytes, value: bytes) -> None:
        msg = self._parsing
        msg.headers.append((name, value))
        msg.head_bytes += len(name) + len(value)
        if len(msg.headers) > MAX_FIELDS or msg.head_bytes > MAX_HEAD:
            raise WireError("431 Request Header Fields Too Large",
                            f"The request has more than {MAX_FIELDS} header fields or {MAX_HEAD} bytes of head.")

    def on_headers_complete(self) -> None:
        msg = self._parsing
        msg.method = self._parser.get_method().decode("latin-1")
        msg.version = self._parser.get_http_version()
        msg.keep_alive = self._parser.should_keep_alive()
        msg.expect_continue = any(n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in msg.headers)
        msg.head_done = True
        self.pending.append(msg)

    def on_body(self, body: bytes) -> None:
        self._parsing.body.append(body)

    def on_message_complete(self) -> None:
        self._parsing.complete = True

    def receive(self) -> bool:
        """One read from the socket into the parser; False at the end of the client's stream."""
        data = self.sock.recv(RECV)
        if not data:
            return False
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.upgraded = True
        except httptools.HttpParserCallbackError as exc:
            if isinstance(exc.__context__, WireError):
                raise exc.__context__ from None
            raise
        except httptools.HttpParserError as exc:
            raise WireError("400 Bad Request", f"The request is not valid HTTP/1.1: {exc}.") from None
        msg = self._parsing
        if msg is not None and not msg.head_done:
            msg.head_received += len(data)
            if msg.head_received > MAX_HEAD + RECV:
                raise WireError("431 Request Header Fields Too Large", f"The request head is over {MAX_HEAD} bytes.")
            if time.monotonic() - msg.begun > HEAD_SECONDS:
                raise WireError("408 Request Timeout", f"The request head took over {HEAD_SECONDS:.0f} s to arrive.")
        return True

    def send_error(self, error: WireError) -> None:
        """The answer to a head no app will see; the connection closes after it."""
        body = json.dumps({"error": {"message": str(error), "type": "invalid_request_error"}}).encode()
        head = (f"HTTP/1.1 {error.status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                f"Date: {http_date()}\r\nConnection: close\r\n\r\n").encode("latin-1")
        self.sock.sendall(head + body)


class Body:
    """`wsgi.input`: the current request's body, read from the socket only as the app asks for it.

    At the end of the body (or of the client's stream, for a body cut short) it returns b"". The first read of a
    request that sent `Expect: 100-continue` answers `100 Continue` first, so a client waiting for it sends."""

    def __init__(self, conn: Connection, msg: Message) -> None:
        self.conn, self.msg = conn, msg
        self.ended = False

    def _fill(self) -> bool:
        if self.msg.complete or self.ended:
            return False
        if self.msg.expect_continue and not self.msg.body_read:
            self.conn.sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.msg.body_read = True
        if not self.conn.receive():
            self.ended = True
        return True

    def read(self, size: int | None = -1) -> bytes:
        chunks = self.msg.body
        if size is None or size < 0:
            while self._fill():
                pass
            data = b"".join(chunks)
            chunks.clear()
            return data
        while not chunks and self._fill():
            pass
        if not chunks:
            return b""
        data = chunks.popleft()
        if len(data) > size:
            chunks.appendleft(data[size:])
            data = data[:size]
        return data

    def readline(self, size: int | None = -1) -> bytes:  # WSGI asks for it; JSON bodies never need it
        line = b""
        while not line.endswith(b"\n") and (size is None or size < 0 or len(line) < size):
            byte = self.read(1)
            if not byte:
                break
            line += byte
        return line

    def __iter__(self):
        return iter(self.readline, b"")


class Reply:
    """The WSGI `start_response` and the writes after it, for one request on `conn`."""

    def __init__(self, conn: Connection, msg: Message, keep_alive: bool) -> None:
        self.sock = conn.sock
        self.head_only = msg.method == "HEAD"
        self.http10 = msg.version == "1.0"
        self.keep_alive = keep_alive
        self.status = ""
        self.headers: list[tuple[str, str]] = []
        self.head: bytes | None = None  # built at the first write, sent with its bytes
        self.head_sent = False
        self.chunked = False

    def start_response(self, status: str, headers: list[tuple[str, str]], exc_info=None):
        if exc_info is not None and self.head_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.status, self.headers = status, headers
        return self.write

    def _build_head(self) -> bytes:
        code = int(self.status[:3])
        has_length = any(name.lower() == "content-length" for name, _ in self.headers)
        bodyless = self.head_only or code in (204, 304) or code < 200
        self.chunked = not has_length and not bodyless and not self.http10
        if not has_length and not bodyless and not self.chunked:
            self.keep_alive = False  # an HTTP/1.0 body without a length ends where the connection does
        lines = [f"HTTP/1.1 {self.status}"]
        lines += [f"{name}: {value}" for name, value in self.headers if name.lower() not in HOP_BY_HOP]
        lines.append(f"Date: {http_date()}")
        if self.chunked:
            lines.append("Transfer-Encoding: chunked")
        if not self.keep_alive:
            lines.append("Connection: close")
        elif self.http10:
            lines.append("Connection: keep-alive")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def write(self, data: bytes) -> None:
        if self.head is None:
            self.head = self._build_head()
        if self.head_only or not data:
            data = b""
        elif self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        if not self.head_sent:
            data, self.head_sent = self.head + data, True
        if data:
            self.sock.sendall(data)

    def finish(self) -> None:
        """After the app's last bytes: the head if nothing was written, and the chunked body's end."""
        if not self.head_sent:
            self.write(b"")
        if self.chunked and not self.head_only:
            self.sock.sendall(b"0\r\n\r\n")


HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "upgrade", "proxy-connection"})


def environ(conn: Connection, msg: Message, base: dict) -> dict:
    """The WSGI environ for `msg` (PEP 3333); `base` holds what is the same for every request."""
    try:
        url = httptools.parse_url(msg.url)
    except httptools.HttpParserInvalidURLError:
        raise WireError("400 Bad Request", "The request target is not a valid URL.") from None
    env = dict(base)
    env["REQUEST_METHOD"] = msg.method
    env["RAW_URI"] = env["REQUEST_URI"] = msg.url.decode("latin-1")
    env["PATH_INFO"] = urllib.parse.unquote_to_bytes(url.path or b"/").decode("latin-1")
    env["QUERY_STRING"] = (url.query or b"").decode("latin-1")
    env["SERVER_PROTOCOL"] = f"HTTP/{msg.version}"
    if isinstance(conn.client, tuple):
        env["REMOTE_ADDR"], env["REMOTE_PORT"] = conn.client[0], str(conn.client[1])
    env["wsgi.input"] = Body(conn, msg)
    env["gateway.socket"] = conn.sock
    for raw_name, raw_value in msg.headers:
        name = raw_name.decode("latin-1").upper()
        if "_" in name:  # X_Forwarded_For would pass for X-Forwarded-For once dashes become underscores
            continue
        key = name.replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        value = raw_value.decode("latin-1").strip()
        env[key] = f"{env[key]},{value}" if key in env and key.startswith("HTTP_") else value
    return env


def base_environ(server: tuple) -> dict:
    host, port = server[0], server[1]
    return {"SCRIPT_NAME": "", "SERVER_NAME": str(host), "SERVER_PORT": str(port), "REMOTE_ADDR": "",
            "wsgi.version": (1, 0), "wsgi.url_scheme": "http", "wsgi.errors": sys.stderr,
            "wsgi.multithread": True, "wsgi.multiprocess": False, "wsgi.run_once": False,
            "wsgi.input_terminated": True}


_date = [0, ""]


def http_date() -> str:
    """The Date header, formatted once a second."""
    now = int(time.time())
    if _date[0] != now:
        _date[:] = [now, formatdate(now, usegmt=True)]
    return _date[1]
