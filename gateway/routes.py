"""The generic handler: every adapter route of every family is served by `handle`, and every streamed response
goes through the one loop in `stream_frames`.

The handler checks the API key (before reading or parsing anything), reads and size-checks the body, lets the
route's adapter parse it, hands it to `Service.run`, and renders either the finished result or the stream; any
`GatewayError` is rendered by the same adapter in its family's shape, and anything unexpected becomes that
family's 500, never a traceback.
"""

from __future__ import annotations

import logging
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from adapters.base import RequestContext, Route, StreamRenderer, compact_json
from gateway import __version__
from gateway.auth import Access
from gateway.http_wire import readable
from gateway.json_body import parse_body
from gateway.keys import KeyLimits, KeyPolicy
from gateway.polling import KEEPALIVE
from gateway.service import CHANGE_KINDS, Call, ProgressNote, Service, Streamed
from gateway.types import ErrorKind, GatewayError, invalid

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
    """One Flask view per path and method; where families share one (DESIGN.md, "Where paths collide"), the
    view reads the body once and the first route that `accepts` it serves, else the one without `accepts`."""
    groups: dict[tuple[str, str], list[Route]] = {}
    for route in routes:
        groups.setdefault((route.method, route.path), []).append(route)
    for (method, path), group in groups.items():
        group.sort(key=lambda r: r.accepts is None)
        if sum(r.accepts is None for r in group) != 1:
            raise ValueError(f"{method} {path}: exactly one route must take requests no other route accepts")
        app.add_url_rule(path, endpoint=f"{method}:{path}", methods=[method],
                         view_func=_view(group, service, access, options or RouteOptions()))


def _view(group: list[Route], service: Service, access: Access, options: RouteOptions) -> Callable[..., Response]:
    def view(**path_params: str) -> Response:
        return handle(group, service, access, path_params, options)

    return view


def handle(group: list[Route], service: Service, access: Access, path_params: dict[str, str],
           options: RouteOptions) -> Response:
    started = time.monotonic()
    ctx = RequestContext(
        request_id=request_id(), created=int(time.time()),
        headers={k.lower(): v for k, v in request.headers.items()}, path_params=path_params,
        query=request.args.to_dict(), method=request.method, server_version=__version__,
        reasoning_field=options.reasoning_field)
    route = group[-1]
    try:
        policy = access.check(ctx.headers, public=all(r.public for r in group), has_body=route.body != "none")
        body = _read_body(route)
        route = next(r for r in group if r.accepts is None or r.accepts(body, ctx))
        response = _serve(route, body, service, ctx, options, policy)
    except GatewayError as err:
        response = error_response(route, err)
    except Exception:
        log.exception("unexpected failure in %s %s", request.method, request.path)
        response = error_response(route, GatewayError(ErrorKind.INTERNAL, "The server failed to handle the request."))
    for name, value in route.extra_headers.items():
        response.headers.setdefault(name, value)
    log.info("%s %s %s %.0fms", request.method, request.path, response.status_code,
             (time.monotonic() - started) * 1000)
    return response


def _serve(route: Route, body: Any, service: Service, ctx: RequestContext, options: RouteOptions,
           policy: KeyPolicy | None) -> Response:
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
        return _run(route, req, service, ctx, give_back, policy)
    except BaseException:
        give_back()
        raise


def _nothing() -> None:
    return None


def _run(route: Route, req: Any, service: Service, ctx: RequestContext, give_back: Callable[[], None],
         policy: KeyPolicy | None) -> Response:
    # Opt-in progress inside the client's own stream, only where extra frames break no client: SSE comments.
    progress = route.media_type == "text/event-stream" and ctx.headers.get(PROGRESS_HEADER) in ("1", "true")
    call = Call(ctx.request_id, route.family, route.path, client_gone_probe(), can_stream=route.stream is not None,
                progress=progress, key=policy.name if policy else None)
    outcome = service.run(req, call)
    if isinstance(outcome, Streamed):
        def close() -> None:
            try:
                outcome.close()
            finally:
                give_back()

        return stream_response(stream_frames(outcome.events, route.stream(req, ctx), close), route.media_type)
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


def stream_response(frames: Iterator[bytes], media_type: str) -> Response:
    return Response(frames, status=200, mimetype=media_type, direct_passthrough=True,
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def request_id() -> str:
    """This request's id, made once and kept on the request so every response, errors included, carries it."""
    if "gateway.request_id" not in request.environ:
        request.environ["gateway.request_id"] = secrets.token_hex(12)
    return request.environ["gateway.request_id"]


def _add_request_id(response: Response) -> Response:
    """`X-Request-Id` for everyone, and `request-id`, the header the Anthropic SDK reads into `_request_id`."""
    response.headers["X-Request-Id"] = response.headers["request-id"] = request_id()
    return response


def _read_body(route: Route) -> Any:
    if route.body == "none":
        return None
    try:
        raw = request.get_data(cache=False)
        limit = request.max_content_length
        if request.content_length is None and limit is not None and len(raw) >= limit:  # chunked: cut at the limit
            raise RequestEntityTooLarge()
    except RequestEntityTooLarge:
        raise GatewayError(ErrorKind.TOO_LARGE, "The request body is too large.") from None
    if request.content_length is not None and len(raw) < request.content_length:
        raise invalid(f"The request body ended after {len(raw)} of its {request.content_length} bytes "
                      "(Content-Length).")
    if not raw.strip():
        raise invalid("The request body is empty: expected a JSON object.")
    return parse_body(raw)


def client_gone_probe() -> Callable[[], bool]:
    """A check that the client's socket is closed (readable with nothing to read), for requests that write
    nothing for a long time: a non-streaming generation, or a stream still in prefill."""
    sock = request.environ.get("gateway.socket")
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


def _json(body: Any, status: int = 200) -> Response:
    """A rendered body: JSON, text/plain for a `str`, an empty 200 for None (Ollama's copy and delete)."""
    if body is None:
        return Response(b"", status=status)
    if isinstance(body, str):
        return Response(body, status=status, mimetype="text/plain")
    return Response(compact_json(body), status=status, mimetype="application/json")


def error_response(route: Route, err: GatewayError) -> Response:
    status, body = route.render_error(err)
    response = _json(body, status)
    if err.kind in (ErrorKind.INTERNAL, ErrorKind.TIMEOUT):  # the SDKs would retry a 5xx: the same again
        response.headers["x-should-retry"] = "false"
    if "retry_after" in err.details:
        response.headers["Retry-After"] = str(err.details["retry_after"])
    return response


def register_fallbacks(app: Flask, fallback: Route) -> None:
    """Unknown paths and methods still get a JSON error (in the fallback family's shape), never HTML."""

    def on_http_error(exc: HTTPException) -> Response:
        kind = {404: ErrorKind.NOT_FOUND, 413: ErrorKind.TOO_LARGE}.get(exc.code or 500, ErrorKind.INVALID_REQUEST)
        message = f"{request.method} {request.path}: {exc.name}."
        err = GatewayError(kind, message, code="not_found" if kind == ErrorKind.NOT_FOUND else None)
        response = error_response(fallback, err)
        response.status_code = exc.code or 500
        return response

    app.register_error_handler(HTTPException, on_http_error)
    app.after_request(_add_request_id)
