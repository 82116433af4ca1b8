"""Who may call: one rule for the API routes and the monitor. First the browser guard (`Host`, `Origin`, content
type: see browser_guard.py), then the API key, which comes as `Authorization: Bearer KEY` (OpenAI, vLLM, TGI,
Ollama clients) or `x-api-key: KEY` (Anthropic's SDK) and is compared in constant time."""

from __future__ import annotations

import secrets
from typing import Mapping

from gateway.browser_guard import BrowserGuard
from gateway.types import ErrorKind, GatewayError


class Access:
    """The checks every request passes before its body is parsed."""

    def __init__(self, api_keys: list[str], guard: BrowserGuard | None = None):
        self.api_keys = api_keys
        self.guard = guard or BrowserGuard()

    def check(self, headers: Mapping[str, str], public: bool = False, has_body: bool = False) -> None:
        """`headers` with lower-case names. `public` routes (health, version) need no key, but web pages are held
        to the same rules everywhere."""
        self.guard.check(headers, has_body)
        if not public and self.api_keys and not self._key_ok(headers):
            raise GatewayError(ErrorKind.UNAUTHORIZED, "Invalid or missing API key.")

    def _key_ok(self, headers: Mapping[str, str]) -> bool:
        auth = headers.get("authorization", "")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")
        return any(secrets.compare_digest(key.encode(), k.encode()) for k in self.api_keys)
