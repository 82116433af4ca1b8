"""API keys with limits: each key may have a name, a cap on requests in flight, on requests and on tokens per
minute, and the models it may use.

A key is configured as a plain string (no limits; its name is `key-1`, `key-2`... by position) or a mapping
`{key, name, max_concurrent, requests_per_minute, tokens_per_minute, models}` in `api_keys` or in the YAML list
of `api_keys_file`. Limits are checked when a request arrives: a key over one gets its family's 429 with
`Retry-After` (seconds until the window lets it in again). Tokens (prompt and generated) are counted when a
request finishes, so one long request may overrun the minute's budget, and the next ones wait for it. Logs and
metrics name a key by its `name`, never by the key itself.
"""

from __future__ import annotations

import fnmatch
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from gateway.types import ErrorKind, GatewayError

WINDOW = 60.0  # seconds: the "minute" of the per-minute limits
LIMIT_FIELDS = ("max_concurrent", "requests_per_minute", "tokens_per_minute")


@dataclass(frozen=True)
class KeyPolicy:
    key: str
    name: str
    max_concurrent: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    models: tuple[str, ...] = ()  # globs of the model names it may ask for; empty: any

    def allows_model(self, model: str) -> bool:
        return not self.models or any(fnmatch.fnmatchcase(model, pattern) for pattern in self.models)


def parse_keys(entries: list[Any], where: str = "api_keys") -> list[KeyPolicy]:
    """ValueError naming the entry and field for anything malformed; an empty key is one (it would let anyone
    in)."""
    policies = []
    for i, entry in enumerate(entries):
        place = f"{where}[{i}]"
        if isinstance(entry, str):
            entry = {"key": entry}
        if not isinstance(entry, dict):
            raise ValueError(f"{place}: expected a key or a mapping with `key`, got {type(entry).__name__}")
        unknown = set(entry) - {"key", "name", "models", *LIMIT_FIELDS}
        if unknown:
            raise ValueError(f"{place}: unknown field(s) {', '.join(sorted(unknown))}")
        key, name = entry.get("key"), entry.get("name", f"key-{i + 1}")
        if not isinstance(key, str) or not key.strip():
            raise ValueError(f"{place}.key: an empty key would let every request in")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{place}.name: expected a non-empty string")
        for field in LIMIT_FIELDS:
            value = entry.get(field)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{place}.{field}: expected a positive integer, got {value!r}")
        models = entry.get("models", [])
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            raise ValueError(f"{place}.models: expected a list of model names or globs")
        policies.append(KeyPolicy(key, name, *(entry.get(f) for f in LIMIT_FIELDS), tuple(models)))
    names = [p.name for p in policies]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: two keys have the same name")
    return policies


class KeyLimits:
    """Each key's requests in flight and its requests and tokens of the last minute."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._requests: dict[str, deque[float]] = {}
        self._tokens: dict[str, deque[tuple[float, int]]] = {}

    def admit(self, policy: KeyPolicy | None, model: str) -> Callable[[], None]:
        """Count a request against its key, or refuse it; returns what ends its time in flight (call once)."""
        if policy is None:
            return _nothing
        if model and not policy.allows_model(model):
            raise GatewayError(ErrorKind.FORBIDDEN, f"This API key ({policy.name}) may not use the model "
                                                    f"`{model}`.", "model")
        now = self._clock()
        with self._lock:
            requests = _recent(self._requests.setdefault(policy.name, deque()), now)
            tokens = _recent(self._tokens.setdefault(policy.name, deque()), now)
            in_flight = self._in_flight.get(policy.name, 0)
            if policy.max_concurrent is not None and in_flight >= policy.max_concurrent:
                raise _limited(policy, f"{in_flight} requests in flight (max_concurrent {policy.max_concurrent})",
                               1.0)
            if policy.requests_per_minute is not None and len(requests) >= policy.requests_per_minute:
                raise _limited(policy, f"{len(requests)} requests in the last minute (requests_per_minute "
                                       f"{policy.requests_per_minute})", requests[0] + WINDOW - now)
            used = sum(n for _, n in tokens)
            if policy.tokens_per_minute is not None and used >= policy.tokens_per_minute:
                raise _limited(policy, f"{used} tokens in the last minute (tokens_per_minute "
                                       f"{policy.tokens_per_minute})", tokens[0][0] + WINDOW - now)
            requests.append(now)
            self._in_flight[policy.name] = in_flight + 1
        return _Release(self, policy.name)

    def add_tokens(self, name: str, count: int) -> None:
        if count > 0:
            with self._lock:
                self._tokens.setdefault(name, deque()).append((self._clock(), count))

    def _release(self, name: str) -> None:
        with self._lock:
            self._in_flight[name] -= 1


class _Release:
    def __init__(self, limits: KeyLimits, name: str):
        self._limits: KeyLimits | None = limits
        self._name = name

    def __call__(self) -> None:
        limits, self._limits = self._limits, None
        if limits is not None:
            limits._release(self._name)


def _nothing() -> None:
    return None


def _recent(events: deque, now: float) -> deque:
    """Drop what left the window; entries are timestamps or (timestamp, count)."""
    while events and (events[0] if isinstance(events[0], float) else events[0][0]) <= now - WINDOW:
        events.popleft()
    return events


def _limited(policy: KeyPolicy, what: str, retry_after: float) -> GatewayError:
    wait = max(1, math.ceil(retry_after))
    return GatewayError(ErrorKind.RATE_LIMITED, f"Rate limit of the API key {policy.name}: {what}; retry in "
                                                f"{wait} s.", details={"retry_after": wait, "key": policy.name})
