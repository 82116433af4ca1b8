"""The gunicorn worker `serve` runs: gunicorn's master, signals and hooks, with an HTTP/1.1 loop of our own.

Every cheap request (a model list, a count, a metrics scrape) costs API CPU, and on a small machine that CPU is
taken from the decode threads: a ggml step waits for its slowest thread, so a core lent to the HTTP side stalls
the whole step. Under gunicorn's gthread worker a bare WSGI callable cost 0.42 ms of CPU per fresh connection,
mostly in handing each connection from the accepting thread to a pool thread and back (the woken thread
preempts the one that woke it, finds the GIL held and sleeps again: about 7 context switches a request). Here
it costs 0.14 ms (bench/README.md, "The gateway's own HTTP worker"). The worker keeps what gunicorn is for here,
the master that `serve` reloads and stops (`reload.py`, `shutdown.py`), and does the connection work itself:

- Every HTTP thread waits in one epoll set holding the listeners and the idle kept-alive connections, each
  armed for one event (EPOLLONESHOT), so the kernel wakes one thread, which accepts or reads and serves the
  connection itself. Requests are parsed by httptools (`http_wire.py`).
- After a response the serving thread waits a few milliseconds for the client's next move: a client that closes
  is closed there, a next request is served on the same thread, and only a client that stays quiet goes back to
  the epoll set, where the main thread closes it after `keepalive` seconds.
- The send timeout (SO_SNDTIMEO, and SO_RCVTIMEO for a body that stops arriving) is set once on the listeners,
  and every connection inherits it: a client that stops reading cannot hold a thread longer than `send_timeout`,
  and a write is one system call.
- The main thread beats the arbiter's heartbeat, stops accepting at `worker_connections`, and on SIGTERM stops
  accepting, closes idle connections and waits up to `graceful_timeout` for the rest (`shutdown.py` ends what
  still streams by then, each with its family's final error).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import threading
import time

from gunicorn import util
from gunicorn.workers.base import Worker

from gateway.http_wire import Connection, Reply, WireError, base_environ, environ, readable

LINGER_MS = 5
"""How long a thread keeps a connection after answering (or when it is new), for the client's next bytes."""

HEARTBEAT_S = 1.0
ACCEPT_BACKOFF_S = 0.1
DRAIN_BYTES = 16 * 1024 * 1024  # an upload refused before it was read may finish arriving, for its answer's sake
ONE_EVENT = select.EPOLLIN | select.EPOLLONESHOT


def close(sock: socket.socket, unread: bool) -> None:
    """Close; with request bytes left unread, gunicorn's graceful close (our FIN first, then a bounded drain), so
    the kernel does not answer the unread bytes with a reset that destroys the response before it is read."""
    if unread:
        util.close_graceful(sock, timeout=1.0, max_drain=DRAIN_BYTES)
    else:
        sock.close()


def timeval(seconds: float) -> bytes:
    return struct.pack("ll", int(seconds), int((seconds - int(seconds)) * 1_000_000))


def set_timeouts(sock: socket.socket, seconds: float) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval(seconds))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval(seconds))


def prepare_listener(listener: socket.socket, send_timeout: float) -> bool:
    """Options a TCP listener's connections inherit from it, set once instead of per connection; whether they do
    (a unix socket's connections do not: set theirs with `set_timeouts`).

    - The send timeout (SO_SNDTIMEO, and SO_RCVTIMEO for a body that stops arriving): a client that stops reading
      cannot hold a thread longer than `send_timeout`, and a write stays one system call.
    - A TCP listener wakes a thread when a connection's first bytes arrive, not at its handshake
      (TCP_DEFER_ACCEPT): an HTTP client speaks first, so the thread finds the request there instead of sleeping
      again until it comes.

    Each system call and wake-up of a cheap request takes a core from a decode thread for a moment."""
    if listener.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    set_timeouts(listener, send_timeout)
    with contextlib.suppress(OSError, AttributeError):  # AttributeError: not Linux
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 1)
    return True


class GatewayWorker(Worker):
    """See the module docstring."""

    def init_process(self) -> None:
        self.epoll = select.epoll()  # the listeners, and kept-alive connections armed for one event each
        self.listeners: dict[int, socket.socket] = {}
        self.addresses: dict[int, tuple] = {}  # each listener's own address, for the environ
        self.timeouts_per_connection: set[int] = set()  # listeners whose connections do not inherit the timeouts
        self.parked: dict[int, Connection] = {}  # kept-alive connections waiting in `epoll`, by descriptor
        self.open = 0  # connections accepted and not closed yet
        self.lock = threading.Lock()  # over `parked` and `open`
        self.last_beat = 0.0
        self.accepting = False
        super().init_process()  # loads the app, installs the signals, then calls run()

    def handle_exit(self, sig, frame) -> None:
        super().handle_exit(sig, frame)
        with contextlib.suppress(OSError):  # a full pipe: the main thread is being woken anyway
            os.write(self.PIPE[1], b".")

    def run(self) -> None:
        """The main thread: heartbeats, the connection limit, expiry of idle connections, and the stop."""
        self.send_timeout = self.wsgi.extensions["gateway"].settings.send_timeout
        self.base = base_environ(self.sockets[0].getsockname())
        self.listeners = {listener.fileno(): listener for listener in self.sockets}
        self.addresses = {listener.fileno(): listener.getsockname() for listener in self.sockets}
        for listener in self.sockets:
            listener.setblocking(False)
            if not prepare_listener(listener, self.send_timeout):
                self.timeouts_per_connection.add(listener.fileno())
        for i in range(self.cfg.threads):
            threading.Thread(target=self._thread, name=f"http-{i}", daemon=True).start()
        while self.alive:
            self.beat()
            if self.accepting != (self.open < self.cfg.worker_connections):
                self._accepting(not self.accepting)
            self._close_idle(time.monotonic())
            if self.ppid != os.getppid():
                self.log.info("Parent changed, shutting down: %s", self)
                break
            with contextlib.suppress(OSError):
                if select.select([self.PIPE[0]], [], [], 1.0)[0]:
                    os.read(self.PIPE[0], 4096)
        self._stop()

    def beat(self) -> None:
        now = time.monotonic()
        if now - self.last_beat >= HEARTBEAT_S:
            self.last_beat = now
            self.notify()

    def _accepting(self, on: bool) -> None:
        """Listeners are armed for one connection at a time: the thread that takes it accepts and re-arms, so a
        new connection wakes one thread."""
        self.accepting = on
        for fd in self.listeners:
            with contextlib.suppress(OSError):
                if on:
                    self.epoll.register(fd, ONE_EVENT)
                else:
                    self.epoll.unregister(fd)

    def _close_idle(self, now: float) -> None:
        """Connections kept alive longer than `keepalive` seconds with nothing sent are closed."""
        with self.lock:
            expired = [conn for conn in self.parked.values() if conn.idle_until <= now]
            for conn in expired:
                del self.parked[conn.sock.fileno()]
        for conn in expired:
            self._closed(conn)

    def _closed(self, conn: Connection, unread: bool = False) -> None:
        if conn.closed:  # an error after the close, on its way out
            return
        conn.closed = True
        close(conn.sock, unread)
        with self.lock:
            self.open -= 1

    def _stop(self) -> None:
        """Stop accepting, close what is idle, and wait up to `graceful_timeout` for requests in flight."""
        self._accepting(False)
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while self.open > 0 and time.monotonic() < deadline:
            self.beat()
            self._close_idle(float("inf"))
            time.sleep(0.1)
        for listener in self.sockets:
            listener.close()

    # the threads: each waits in the shared epoll for one event, so no thread hands a connection to another
    def _thread(self) -> None:
        while True:
            for fd, _ in self.epoll.poll(-1, 1):
                conn = None
                try:
                    conn = self._accept(fd) if fd in self.listeners else self._unpark(fd)
                    if conn is not None:
                        self._serve(conn)
                except Exception:  # a bug here must cost one connection, never a thread
                    self.log.exception("Error serving a connection")
                    if conn is not None:
                        self._closed(conn)

    def _accept(self, fd: int) -> Connection | None:
        listener = self.listeners[fd]
        try:
            sock, client = listener.accept()
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):  # not "the client gave up"
                self.log.warning("accept failed: %s", exc)  # out of descriptors, say: wait, rather than spin
                time.sleep(ACCEPT_BACKOFF_S)
            return None
        finally:
            if self.accepting:
                with contextlib.suppress(OSError):  # unregistered meanwhile: the worker stops, or is full
                    self.epoll.modify(fd, ONE_EVENT)
        if fd in self.timeouts_per_connection:
            try:
                set_timeouts(sock, self.send_timeout)
            except OSError:  # reset before we got to it
                sock.close()
                return None
        with self.lock:
            self.open += 1
        return Connection(sock, client, self.addresses[fd])

    def _unpark(self, fd: int) -> Connection | None:
        with self.lock:  # None: closed as idle meanwhile
            return self.parked.pop(fd, None)

    def _park(self, conn: Connection) -> None:
        """A quiet kept-alive connection waits in epoll, armed for one event, until `keepalive` runs out."""
        fd = conn.sock.fileno()
        conn.idle_until = time.monotonic() + self.cfg.keepalive
        with self.lock:  # parked before armed: the thread its event wakes must find it
            self.parked[fd] = conn
        try:
            if conn.registered:
                self.epoll.modify(fd, ONE_EVENT)
            else:
                self.epoll.register(fd, ONE_EVENT)
                conn.registered = True
        except OSError:
            with self.lock:
                self.parked.pop(fd, None)
            raise

    def _serve(self, conn: Connection) -> None:
        """Answer `conn`'s requests while its client keeps talking promptly; then close it or hand it back."""
        try:
            while True:
                if not conn.pending:
                    if not readable(conn.sock, LINGER_MS):
                        if self.alive:
                            self._park(conn)
                        else:
                            self._closed(conn)
                        return
                    if not conn.receive():
                        self._closed(conn)
                        return
                    continue
                msg = conn.pending[0]
                keep_alive = self._answer(conn, msg)
                conn.pending.popleft()
                if not (keep_alive and msg.complete):
                    self._closed(conn, unread=not msg.complete)
                    return
        except WireError as error:
            with contextlib.suppress(OSError):
                conn.send_error(error)
            self._closed(conn, unread=True)
        except OSError as exc:  # the client went away, or stopped reading for `send_timeout`
            self.log.debug("Connection ended: %s", exc)
            self._closed(conn)

    def _answer(self, conn: Connection, msg) -> bool:
        """Run the app for `msg`; whether the connection may carry another request."""
        reply = Reply(conn, msg, msg.keep_alive and self.alive and not conn.upgraded)
        env = environ(conn, msg, self.base)
        result = None
        try:
            result = self.wsgi(env, reply.start_response)
            for data in result:
                reply.write(data)
            reply.finish()
        except OSError:
            raise
        except Exception:
            self.log.exception("Error handling request %s %s", msg.method, env["RAW_URI"])
            if reply.head_sent:
                return False
            reply = Reply(conn, msg, False)
            reply.start_response("500 Internal Server Error", [("Content-Type", "text/plain"),
                                                               ("Content-Length", "21")])
            reply.write(b"Internal Server Error")
        finally:
            if hasattr(result, "close"):
                result.close()
        return reply.keep_alive
