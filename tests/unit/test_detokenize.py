from __future__ import annotations

import pytest

from gateway.engine.detokenize import TextStream
from gateway.markers import partial_marker_len


@pytest.mark.parametrize("text, stops, expected", [
    ("hello wor", ["world"], 3),
    ("hello", ["world"], 0),
    ("abc<", ["<|end|>", "<x"], 1),
    ("abc<|en", ["<|end|>"], 4),
    ("", ["x"], 0),
    ("worl", ["world", "orlando"], 4),
])
def test_partial_marker_len(text, stops, expected):
    assert partial_marker_len(text, stops) == expected


def feed(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.push(p) for p in pieces]


def test_without_stops_text_passes_through():
    s = TextStream()
    assert feed(s, [b"Hel", b"lo"]) == ["Hel", "lo"]
    assert s.flush() == ""


def test_a_split_utf8_character_is_held_until_complete():
    euro = "€".encode()
    s = TextStream()
    assert feed(s, [b"a" + euro[:1], euro[1:2], euro[2:] + b"b"]) == ["a", "", "€b"]


def test_a_stop_string_across_tokens_is_matched_and_never_released():
    s = TextStream(["STOP"])
    out = feed(s, [b"one ", b"ST", b"O", b"P two"])
    assert "".join(out) == "one "
    assert out[1] == ""  # "ST" held: it may grow into the stop string
    assert s.matched_stop == "STOP"
    assert s.flush() == ""


def test_held_text_that_does_not_become_a_stop_is_released():
    s = TextStream(["STOP"])
    assert feed(s, [b"ST", b"ay"]) == ["", "STay"]


def test_the_earliest_of_several_stops_wins():
    s = TextStream(["b", "a"])
    assert s.push(b"xxab") == "xx"
    assert s.matched_stop == "a"


def test_flush_releases_a_held_partial_stop_at_the_end():
    s = TextStream(["world"])
    assert s.push(b"hello wor") == "hello "
    assert s.flush() == "wor"
