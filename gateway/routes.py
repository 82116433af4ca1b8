"""The generic handler: every adapter route of every family is served by `handle`, and every streamed response
goes through the one loop in `_stream_frames`.

The handler reads and size-checks the body, checks the API key, lets the route's adapter parse it, runs it
through the service, and renders either the finished result or the stream; any `GatewayError` is rendered by
the same adapter in its family's shape, and anything unexpected becomes that family's 500, never a traceback.
"""

from __future__ import annotations

import json
import logging
import secrets
import select
import socket
import time
from typing import Any, Callable, Iterator

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from adapters.base import RequestContext, Route, StreamRenderer, compact_json
from gateway.service import KEEPALIVE, Generation, Service
from gateway.types import ErrorKind, GatewayError, invalid

log = logging.getLogger("gateway.http")

QUERY_KINDS = ("list_models", "show_model", "health")
OPEN_KINDS = ("health",)  # answered without an API key, so probes and load balancers work


def register_routes(app: Flask, routes: list[Route], service: Service, api_keys: list[str]) -> None:
    """One Flask view per path and method; the view picks the route and hands it to `handle`."""
    for route in routes:
        endpoint = f"{route.family}:{route.method}:{route.path}"
        app.add_url_rule(route.path, endpoint=endpoint, methods=[route.method],
                         view_func=_view(route, service, api_keys))


def _view(route: Route, service: Service, api_keys: list[str]) -> Callable[..., Response]:
    def view(**path_params: str) -> Response:
        return handle(route, service, api_keys, path_params)

    return view


def handle(route: Route, service: Service, api_keys: list[str], path_params: dict[str, str]) -> Response:
    started = time.monotonic()
    ctx = RequestContext(
        request_id=request_id(), created=int(time.time()),
        headers={k.lower(): v for k, v in request.headers.items()}, path_params=path_params,
        query=request.args.to_dict(), method=request.method)
    try:
        response = _serve(route, service, api_keys, ctx)
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


def _serve(route: Route, service: Service, api_keys: list[str], ctx: RequestContext) -> Response:
    req = route.parse(_read_body(route), ctx)
    if api_keys and req.kind not in OPEN_KINDS:
        _check_key(ctx.headers, api_keys)
    if req.kind in QUERY_KINDS:
        return _json(route.render(service.query(req), req, ctx))
    if req.kind == "embedding":
        return _json(route.render(service.embed(req), req, ctx))
    client_gone = _client_gone_probe()
    gen = service.start(req)
    if req.stream and route.stream is not None:
        frames = _stream_frames(service, gen, route.stream(req, ctx), client_gone)
        return Response(frames, status=200, mimetype=route.media_type, direct_passthrough=True,
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return _json(route.render(service.complete(gen, client_gone), req, ctx))


def _stream_frames(service: Service, gen: Generation, renderer: StreamRenderer,
                   client_gone: Callable[[], bool]) -> Iterator[bytes]:
    """THE streaming loop. Frames are written as they come; when the client hangs up, gunicorn closes this
    generator and the `finally` cancels the engine sequences at once."""
    try:
        for frame in renderer.start():
            yield frame
        for event in service.events(gen, client_gone):
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
        gen.close()


def request_id() -> str:
    """This request's id, made once and kept on the request so every response, errors included, carries it."""
    if "gateway.request_id" not in request.environ:
        request.environ["gateway.request_id"] = secrets.token_hex(12)
    return request.environ["gateway.request_id"]


def _add_request_id(response: Response) -> Response:
    response.headers["X-Request-Id"] = request_id()
    return response


def _read_body(route: Route) -> Any:
    if route.body == "none":
        return None
    try:
        raw = request.get_data(cache=False)
    except RequestEntityTooLarge:
        raise GatewayError(ErrorKind.TOO_LARGE, "The request body is too large.") from None
    if not raw.strip():
        raise invalid("The request body is empty: expected a JSON object.")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}.") from None


def _check_key(headers: dict[str, str], api_keys: list[str]) -> None:
    auth = headers.get("authorization", "")
    key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
    if not any(secrets.compare_digest(key, k) for k in api_keys):
        raise GatewayError(ErrorKind.UNAUTHORIZED, "Invalid or missing API key.")


def _client_gone_probe() -> Callable[[], bool]:
    """A check that the client's socket is closed (readable with nothing to read), for requests that write
    nothing for a long time: a non-streaming generation, or a stream still in prefill."""
    sock = request.environ.get("gunicorn.socket")
    if sock is None:
        return lambda: False

    def gone() -> bool:
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    return gone


def _json(body: Any, status: int = 200) -> Response:
    return Response(compact_json(body), status=status, mimetype="application/json")


def error_response(route: Route, err: GatewayError) -> Response:
    status, body = route.render_error(err)
    response = _json(body, status)
    if err.kind == ErrorKind.INTERNAL:
        response.headers["x-should-retry"] = "false"
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
