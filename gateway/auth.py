"""Who may call: one rule for the API routes and the monitor. First the browser guard (`Host`, `Origin`, content
type: see browser_guard.py), then the API key, which comes as `Authorization: Bearer KEY` (OpenAI, vLLM, TGI,
Ollama clients) or `x-api-key: KEY` (Anthropic's SDK) and is compared in constant time."""

from __future__ import annotations

import secrets
from typing import Mapping

from gateway.browser_guard import BrowserGuard
from gateway.keys import KeyPolicy, parse_keys
from gateway.types import ErrorKind, GatewayError


class Access:
    """The checks every request passes before its body is parsed. Keys are strings or `KeyPolicy`s (keys with
    names and limits, gateway/keys.py)."""

    def __init__(self, api_keys: list[str | KeyPolicy], guard: BrowserGuard | None = None):
        self.set_keys(api_keys)
        self.guard = guard or BrowserGuard()

    def set_keys(self, api_keys: list[str | KeyPolicy]) -> None:
        """Replace the keys (a config reload); each list is replaced whole, so a check never sees half of it."""
        self.policies = [k if isinstance(k, KeyPolicy) else parse_keys([k])[0] for k in api_keys]
        self.api_keys = [p.key for p in self.policies]

    def check(self, headers: Mapping[str, str], public: bool = False, has_body: bool = False) -> KeyPolicy | None:
        """`headers` with lower-case names. `public` routes (health, version) need no key, but web pages are held
        to the same rules everywhere. Returns the caller's key (None: no keys are set, or a public route)."""
        self.guard.check(headers, has_body)
        if public or not self.policies:
            return None
        policy = self._policy(headers)
        if policy is None:
            raise GatewayError(ErrorKind.UNAUTHORIZED, "Invalid or missing API key.")
        return policy

    def _policy(self, headers: Mapping[str, str]) -> KeyPolicy | None:
        auth = headers.get("authorization", "")
        key = (auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get("x-api-key", "")).encode()
        found = None
        for policy in self.policies:  # every key is compared, so the time taken says nothing about which matched
            if secrets.compare_digest(key, policy.key.encode()):
                found = policy
        return found
