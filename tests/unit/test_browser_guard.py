"""What a web page may do: the Host a request is addressed to, the Origin it comes from, the type of its body."""

from __future__ import annotations

import pytest

from gateway.browser_guard import BrowserGuard
from gateway.config import ConfigError, load_settings
from gateway.types import ErrorKind, GatewayError

JSON = {"content-type": "application/json"}


def refused(guard: BrowserGuard, headers: dict, has_body: bool = False) -> bool:
    try:
        guard.check(headers, has_body)
    except GatewayError as err:
        assert err.kind == ErrorKind.FORBIDDEN
        return True
    return False


@pytest.mark.parametrize("host", ["127.0.0.1:11435", "localhost:11435", "[::1]:11435", "LOCALHOST"])
def test_loopback_hosts_are_served(host):
    assert not refused(BrowserGuard(), {"host": host})


def test_a_rebinding_name_is_refused_unless_allowed():
    assert refused(BrowserGuard(), {"host": "attacker.example:11435"})
    assert not refused(BrowserGuard(allowed_hosts=["*.lan"]), {"host": "box.lan:11435"})
    assert not refused(BrowserGuard(allowed_hosts=["*"]), {"host": "anything:1"})


def test_bound_to_all_interfaces_any_ip_literal_is_served_but_not_a_name():
    guard = BrowserGuard(bound_host="0.0.0.0")
    assert not refused(guard, {"host": "192.168.1.20:11435"})
    assert not refused(guard, {"host": "[fe80::1]:11435"})
    assert refused(guard, {"host": "attacker.example"})


@pytest.mark.parametrize(("origin", "allowed", "ok"), [
    ("http://127.0.0.1:11435", [], True),            # the server's own pages (the dashboard)
    ("http://localhost:3000", [], True),             # a local development page, as Ollama allows
    ("https://evil.example", [], False),
    ("null", [], False),                             # sandboxed frames, file:// pages
    ("https://app.example.com", ["https://app.example.com"], True),
    ("https://x.example.com", ["https://*.example.com"], True),
    ("https://evil.example", ["*"], True),
])
def test_origins(origin, allowed, ok):
    guard = BrowserGuard(allowed_origins=allowed)
    assert refused(guard, {"host": "127.0.0.1:11435", "origin": origin}) is not ok


@pytest.mark.parametrize("content_type", ["text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", None])
def test_a_browser_body_must_force_a_preflight(content_type):
    headers = {"host": "127.0.0.1:11435", "origin": "http://localhost:3000"}
    if content_type:
        headers["content-type"] = content_type
    assert refused(BrowserGuard(), headers, has_body=True)
    assert not refused(BrowserGuard(), {**headers, **JSON}, has_body=True)


def test_without_an_origin_a_simple_body_is_served_as_ollama_does():
    """curl -d '{...}' sends a form content type; only browsers send an Origin, and only they are at risk."""
    assert not refused(BrowserGuard(), {"host": "127.0.0.1:11435",
                                        "content-type": "application/x-www-form-urlencoded"}, has_body=True)


@pytest.mark.parametrize("env", [{"GATEWAY_API_KEYS": ""}, {"GATEWAY_API_KEYS": '["k", " "]'}])
def test_an_empty_api_key_is_a_config_error(env):
    with pytest.raises(ConfigError, match="empty key"):
        load_settings(env=env)
