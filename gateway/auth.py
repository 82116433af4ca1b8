"""Who may call: one rule for the API routes and the monitor. First the browser guard (`Host`, `Origin`, content
type: see browser_guard.py), then the API key, which comes as `Authorization: Bearer KEY` (OpenAI, vLLM, TGI,
Ollama clients) or `x-api-key: KEY` (Anthropic's SDK) and is compared in constant time."""

from __future__ import annotations

import secrets
from typing import Mapping

from gateway.browser_guard import BrowserGuard
from gateway.types import ErrorKind, GatewayError


def presented_key(headers: Mapping[str, str]) -> str:
    """The key a request carries; `headers` may be Flask's (any case) or a dict with lower-case names."""
    auth = headers.get("authorization") or headers.get("Authorization") or ""
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return headers.get("x-api-key") or headers.get("X-Api-Key") or ""


def key_ok(headers: Mapping[str, str], api_keys: list[str]) -> bool:
    """True when no keys are configured or the request carries one of them."""
    if not api_keys:
        return True
    key = presented_key(headers)
    return any(secrets.compare_digest(key.encode(), k.encode()) for k in api_keys)


def require_key(headers: Mapping[str, str], api_keys: list[str]) -> None:
    if not key_ok(headers, api_keys):
        raise GatewayError(ErrorKind.UNAUTHORIZED, "Invalid or missing API key.")


class Access:
    """The checks every request passes before its body is parsed."""

    def __init__(self, api_keys: list[str], guard: BrowserGuard | None = None):
        self.api_keys = api_keys
        self.guard = guard or BrowserGuard()

    def check(self, headers: Mapping[str, str], public: bool = False, has_body: bool = False) -> None:
        """`headers` with lower-case names. `public` routes (health, version) need no key, but web pages are held
        to the same rules everywhere."""
        self.guard.check(headers, has_body)
        if not public:
            require_key(headers, self.api_keys)
