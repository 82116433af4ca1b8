"""The generic handler: every adapter route of every family is served by `handle`, and every streamed response
goes through the one loop in `stream_frames`.

The handler checks the API key (before reading or parsing anything), reads and size-checks the body, lets the
route's adapter parse it, hands it to `Service.run`, and renders either the finished result or the stream; any
`GatewayError` is rendered by the same adapter in its family's shape, and anything unexpected becomes that
family's 500, never a traceback.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from adapters.base import RequestContext, Route, StreamRenderer, compact_json
from gateway import __version__
from gateway.auth import Access
from gateway.http_wire import readable
from gateway.json_body import parse_body
from gateway.keys import KeyLimits, KeyPolicy
from gateway.polling import KEEPALIVE
from gateway.service import CHANGE_KINDS, Call, ProgressNote, Service, Streamed
from gateway.types import ErrorKind, GatewayError, invalid
from gateway.wsgi_answers import (
    Answer,
    Dispatch,
    id_headers,
    request_headers,
    request_id,
    request_path,
    request_query,
)

log = logging.getLogger("gateway.http")

PROGRESS_HEADER = "x-gateway-progress"  # "1": a streamed SSE response also carries `: progress {record}` lines


class LongRequests:
    """The HTTP threads that long requests (generations, embeddings, model changes, event feeds) may hold at
    once: all but a few, so that quick ones (`/health`, listings, the dashboard) still find a thread when every
    stream is busy. A long request beyond the limit is refused at once with `overloaded`, which clients retry."""

    def __init__(self, http_threads: int):
        self.limit = max(1, http_threads - max(2, http_threads // 16))
        self._slots = threading.BoundedSemaphore(self.limit)

    def take(self) -> Callable[[], None]:
        """Hold a thread; returns the function that lets it go (safe to call more than once)."""
        if not self._slots.acquire(blocking=False):
            raise GatewayError(ErrorKind.OVERLOADED, f"The server is busy: all {self.limit} threads for generations "
                                                     "and streams are in use; retry shortly.")
        return _Held(self._slots)


class _Held:
    """One held thread slot; calling it lets the slot go, once."""

    def __init__(self, slots: threading.BoundedSemaphore):
        self._slots: threading.BoundedSemaphore | None = slots

    def __call__(self) -> None:
        slots, self._slots = self._slots, None
        if slots is not None:
            slots.release()


@dataclass
class RouteOptions:
    reasoning_field: str = "reasoning_content"  # where OpenAI-style responses put reasoning (RequestContext)
    long_requests: LongRequests = field(default_factory=lambda: LongRequests(64))
    key_limits: KeyLimits = field(default_factory=KeyLimits)  # per-key limits (gateway/keys.py)
    keep_think_tags: bool = True  # false: Ollama answers with `think` unset get reasoning split out too


HOLDING_KINDS = ("chat", "completion", "embedding", *CHANGE_KINDS)
"""Request kinds that may hold their thread for long: they count against `LongRequests`."""


def register_routes(app: Flask, routes: list[Route], service: Service, access: Access,
                    options: RouteOptions | None = None) -> None:
    """One view per path and method; where families share one (DESIGN.md, "Where paths collide"), the view reads
    the body once and the first route that `accepts` it serves, else the one without `accepts`. Fixed paths are
    served ahead of Flask (`add_view`); paths with parameters through Flask."""
    options = options or RouteOptions()
    max_body = app.config.get("MAX_CONTENT_LENGTH")
    groups: dict[tuple[str, str], list[Route]] = {}
    for route in routes:
        groups.setdefault((route.method, route.path), []).append(route)
    for (method, path), group in groups.items():
        group.sort(key=lambda r: r.accepts is None)
        if sum(r.accepts is None for r in group) != 1:
            raise ValueError(f"{method} {path}: exactly one route must take requests no other route accepts")
        add_view(app, method, path, _view(group, service, access, options, max_body))


def _view(group: list[Route], service: Service, access: Access, options: RouteOptions,
          max_body: int | None) -> Callable[..., Answer]:
    def view(environ: dict, **path_params: str) -> Answer:
        return handle(group, service, access, environ, path_params, options, max_body)

    return view


def add_view(app: Flask, method: str, path: str, view: Callable[..., Answer]) -> None:
    """Register `view(environ, **path_params)`: with Flask (for its 405s, `OPTIONS` and path parameters), and, for
    a fixed path, with the `Dispatch` in front of Flask, which then answers it without Flask's request work."""
    app.add_url_rule(path, endpoint=f"{method}:{path}", methods=[method],
                     view_func=lambda **params: flask_response(view(request.environ, **params)))
    if "<" not in path:
        dispatch_of(app).add(method, path, view)


def dispatch_of(app: Flask) -> Dispatch:
    """The app's `Dispatch`, put in front of Flask the first time it is asked for."""
    if not isinstance(app.wsgi_app, Dispatch):
        app.wsgi_app = Dispatch(app.wsgi_app)  # type: ignore[method-assign]
    return app.wsgi_app


def flask_response(answer: Answer) -> Response:
    """An answer served through Flask (a route with path parameters, the monitor's feed)."""
    streamed = not isinstance(answer.body, bytes)
    return Response(answer.body, status=answer.status, headers=answer.headers, content_type=answer.content_type(),
                    direct_passthrough=streamed)


def handle(group: list[Route], service: Service, access: Access, environ: dict, path_params: dict[str, str],
           options: RouteOptions, max_body: int | None) -> Answer:
    started = time.monotonic()
    method, path = environ["REQUEST_METHOD"], request_path(environ)
    ctx = RequestContext(
        request_id=request_id(environ), created=int(time.time()), headers=request_headers(environ),
        path_params=path_params, query=request_query(environ), method=method, server_version=__version__,
        reasoning_field=options.reasoning_field)
    route = group[-1]
    try:
        policy = access.check(ctx.headers, public=all(r.public for r in group), has_body=route.body != "none")
        body = _read_body(route, environ, max_body)
        route = next(r for r in group if r.accepts is None or r.accepts(body, ctx))
        answer = _serve(route, body, service, ctx, options, policy, environ)
    except GatewayError as err:
        answer = error_answer(route, err)
    except Exception:
        log.exception("unexpected failure in %s %s", method, path)
        answer = error_answer(route, GatewayError(ErrorKind.INTERNAL, "The server failed to handle the request."))
    for name, value in route.extra_headers.items():
        answer.header(name, value)
    log.info("%s %s %s %.0fms", method, path, answer.status, (time.monotonic() - started) * 1000)
    return answer


def _serve(route: Route, body: Any, service: Service, ctx: RequestContext, options: RouteOptions,
           policy: KeyPolicy | None, environ: dict) -> Answer:
    req = route.parse(body, ctx)
    req.keep_think_tags = req.keep_think_tags and options.keep_think_tags
    counted = req.kind in HOLDING_KINDS
    key_release = options.key_limits.admit(policy, req.model) if counted else _nothing
    try:
        thread_release = options.long_requests.take() if counted else _nothing
    except BaseException:
        key_release()
        raise

    def give_back() -> None:
        thread_release()
        key_release()

    try:
        return _run(route, req, service, ctx, give_back, policy, environ)
    except BaseException:
        give_back()
        raise


def _nothing() -> None:
    return None


def _run(route: Route, req: Any, service: Service, ctx: RequestContext, give_back: Callable[[], None],
         policy: KeyPolicy | None, environ: dict) -> Answer:
    # Opt-in progress inside the client's own stream, only where extra frames break no client: SSE comments.
    progress = route.media_type == "text/event-stream" and ctx.headers.get(PROGRESS_HEADER) in ("1", "true")
    call = Call(ctx.request_id, route.family, route.path, client_gone_probe(environ),
                can_stream=route.stream is not None, progress=progress, key=policy.name if policy else None)
    outcome = service.run(req, call)
    if isinstance(outcome, Streamed):
        def close() -> None:
            try:
                outcome.close()
            finally:
                give_back()

        return stream_answer(stream_frames(outcome.events, route.stream(req, ctx), close), route.media_type)
    give_back()
    return _json(route.render(outcome, req, ctx))


def stream_frames(events: Iterable[Any], renderer: StreamRenderer, close: Callable[[], None]) -> Iterator[bytes]:
    """THE streaming loop, for every streamed response (generations, model changes, the monitor's event feed).
    Frames are written as they come; `KEEPALIVE` items become the renderer's keepalive frames. When the client
    hangs up, the HTTP worker closes this generator and `close` (in the `finally`) cancels the work at once."""
    try:
        for frame in renderer.start():
            yield frame
        for event in events:
            if isinstance(event, ProgressNote):
                yield b": progress " + compact_json(event.record).encode() + b"\n\n"
                continue
            for frame in renderer.keepalive() if event is KEEPALIVE else renderer.feed(event):
                yield frame
    except GatewayError as err:
        for frame in renderer.error(err):
            yield frame
    except Exception:
        log.exception("stream failed")
        for frame in renderer.error(GatewayError(ErrorKind.INTERNAL, "The stream failed.")):
            yield frame
    finally:
        close()


def stream_answer(frames: Iterator[bytes], media_type: str) -> Answer:
    return Answer(200, frames, media_type, [("Cache-Control", "no-cache"), ("X-Accel-Buffering", "no")])


def _add_request_id(response: Response) -> Response:
    """The request id's headers on Flask's responses (`Dispatch` adds them to the answers it serves)."""
    for name, value in id_headers(request.environ):
        response.headers[name] = value
    return response


def _read_body(route: Route, environ: dict, limit: int | None) -> Any:
    if route.body == "none":
        return None
    raw = read_body(environ, limit)
    if not raw.strip():
        raise invalid("The request body is empty: expected a JSON object.")
    return parse_body(raw)


def read_body(environ: dict, limit: int | None) -> bytes:
    """The body, refused over `limit` bytes: at once when Content-Length says so, else (chunked) at the limit."""
    declared = environ.get("CONTENT_LENGTH") or None
    try:
        length = None if declared is None else int(declared)
    except ValueError:
        length = -1
    if length is not None and length < 0:
        raise invalid(f"The Content-Length header must be a number of bytes, got {declared[:40]!r}.")
    if length is not None and limit is not None and length > limit:
        raise GatewayError(ErrorKind.TOO_LARGE, "The request body is too large.")
    if length is None and not environ.get("wsgi.input_terminated"):
        return b""  # no length and no end marker: WSGI gives no body (as Flask reads it)
    stream, chunks, size = environ["wsgi.input"], [], 0
    want = length if length is not None else limit
    while want is None or size < want:
        chunk = stream.read(65536 if want is None else min(65536, want - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    if length is None and limit is not None and size >= limit:  # chunked: cut at the limit
        raise GatewayError(ErrorKind.TOO_LARGE, "The request body is too large.")
    if length is not None and size < length:
        raise invalid(f"The request body ended after {size} of its {length} bytes (Content-Length).")
    return b"".join(chunks)


def client_gone_probe(environ: dict) -> Callable[[], bool]:
    """A check that the client's socket is closed (readable with nothing to read), for requests that write
    nothing for a long time: a non-streaming generation, or a stream still in prefill."""
    sock = environ.get("gateway.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            return readable(sock, 0) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    return gone


def _json(body: Any, status: int = 200) -> Answer:
    """A rendered body: JSON, text/plain for a `str`, an empty one for None (Ollama's copy and delete)."""
    if body is None:
        return Answer(status, b"", "text/html")  # what Flask said for an empty body
    if isinstance(body, str):
        return Answer(status, body.encode(), "text/plain")
    return Answer(status, compact_json(body).encode())


def error_answer(route: Route, err: GatewayError) -> Answer:
    status, body = route.render_error(err)
    answer = _json(body, status)
    if err.kind in (ErrorKind.INTERNAL, ErrorKind.TIMEOUT):  # the SDKs would retry a 5xx: the same again
        answer.headers.append(("x-should-retry", "false"))
    if "retry_after" in err.details:
        answer.headers.append(("Retry-After", str(err.details["retry_after"])))
    return answer


def register_fallbacks(app: Flask, fallback: Route) -> None:
    """Unknown paths and methods still get a JSON error (in the fallback family's shape), never HTML."""

    def on_http_error(exc: HTTPException) -> Response:
        kind = {404: ErrorKind.NOT_FOUND, 413: ErrorKind.TOO_LARGE}.get(exc.code or 500, ErrorKind.INVALID_REQUEST)
        message = f"{request.method} {request.path}: {exc.name}."
        err = GatewayError(kind, message, code="not_found" if kind == ErrorKind.NOT_FOUND else None)
        answer = error_answer(fallback, err)
        answer.status = exc.code or 500
        return flask_response(answer)

    app.register_error_handler(HTTPException, on_http_error)
    app.after_request(_add_request_id)
