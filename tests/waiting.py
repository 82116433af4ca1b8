"""The one wait for a state the test cannot be told about directly (a process gone, a log line, a reload
applied): poll until `check()` is truthy. The ceiling is only for a wedged machine, never a speed claim; past
it the test fails with what it was waiting for."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest

CEILING = 120.0  # seconds


def wait_for(check: Callable[[], Any], what: str, timeout: float = CEILING, interval: float = 0.05) -> Any:
    """`check()`'s first truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"still waiting for {what} after {timeout:.0f} s")
        time.sleep(interval)
