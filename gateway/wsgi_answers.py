"""An answer to an HTTP request as plain data, and the WSGI dispatch that serves the answers of fixed paths
before Flask sees the request.

Every cheap request (a model list, a count, a metrics scrape) costs API CPU, and on a small machine that CPU is
taken from the decode threads. Flask's own work per request (its request and app contexts, the URL adapter built
for each request, signals, the response object and its header checks) cost 0.24 ms of CPU per request paced at
200/s, as much again as the whole HTTP side (bench/README.md, "Cheap requests without Flask"). So the generic
handler in `routes.py` reads the environ and returns an `Answer`; `Dispatch` serves the answers of the routes with
fixed paths (nearly all of them) straight to the server, and everything else goes to Flask as before: routes with
path parameters (which wrap the same `Answer` in a Flask response), the dashboard and its files, `OPTIONS`, and
the JSON 404 and 405. Flask keeps every rule, so a wrong method on a fixed path still gets its 405.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator
from urllib.parse import parse_qsl

from werkzeug.http import HTTP_STATUS_CODES

CHARSET_TYPES = ("text/",)
"""Media types whose Content-Type says `charset=utf-8`, as Flask's responses say it (its other charset types,
XML and JavaScript, are never sent here)."""


@dataclass
class Answer:
    """Status, body and headers: `body` is bytes, or the frames of a stream (an iterator whose `close` the
    server calls when the client hangs up)."""

    status: int
    body: bytes | Iterator[bytes]
    media_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)

    def content_type(self) -> str:
        charset = self.media_type.startswith(CHARSET_TYPES) and "charset" not in self.media_type
        return f"{self.media_type}; charset=utf-8" if charset else self.media_type

    def header(self, name: str, value: str) -> None:
        """Set `name` unless the answer already has it."""
        if all(n.lower() != name.lower() for n, _ in self.headers):
            self.headers.append((name, value))


View = Callable[[dict], Answer]
"""A view that `Dispatch` serves: the environ in, the answer out; it handles its own errors."""


def request_headers(environ: dict) -> dict[str, str]:
    """The request's headers with lower-case names, as werkzeug reads them from the environ."""
    headers = {key[5:].replace("_", "-").lower(): value for key, value in environ.items()
               if key.startswith("HTTP_")}
    for key, name in (("CONTENT_TYPE", "content-type"), ("CONTENT_LENGTH", "content-length")):
        if environ.get(key):
            headers[name] = environ[key]
    return headers


def request_query(environ: dict) -> dict[str, str]:
    """The query string's parameters, the first value of each (as Flask's `request.args.to_dict()`)."""
    raw = environ.get("QUERY_STRING", "")
    if not raw:
        return {}
    query: dict[str, str] = {}
    text = raw.encode("latin-1", "replace").decode("utf-8", "replace")  # WSGI's latin-1 back to the UTF-8 sent
    for name, value in parse_qsl(text, keep_blank_values=True, errors="replace"):
        query.setdefault(name, value)
    return query


def request_id(environ: dict) -> str:
    """This request's id, made once and kept in the environ so every answer, errors included, carries it."""
    if "gateway.request_id" not in environ:
        environ["gateway.request_id"] = secrets.token_hex(12)
    return environ["gateway.request_id"]


def id_headers(environ: dict) -> list[tuple[str, str]]:
    """`X-Request-Id` for everyone, and `request-id`, the header the Anthropic SDK reads into `_request_id`."""
    rid = request_id(environ)
    return [("X-Request-Id", rid), ("request-id", rid)]


def request_path(environ: dict) -> str:
    """PATH_INFO as text: WSGI carries its bytes as latin-1."""
    return environ.get("PATH_INFO", "").encode("latin-1", "replace").decode("utf-8", "replace")


class Dispatch:
    """WSGI middleware: `views` by (method, path) answer first, everything else goes to `fallback` (Flask)."""

    def __init__(self, fallback: Callable[..., Iterable[bytes]]):
        self.fallback = fallback
        self.views: dict[tuple[str, str], View] = {}

    def add(self, method: str, path: str, view: View) -> None:
        self.views[(method, path)] = view

    def __call__(self, environ: dict, start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = environ.get("REQUEST_METHOD", "GET")
        view = self.views.get(("GET" if method == "HEAD" else method, request_path(environ)))
        if view is None:
            return self.fallback(environ, start_response)
        answer = view(environ)
        headers = [("Content-Type", answer.content_type()), *answer.headers, *id_headers(environ)]
        body = answer.body
        if isinstance(body, bytes):
            headers.append(("Content-Length", str(len(body))))
        start_response(f"{answer.status} {HTTP_STATUS_CODES.get(answer.status, 'UNKNOWN').upper()}", headers)
        if method == "HEAD":
            if not isinstance(body, bytes) and hasattr(body, "close"):
                body.close()
            return []
        return [body] if isinstance(body, bytes) else body
