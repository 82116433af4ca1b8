"""What a request body may hold: finite numbers, UTF-8 text, bounded depth; and keep_alive durations that every
thread can wait on."""

from __future__ import annotations

import math

import pytest

from gateway.json_body import parse_body
from gateway.types import MAX_DURATION, GatewayError, parse_duration


@pytest.mark.parametrize(("raw", "words"), [
    (b'{"t": NaN}', "NaN is not a number"), (b'{"t": -Infinity}', "-Infinity is not a number"),
    (b'{"t": 1e400}', "too large"), (b'[' * 50_000 + b']' * 50_000, "nested too deeply"),
    (b'{"m": "\\ud800"}', "`m` holds a lone UTF-16 surrogate"),
    (b'{"a": [{"b": "x\\udc00y"}]}', "`a[0].b` holds a lone"),
    (b'{"\\udfff": 1}', "`body` holds a lone"),
    (b'{"t": 1', "not valid JSON"),
])
def test_refused_bodies_name_what_is_wrong(raw, words):
    with pytest.raises(GatewayError) as info:
        parse_body(raw)
    assert words in info.value.message
    info.value.message.encode("utf-8")  # the message itself can always be sent


def test_paired_surrogates_and_big_integers_are_fine():
    assert parse_body(b'{"e": "\\ud83d\\ude00", "n": 123456789012345678901234567890, "f": 1.5e300}') == {
        "e": "😀", "n": 123456789012345678901234567890, "f": 1.5e300}


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_duration_must_be_finite(value):
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize("value", [1e12, "99999999999h", 2**70])
def test_a_duration_longer_than_gos_largest_is_clamped(value):
    assert parse_duration(value) == MAX_DURATION


@pytest.mark.parametrize("value", [-1, -1e300, "-5m"])
def test_any_finite_negative_still_means_forever(value):
    assert parse_duration(value) == -1.0
