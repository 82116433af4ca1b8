"""The pause before a crashed runner's successor: none for a single crash, doubling while crashes repeat."""

from __future__ import annotations

import pytest

from gateway.backends.local import MAX_BACKOFF, restart_delay
from gateway.backends.runner_process import exit_reason


@pytest.mark.parametrize(("in_a_row", "expected"),
                         [(0, 0.0), (1, 0.0), (2, 1.0), (3, 2.0), (4, 4.0), (20, MAX_BACKOFF)])
def test_the_pause_doubles_with_each_crash_in_a_row(in_a_row, expected):
    assert restart_delay(in_a_row, last_crash_at=100.0, now=100.0) == expected


def test_time_already_passed_since_the_crash_counts():
    assert restart_delay(4, last_crash_at=100.0, now=103.0) == 1.0
    assert restart_delay(4, last_crash_at=100.0, now=200.0) == 0.0


@pytest.mark.parametrize(("exitcode", "words"), [(-11, "signal SIGSEGV"), (-6, "signal SIGABRT"), (1, "exit status 1"),
                                                (None, "unknown exit")])
def test_an_exit_is_told_in_a_log_lines_words(exitcode, words):
    assert exit_reason(exitcode) == words
