"""Which upstream URL gets the next request: the fewest requests in flight, with a circuit breaker per URL.

Only our own count of requests in flight is used (every upstream server counts differently, and asking costs a
round trip). A URL's circuit opens when it refuses connections, answers 5xx or fails a stream before its first
token, and then gets no requests until a cool-down has passed; then one trial request goes through (half-open):
its success closes the circuit, its failure opens it again. A health check that succeeds skips the rest of the
cool-down. An answer of 429 or 503 means busy, not broken: that URL's share is lowered for a cool-down instead.
When every circuit is open a request waits for one to reopen, up to its first-byte deadline, and then gets the
family's `unavailable` error; when every URL is busy it gets `overloaded`.

Plain logic with a clock seam: no HTTP here, so the policy is tested without any server.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

from gateway.types import ErrorKind, GatewayError

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"
THROTTLED_WEIGHT = 4  # a URL that answered 429/503 counts its requests this many times over, for one cool-down


@dataclass
class Endpoint:
    """One upstream URL as the balancer sees it. Changed only under the balancer's lock."""

    url: str
    in_flight: int = 0
    state: str = CLOSED
    opened_at: float = 0.0  # when the circuit last opened
    trial: bool = False  # a half-open circuit's one trial request is out
    throttled_until: float = 0.0  # a 429/503 lowers its share until then
    last_error: str | None = None
    turn: int = 0  # when it was last picked: among equals the one picked longest ago goes next


class Balancer:
    def __init__(self, model: str, urls: tuple[str, ...] | list[str], cooldown: float,
                 clock: Callable[[], float] = time.monotonic):
        self.model = model
        self.endpoints = [Endpoint(url) for url in urls]
        self.cooldown = cooldown
        self._clock = clock
        self._cond = threading.Condition()
        self._turns = 0

    def acquire(self, deadline: float, busy: frozenset[str] = frozenset()) -> Endpoint:
        """The URL for the next attempt, counted in flight until `release`. `busy` holds the URLs that already
        answered this request with 429/503. Waits while every circuit is open, up to `deadline` (the clock's
        time); then raises `unavailable`, or `overloaded` when every URL is busy."""
        with self._cond:
            while True:
                now = self._clock()
                candidates = [e for e in self.endpoints if e.url not in busy]
                if not candidates:
                    raise GatewayError(ErrorKind.OVERLOADED, f"Every upstream server of `{self.model}` is busy; try "
                                                             "again later.", details={"model": self.model})
                usable = [e for e in candidates if self._admits(e, now)]
                if usable:
                    return self._take(min(usable, key=lambda e: (self._load(e, now), e.turn)))
                if now >= deadline:
                    raise self.unavailable()
                reopen = [e.opened_at + self.cooldown for e in candidates if e.state == OPEN]
                self._cond.wait(max(min([deadline, *reopen]) - now, 0.001))

    def unavailable(self) -> GatewayError:
        """The error for a request that found no URL working in time, with each URL's last failure."""
        reasons = "; ".join(f"{e.url}: {e.last_error or e.state}" for e in self.endpoints)
        return GatewayError(ErrorKind.UNAVAILABLE, f"The model `{self.model}` is unavailable: no upstream server "
                                                   f"answered ({reasons}).", code="upstream_unavailable",
                            details={"model": self.model})

    def succeeded(self, endpoint: Endpoint) -> None:
        """The URL answered with its first token: a half-open circuit closes."""
        with self._cond:
            endpoint.state, endpoint.trial, endpoint.last_error = CLOSED, False, None
            self._cond.notify_all()

    def failed(self, endpoint: Endpoint, reason: str) -> None:
        """Refused, 5xx, or a stream that broke: the circuit opens (again) from now."""
        with self._cond:
            endpoint.state, endpoint.trial = OPEN, False
            endpoint.opened_at = self._clock()
            endpoint.last_error = reason
            self._cond.notify_all()

    def throttled(self, endpoint: Endpoint, reason: str) -> None:
        """429 or 503: the URL works but is full; it gets a smaller share for a cool-down."""
        with self._cond:
            endpoint.throttled_until = self._clock() + self.cooldown
            endpoint.last_error = reason
            if endpoint.state == HALF_OPEN:  # it answered: no longer broken, only busy
                endpoint.state, endpoint.trial = CLOSED, False
            self._cond.notify_all()

    def release(self, endpoint: Endpoint) -> None:
        """The request is done with the URL, whatever happened. A trial that ended without a verdict (the
        client's own error, a cancel) lets the next request try."""
        with self._cond:
            endpoint.in_flight -= 1
            endpoint.trial = False
            self._cond.notify_all()

    def probed(self, endpoint: Endpoint, error: str | None) -> None:
        """A health check's result: a failure opens the circuit; a success ends an open circuit's cool-down (the
        next request is its trial)."""
        if error is not None:
            self.failed(endpoint, error)
            return
        with self._cond:
            if endpoint.state == OPEN:
                endpoint.state = HALF_OPEN
                self._cond.notify_all()

    def healthy(self) -> bool:
        """Whether any URL may get a request now (or will after its cool-down, as a trial)."""
        with self._cond:
            return any(e.state != OPEN for e in self.endpoints)

    def in_flight(self) -> int:
        with self._cond:
            return sum(e.in_flight for e in self.endpoints)

    def snapshot(self) -> list[dict]:
        """Each URL as monitors show it: circuit state (closed means healthy), requests in flight, whether its
        share is lowered, and its last error."""
        with self._cond:
            now = self._clock()
            return [{"url": e.url, "state": e.state, "in_flight": e.in_flight,
                     "throttled": e.throttled_until > now, "last_error": e.last_error} for e in self.endpoints]

    # -- internals (under the lock) --------------------------------------------------------------------------

    def _admits(self, endpoint: Endpoint, now: float) -> bool:
        if endpoint.state == OPEN and now >= endpoint.opened_at + self.cooldown:
            endpoint.state = HALF_OPEN
        if endpoint.state == HALF_OPEN:
            return not endpoint.trial
        return endpoint.state == CLOSED

    def _load(self, endpoint: Endpoint, now: float) -> int:
        weight = THROTTLED_WEIGHT if endpoint.throttled_until > now else 1
        return (endpoint.in_flight + 1) * weight

    def _take(self, endpoint: Endpoint) -> Endpoint:
        if endpoint.state == HALF_OPEN:
            endpoint.trial = True
        endpoint.in_flight += 1
        self._turns += 1
        endpoint.turn = self._turns
        return endpoint
