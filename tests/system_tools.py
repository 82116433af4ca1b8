"""Tests that drive system tools (a registry, a browser, Claude Code) need them installed. `.ci/run` installs
every one, so in CI a missing tool is a failure, never a silent skip; elsewhere the test skips and says what to
install."""

from __future__ import annotations

import os

import pytest


def require_tool(available: object, reason: str) -> None:
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; .ci/run installs it, so CI must have it")
    pytest.skip(reason)
