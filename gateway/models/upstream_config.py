"""The `upstream` key of a `models:` entry with `backend: upstream`: which OpenAI-compatible servers serve the
model, and how patiently to talk to them.

Validated once when the config is read, so a typo in a URL or a timeout is a startup error that names the key,
never a failed request later. The API key is read from the environment here too (`api_key_env`), so a missing
variable is found at start.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


@dataclass(frozen=True)
class UpstreamConfig:
    """Where an upstream model is served and the timeouts of every call to it (seconds)."""

    urls: tuple[str, ...]  # server roots: http://host:port (a trailing /v1 is dropped; paths are added per call)
    model: str | None = None  # the name the upstream knows it by; None: the entry's own name
    api_key: str | None = None  # sent as `Authorization: Bearer`
    connect_timeout: float = 5.0  # to open a connection
    read_timeout: float = 600.0  # the longest silence while an answer streams (a long prefill included)
    first_byte_timeout: float = 30.0  # to find a URL that answers, failing over and waiting on open circuits
    health_interval: float = 10.0  # between health checks of every URL; 0: none (requests alone decide)
    cooldown: float = 10.0  # an open circuit lets one trial request through after this long


_NUMBERS = ("connect_timeout", "read_timeout", "first_byte_timeout", "health_interval", "cooldown")
_KEYS = ("urls", "url", "model", "api_key", "api_key_env", *_NUMBERS)


def parse_upstream(value: Any, where: str, env: dict[str, str] | None = None) -> UpstreamConfig:
    """`upstream: URL`, `upstream: [URL, ...]`, or a mapping with `urls` (or `url`) and the optional keys above;
    `where` is the entry's place in the config (`models[2].upstream`), named in every error."""
    if isinstance(value, (str, list)):
        value = {"urls": value}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a URL, a list of URLs or a mapping with `urls`, got "
                         f"{type(value).__name__}")
    for key in value:
        if key not in _KEYS:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(_KEYS)})")
    if ("urls" in value) == ("url" in value):
        raise ValueError(f"{where}: give the server addresses as `urls` (a list) or `url`, exactly one of them")
    urls = value["urls"] if "urls" in value else [value["url"]]
    urls = [urls] if isinstance(urls, str) else urls
    if not isinstance(urls, list) or not urls:
        raise ValueError(f"{where}.urls: expected a non-empty list of URLs, got {urls!r}")
    roots = tuple(_root(url, f"{where}.urls[{i}]") for i, url in enumerate(urls))
    if len(set(roots)) != len(roots):
        raise ValueError(f"{where}.urls: a URL is listed twice: {list(roots)}")
    numbers = {key: _seconds(value[key], f"{where}.{key}", zero_ok=key == "health_interval")
               for key in _NUMBERS if key in value}
    return UpstreamConfig(urls=roots, model=_text(value, "model", where), api_key=_api_key(value, where, env),
                          **numbers)


def _root(url: Any, where: str) -> str:
    if not isinstance(url, str):
        raise ValueError(f"{where}: expected a URL string, got {type(url).__name__}")
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{where}: expected an http:// or https:// URL with a host, got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ValueError(f"{where}: a server URL carries no query, fragment or credentials (use api_key), got "
                         f"{url!r}")
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise ValueError(f"{where}: the port of {url!r} is not a number from 0 to 65535") from None
    path = parts.path.rstrip("/").removesuffix("/v1")
    return f"{parts.scheme}://{parts.netloc}{path}"


def _seconds(value: Any, where: str, zero_ok: bool) -> float:
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 0 or (value == 0 and not zero_ok):
        least = "0 or more" if zero_ok else "more than 0"
        raise ValueError(f"{where}: expected a number of seconds, {least}, got {value!r}")
    return float(value)


def _text(value: dict[str, Any], key: str, where: str) -> str | None:
    text = value.get(key)
    if text is not None and (not isinstance(text, str) or not text.strip()):
        raise ValueError(f"{where}.{key}: expected a non-empty string, got {text!r}")
    return text


def _api_key(value: dict[str, Any], where: str, env: dict[str, str] | None) -> str | None:
    if "api_key" in value and "api_key_env" in value:
        raise ValueError(f"{where}: give `api_key` or `api_key_env`, not both")
    name = _text(value, "api_key_env", where)
    if name is None:
        return _text(value, "api_key", where)
    environment = os.environ if env is None else env
    if not environment.get(name):
        raise ValueError(f"{where}.api_key_env: the environment variable {name} is not set")
    return environment[name]
