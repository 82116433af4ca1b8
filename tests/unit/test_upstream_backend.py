"""The upstream backend against small local servers that play broken engines (refusing, 500, 429, an error
event before the first token, a stream that dies halfway): failover happens only before the first byte, a
half-sent stream is never replayed, and every failure is a `GatewayError` of the right kind."""

from __future__ import annotations

import socket
from typing import Iterator

import pytest

from gateway.backends.upstream import UpstreamBackend
from gateway.backends.upstream_balance import CLOSED, OPEN
from gateway.engine.jobs import Finished
from gateway.models.registry import ModelSpec
from gateway.models.upstream_config import UpstreamConfig
from gateway.types import ErrorKind, GatewayError, InternalRequest, Message, SamplingParams
from tests.unit.upstream_fake import MODEL, N_CTX, FakeUpstream

EVENT_WAIT = 30.0  # seconds a test waits for the next event before it fails (never reached when all is well)


def refused_url() -> str:
    """A loopback port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def backends() -> Iterator[list[UpstreamBackend]]:
    made: list[UpstreamBackend] = []
    yield made
    for backend in made:
        backend.close()


def make(backends: list[UpstreamBackend], *urls: str, **config) -> UpstreamBackend:
    config = {"health_interval": 0, "cooldown": 3600.0, "first_byte_timeout": 0.5, **config}
    backend = UpstreamBackend("front", UpstreamConfig(urls=urls, model=MODEL, **config))
    backends.append(backend)
    return backend


def spec(backend: UpstreamBackend) -> ModelSpec:
    return ModelSpec(name="front", backend="upstream", upstream=backend.config)


def chat() -> InternalRequest:
    return InternalRequest(kind="chat", messages=[Message("user", "Weather in Paris?")])


def drain(run) -> list:
    """Every event of a one-choice run, up to its Finished."""
    events = []
    while not events or not isinstance(events[-1], Finished):
        events.append(run.events.get(timeout=EVENT_WAIT)[1])
    return events


def endpoint_state(backend: UpstreamBackend, url: str) -> dict:
    return next(e for e in backend.describe().endpoints if e["url"] == url)


def test_the_context_size_is_read_from_the_upstream_and_the_status_shows_each_url(backends):
    with FakeUpstream() as up:
        down = refused_url()
        backend = make(backends, up.url, down)
        status = backend.describe()
        assert (status.kind, status.n_ctx, status.health) == ("upstream", N_CTX, "ok")
        assert endpoint_state(backend, up.url)["state"] == CLOSED
        assert endpoint_state(backend, down) == {"url": down, "state": OPEN, "in_flight": 0, "throttled": False,
                                                 "last_error": "connection refused"}


@pytest.mark.parametrize("act", ["500", "429", "error_first"])
def test_a_failure_before_the_first_byte_goes_to_the_other_url(backends, act):
    with FakeUpstream([act]) as bad, FakeUpstream() as good:
        backend = make(backends, bad.url, good.url)
        run = backend.generate(chat(), spec(backend))
        events = drain(run)
        assert events[-1].reason == "stop" and events[-1].error is None
        assert "".join(e.text for e in events if hasattr(e, "thinking")) == "Hello"
        assert (len(bad.posts("/v1/chat/completions")), len(good.posts("/v1/chat/completions"))) == (1, 1)
        state = endpoint_state(backend, bad.url)
        assert (state["state"], state["throttled"]) == ((CLOSED, True) if act == "429" else (OPEN, False))
        assert backend.describe().busy == 0


def test_a_refused_connection_fails_over_too(backends):
    with FakeUpstream() as good:
        down = refused_url()
        backend = make(backends, down, good.url)
        backend.balancer.succeeded(backend.balancer.endpoints[0])  # as if it had answered before
        events = drain(backend.generate(chat(), spec(backend)))
        assert events[-1].error is None
        assert endpoint_state(backend, down)["last_error"] == "connection refused"


def test_a_stream_that_dies_after_its_first_byte_ends_with_an_error_and_is_not_replayed(backends):
    with FakeUpstream(["die_mid"]) as dying, FakeUpstream() as other:
        backend = make(backends, dying.url, other.url)
        backend.balancer.throttled(backend.balancer.endpoints[1], "keep the first request on the dying URL")
        events = drain(backend.generate(chat(), spec(backend)))
        failed = events[-1]
        assert failed.reason == "error" and failed.error.kind == ErrorKind.UNAVAILABLE
        assert failed.error.code == "upstream_failed"
        assert [e.text for e in events if hasattr(e, "thinking")] == ["", "Hel"]  # what arrived, once
        assert other.posts("/v1/chat/completions") == []
        assert endpoint_state(backend, dying.url)["state"] == OPEN


def test_a_client_error_is_not_retried_and_keeps_the_upstreams_words(backends):
    with FakeUpstream(["400"]) as first, FakeUpstream() as second:
        backend = make(backends, first.url, second.url)
        with pytest.raises(GatewayError) as caught:
            backend.generate(chat(), spec(backend))
        assert (caught.value.kind, caught.value.param) == (ErrorKind.INVALID_REQUEST, "temperature")
        assert second.posts("/v1/chat/completions") == []
        assert endpoint_state(backend, first.url)["state"] == CLOSED
        assert backend.describe().busy == 0


def test_every_url_failing_is_unavailable_and_every_url_busy_is_overloaded(backends):
    with FakeUpstream(["500"]) as a, FakeUpstream(["500"]) as b:
        backend = make(backends, a.url, b.url)
        with pytest.raises(GatewayError) as caught:
            backend.generate(chat(), spec(backend))
        assert caught.value.kind == ErrorKind.UNAVAILABLE and "engine crashed" in caught.value.message
        assert backend.describe().health == "unavailable"
    with FakeUpstream(["429"]) as a, FakeUpstream(["429"]) as b:
        backend = make(backends, a.url, b.url)
        with pytest.raises(GatewayError) as caught:
            backend.generate(chat(), spec(backend))
        assert caught.value.kind == ErrorKind.OVERLOADED


def test_closing_a_run_ends_a_stalled_stream_as_cancelled(backends):
    with FakeUpstream(["stall"]) as up:
        backend = make(backends, up.url)
        run = backend.generate(chat(), spec(backend))
        first = [run.events.get(timeout=EVENT_WAIT)[1] for _ in range(3)]  # Started and two pieces
        assert [type(e).__name__ for e in first] == ["Started", "SplitPiece", "SplitPiece"]
        run.close()
        assert drain(run)[-1].reason == "cancelled"
        assert backend.describe().busy == 0


def test_a_completion_and_the_models_defaults(backends):
    with FakeUpstream() as up:
        backend = make(backends, up.url)
        model = ModelSpec(name="front", backend="upstream", upstream=backend.config, parameters={"temperature": 0.1})
        req = InternalRequest(kind="completion", prompts=["Count:"], echo=True, sampling=SamplingParams(max_tokens=2))
        run = backend.generate(req, model)
        assert [c.prompt_text for c in run.choices] == ["Count:"]
        events = drain(run)
        assert "".join(e.text for e in events if hasattr(e, "thinking")) == "one two"
        assert (events[-1].reason, events[-1].prompt_tokens, events[-1].completion_tokens) == ("length", 3, 2)
        assert up.posts("/v1/completions")[0]["temperature"] == 0.1
        assert "echo" not in up.posts("/v1/completions")[0]  # the service echoes, once


def test_embeddings_tokenize_and_detokenize_go_to_the_upstream(backends):
    with FakeUpstream() as up:
        backend = make(backends, up.url)
        vectors, n = backend.embed(InternalRequest(kind="embedding", prompts=["a", "b"]), spec(backend))
        assert (vectors, n) == ([[0.0, 0.5], [1.0, 0.5]], 5)
        tokens = backend.tokenize(InternalRequest(kind="tokenize", prompts=["abc"]), spec(backend))
        assert (tokens.tokens, tokens.pieces, tokens.max_model_len) == ([1, 2, 3], ["a", "b", "c"], N_CTX)
        assert up.posts("/tokenize")[0]["prompt"] == "abc"
        assert backend.detokenize([1, 2, 3]) == "abc"


def test_an_upstream_without_tokenize_is_a_clear_400(backends):
    with FakeUpstream(["404"]) as up:
        backend = make(backends, up.url)
        with pytest.raises(GatewayError) as caught:
            backend.tokenize(InternalRequest(kind="tokenize", prompts=["abc"]), spec(backend))
        assert caught.value.kind == ErrorKind.INVALID_REQUEST and "offers no /tokenize" in caught.value.message


def test_echo_of_token_ids_is_refused(backends):
    with FakeUpstream() as up:
        backend = make(backends, up.url)
        with pytest.raises(GatewayError) as caught:
            backend.generate(InternalRequest(kind="completion", prompts=[[1, 2]], echo=True), spec(backend))
        assert caught.value.param == "echo"
