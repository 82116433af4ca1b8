"""Fixed paths answered ahead of Flask (`gateway/wsgi_answers.py`) must be answered as Flask answered them: the same
status, headers and body, errors and limits included; and the environ must read as werkzeug reads it."""

from __future__ import annotations

import io

import pytest
from flask import Flask
from werkzeug.test import Client, EnvironBuilder
from werkzeug.wrappers import Request

from adapters import ollama, openai, openai_responses
from gateway.auth import Access
from gateway.response_store import Conversations, MemoryStore
from gateway.routes import read_body, register_fallbacks, register_routes
from gateway.service import Service
from gateway.types import ErrorKind, GatewayError
from gateway.wsgi_answers import Answer, Dispatch, request_headers, request_path, request_query

LIMIT = 4096


@pytest.fixture
def app() -> Flask:
    app = Flask("gateway")
    app.config["MAX_CONTENT_LENGTH"] = LIMIT
    service = Service(None, None, conversations=Conversations(MemoryStore()))
    register_routes(app, [*ollama.ROUTES, *openai_responses.ROUTES], service, Access(["sk-test"]))
    register_fallbacks(app, openai.ROUTES[0])
    return app


def both_ways(app: Flask, method: str, path: str, **kwargs):
    """The same request through the app (fixed paths answered by `Dispatch`) and through Flask alone."""
    assert isinstance(app.wsgi_app, Dispatch)
    flask_only = Client(app.wsgi_app.fallback)
    return app.test_client().open(path, method=method, **kwargs), flask_only.open(path, method=method, **kwargs)


def comparable(response) -> tuple:
    ids = {k.lower(): v for k, v in response.headers.items() if k.lower() in ("x-request-id", "request-id")}
    assert len(ids) == 2 and len(set(ids.values())) == 1  # both id headers, with one id
    headers = sorted((k.lower(), v) for k, v in response.headers.items() if k.lower() not in ids)
    return response.status, headers, response.get_data()


@pytest.mark.parametrize("method,path,kwargs", [
    ("GET", "/api/version", {}),
    ("HEAD", "/api/version", {}),
    ("POST", "/v1/responses", {"data": b"{not json", "headers": {"Authorization": "Bearer sk-test"}}),
    ("POST", "/v1/responses", {"json": {"model": "m", "input": 3}, "headers": {"Authorization": "Bearer sk-test"}}),
    ("POST", "/v1/responses", {"json": {"model": "m"}}),  # no key
    ("POST", "/v1/responses", {"json": {"model": "m"}, "headers": {"Authorization": "Bearer sk-test",
                                                                   "Origin": "https://evil.example"}}),
    ("POST", "/v1/responses", {"data": b"x" * (LIMIT + 1), "headers": {"Authorization": "Bearer sk-test"}}),
    ("POST", "/v1/responses", {"data": b"", "headers": {"Authorization": "Bearer sk-test"}}),
    ("GET", "/api/version?x=1&x=2", {}),
])
def test_a_fixed_path_is_answered_as_flask_answers_it(app, method, path, kwargs):
    direct, through_flask = both_ways(app, method, path, **kwargs)
    assert comparable(direct) == comparable(through_flask)
    assert direct.status_code in (200, 400, 401, 403, 413)


def test_flask_keeps_the_rest(app):
    """A wrong method on a fixed path is Flask's JSON 405, an unknown path its JSON 404, a path with parameters
    is served through Flask with the same answer and id headers."""
    client = app.test_client()
    wrong = client.delete("/api/version")
    assert wrong.status_code == 405 and "error" in wrong.json and wrong.headers["request-id"]
    missing = client.get("/nowhere")
    assert missing.status_code == 404 and missing.json["error"]["code"] == "not_found"
    stored = client.get("/v1/responses/resp_none", headers={"Authorization": "Bearer sk-test"})
    assert stored.status_code == 404 and stored.headers["X-Request-Id"] == stored.headers["request-id"]


def test_head_sends_the_headers_and_closes_a_stream_unread():
    closed = []

    def frames():
        try:
            yield b"data: 1\n\n"
        finally:
            closed.append(True)

    stream = frames()
    next(stream)  # started, so that closing it runs its `finally`
    dispatch = Dispatch(lambda environ, start_response: [])
    dispatch.add("GET", "/s", lambda environ: Answer(200, stream, "text/event-stream"))
    response = Client(dispatch).head("/s")
    assert response.status_code == 200 and response.get_data() == b"" and closed == [True]
    assert response.headers["Content-Type"] == "text/event-stream; charset=utf-8"


def test_headers_and_query_read_as_werkzeug_reads_them():
    environ = EnvironBuilder(path="/x", query_string="a=1&a=2&b=&c=%E2%9C%93&d=x+y&e", method="POST",
                             headers={"X-Api-Key": "k", "Anthropic-Version": "2023-06-01", "Origin": "o"},
                             data=b"{}", content_type="application/json").get_environ()
    request = Request(environ)
    assert request_query(environ) == request.args.to_dict()
    assert request_headers(environ) == {k.lower(): v for k, v in request.headers.items()}


def test_bytes_that_are_not_utf_8_or_not_latin_1_never_fail():
    """Raw UTF-8 in a query or path arrives as latin-1 text (PEP 3333) and reads back as sent; invalid UTF-8, or
    text a server outside the rules put there, reads with replacement characters, never an exception."""
    sent = "q=caf\u00e9&x=%FF".encode().decode("latin-1")
    assert request_query({"QUERY_STRING": sent}) == {"q": "caf\u00e9", "x": "\ufffd"}
    assert request_query({"QUERY_STRING": "a=\u2603"}) == {"a": "?"}
    assert request_path({"PATH_INFO": b"/caf\xc3\xa9/\xff".decode("latin-1")}) == "/caf\u00e9/\ufffd"


def body_of(data: bytes, length: str | None, terminated: bool = False) -> bytes:
    environ = {"wsgi.input": io.BytesIO(data), "wsgi.input_terminated": terminated}
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    return read_body(environ, 10)


def test_a_body_is_read_to_its_length_and_refused_over_the_limit():
    assert body_of(b"12345", "5") == b"12345"
    assert body_of(b"123456789", None, terminated=True) == b"123456789"  # chunked, under the limit
    with pytest.raises(GatewayError) as over:
        body_of(b"x" * 11, "11")
    assert over.value.kind == ErrorKind.TOO_LARGE
    with pytest.raises(GatewayError) as chunked:
        body_of(b"x" * 50, None, terminated=True)
    assert chunked.value.kind == ErrorKind.TOO_LARGE
    with pytest.raises(GatewayError, match="ended after 3 of its 5 bytes"):
        body_of(b"123", "5")
    with pytest.raises(GatewayError, match="Content-Length"):
        body_of(b"123", "three")
    assert body_of(b"ignored", None) == b""  # no length and no end marker: no body, as WSGI says
