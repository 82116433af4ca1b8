"""The upstream balancer's policy with a hand-moved clock: least outstanding requests, circuits that open on
failures and let one trial through after their cool-down, busy answers that only lower a URL's share, and the
errors a request gets when no URL can take it."""

from __future__ import annotations

import threading

import pytest

from gateway.backends.upstream_balance import CLOSED, HALF_OPEN, OPEN, Balancer
from gateway.types import ErrorKind, GatewayError

A, B = "http://a:8000", "http://b:8000"
COOLDOWN = 10.0


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def balancer(clock: Clock) -> Balancer:
    return Balancer("big-model", [A, B], COOLDOWN, clock)


def endpoint(balancer: Balancer, url: str):
    return next(e for e in balancer.endpoints if e.url == url)


def test_requests_go_to_the_url_with_the_fewest_in_flight(balancer: Balancer, clock: Clock):
    first = balancer.acquire(clock.now)
    second = balancer.acquire(clock.now)
    assert {first.url, second.url} == {A, B}
    balancer.release(first)
    assert balancer.acquire(clock.now) is first  # the other still has one in flight
    assert balancer.in_flight() == 2


def test_a_failed_url_gets_nothing_until_its_cool_down_then_one_trial(balancer: Balancer, clock: Clock):
    a = endpoint(balancer, A)
    balancer.failed(a, "connection refused")
    assert [balancer.acquire(clock.now).url for _ in range(3)] == [B, B, B]
    clock.now += COOLDOWN
    trial = balancer.acquire(clock.now)
    assert (trial.url, trial.state, trial.trial) == (A, HALF_OPEN, True)
    assert balancer.acquire(clock.now).url == B  # no second trial while the first is out
    balancer.succeeded(trial)
    assert (a.state, a.last_error) == (CLOSED, None)


def test_a_failed_trial_opens_the_circuit_again(balancer: Balancer, clock: Clock):
    a = endpoint(balancer, A)
    balancer.failed(a, "500")
    clock.now += COOLDOWN
    trial = balancer.acquire(clock.now, busy=frozenset({B}))
    balancer.failed(trial, "500 again")
    balancer.release(trial)
    assert (a.state, a.opened_at, a.last_error) == (OPEN, clock.now, "500 again")


def test_busy_answers_lower_a_urls_share_without_opening_its_circuit(balancer: Balancer, clock: Clock):
    a, b = endpoint(balancer, A), endpoint(balancer, B)
    balancer.throttled(a, "429")
    assert a.state == CLOSED
    held = [balancer.acquire(clock.now) for _ in range(4)]
    assert [e.url for e in held] == [B, B, B, A]  # A counts (0 + 1) × 4 against B's (3 + 1)
    clock.now += COOLDOWN
    for e in held:
        balancer.release(e)
    assert balancer.snapshot()[0]["throttled"] is False
    assert b.in_flight == 0


def test_every_url_busy_is_overloaded(balancer: Balancer, clock: Clock):
    with pytest.raises(GatewayError) as caught:
        balancer.acquire(clock.now, busy=frozenset({A, B}))
    assert caught.value.kind == ErrorKind.OVERLOADED


def test_every_circuit_open_past_the_deadline_is_unavailable_with_each_reason(balancer: Balancer, clock: Clock):
    balancer.failed(endpoint(balancer, A), "connection refused")
    balancer.failed(endpoint(balancer, B), "answered 502")
    with pytest.raises(GatewayError) as caught:
        balancer.acquire(clock.now)
    err = caught.value
    assert err.kind == ErrorKind.UNAVAILABLE and err.code == "upstream_unavailable"
    assert f"{A}: connection refused" in err.message and f"{B}: answered 502" in err.message
    assert not balancer.healthy()


def test_a_waiting_request_takes_the_url_a_health_check_brings_back(balancer: Balancer, clock: Clock):
    a, b = endpoint(balancer, A), endpoint(balancer, B)
    balancer.failed(a, "connection refused")
    balancer.failed(b, "connection refused")
    got: list = []
    waiter = threading.Thread(target=lambda: got.append(balancer.acquire(clock.now + 3600)))
    waiter.start()
    balancer.probed(b, None)  # the health check finds B answering again
    waiter.join(timeout=30)
    assert [e.url for e in got] == [B]
    assert (b.state, b.trial) == (HALF_OPEN, True)


def test_a_failed_health_check_opens_the_circuit(balancer: Balancer, clock: Clock):
    balancer.probed(endpoint(balancer, A), "/health answered 500")
    assert balancer.snapshot()[0] == {"url": A, "state": OPEN, "in_flight": 0, "throttled": False,
                                      "last_error": "/health answered 500"}
    assert balancer.healthy()  # B is still fine
