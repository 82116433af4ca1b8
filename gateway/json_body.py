"""A request body as JSON the rest of the gateway can trust: finite numbers, strings that encode as UTF-8, and a
bounded depth. Python's `json` accepts `NaN`, `Infinity` and `1e999` (a float infinity), and lone surrogate
escapes (`"\\ud800"`) become strings that break the first encoder they meet: a tracker record keeping such a model
name made `/api/requests` and `/api/events` fail for as long as it was kept. Each is refused here with a 400,
before any adapter or record sees it."""

from __future__ import annotations

import json
import math
from typing import Any

from gateway.types import invalid


class _Refused(ValueError):
    pass


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _Refused(f"the number {text[:40]} is too large for a 64-bit float")
    return number


def _no_constant(name: str) -> Any:
    raise _Refused(f"{name} is not a number JSON allows")


def parse_body(raw: bytes) -> Any:
    """The parsed body; a 400 naming what is wrong otherwise."""
    try:
        body = json.loads(raw, parse_float=_finite, parse_constant=_no_constant)
    except _Refused as exc:
        raise invalid(f"The request body is not valid JSON: {exc}.") from None
    except RecursionError:
        raise invalid("The request body is not valid JSON: it is nested too deeply.") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid(f"The request body is not valid JSON: {exc}.") from None
    try:
        bad = _lone_surrogate_at(body, "")
    except RecursionError:
        raise invalid("The request body is not valid JSON: it is nested too deeply.") from None
    if bad is not None:
        raise invalid(f"`{bad or 'body'}` holds a lone UTF-16 surrogate (such as \\ud800), which is not text.",
                      bad or None)
    return body


def _lone_surrogate_at(value: Any, path: str) -> str | None:
    """The path of the first string (value or key) that is not encodable as UTF-8, or None."""
    if isinstance(value, str):
        return None if _encodable(value) else path
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if not _encodable(key):
                return path or "body"
            found = _lone_surrogate_at(item, where)
            if found is not None:
                return found
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found = _lone_surrogate_at(item, f"{path}[{i}]")
            if found is not None:
                return found
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False
