"""API keys with limits: parsing and the per-key counters, on a clock the test moves."""

from __future__ import annotations

import pytest

from gateway.keys import KeyLimits, parse_keys
from gateway.types import ErrorKind, GatewayError


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("entries", "message"), [
    ([""], r"api_keys\[0\].key: an empty key"),
    ([{"name": "x"}], r"api_keys\[0\].key"),
    ([{"key": "k", "requests_per_minute": 0}], r"requests_per_minute: expected a positive integer"),
    ([{"key": "k", "max_concurrent": True}], r"max_concurrent: expected a positive integer"),
    ([{"key": "k", "models": "smollm2"}], r"models: expected a list"),
    ([{"key": "k", "colour": "red"}], r"unknown field\(s\) colour"),
    ([{"key": "a", "name": "n"}, {"key": "b", "name": "n"}], "same name"),
    ([3], r"api_keys\[0\]: expected a key or a mapping"),
])
def test_malformed_keys_are_named(entries, message):
    with pytest.raises(ValueError, match=message):
        parse_keys(entries)


def test_plain_keys_get_names_by_position_and_no_limits():
    first, second = parse_keys(["aaa", {"key": "bbb", "name": "ci"}])
    assert (first.name, second.name, first.requests_per_minute, first.models) == ("key-1", "ci", None, ())


def test_requests_per_minute_with_retry_after_until_the_oldest_leaves_the_window():
    clock = Clock()
    limits = KeyLimits(clock)
    [policy] = parse_keys([{"key": "k", "name": "alice", "requests_per_minute": 2}])
    for _ in range(2):
        limits.admit(policy, "m")()
        clock.now += 10
    with pytest.raises(GatewayError) as info:
        limits.admit(policy, "m")
    assert info.value.kind is ErrorKind.RATE_LIMITED and info.value.details["retry_after"] == 40
    assert "alice" in info.value.message and "k" not in info.value.details.values()
    clock.now += 40
    limits.admit(policy, "m")()


def test_max_concurrent_counts_requests_in_flight_until_released():
    limits = KeyLimits(Clock())
    [policy] = parse_keys([{"key": "k", "max_concurrent": 1}])
    release = limits.admit(policy, "m")
    with pytest.raises(GatewayError, match="max_concurrent 1"):
        limits.admit(policy, "m")
    release()
    release()  # a second call changes nothing
    limits.admit(policy, "m")
    with pytest.raises(GatewayError):
        limits.admit(policy, "m")


def test_tokens_per_minute_refuse_once_the_minute_is_spent():
    clock = Clock()
    limits = KeyLimits(clock)
    [policy] = parse_keys([{"key": "k", "name": "bob", "tokens_per_minute": 100}])
    limits.admit(policy, "m")()
    limits.add_tokens("bob", 120)
    with pytest.raises(GatewayError, match="120 tokens"):
        limits.admit(policy, "m")
    clock.now += 61
    limits.admit(policy, "m")()


def test_models_a_key_may_use_are_globs():
    [policy] = parse_keys([{"key": "k", "models": ["smollm2*", "gpt-4o-mini"]}])
    limits = KeyLimits(Clock())
    limits.admit(policy, "smollm2-135m-instruct")()
    limits.admit(policy, "gpt-4o-mini")()
    with pytest.raises(GatewayError) as info:
        limits.admit(policy, "gemma")
    assert info.value.kind is ErrorKind.FORBIDDEN and info.value.param == "model"
