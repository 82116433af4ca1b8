"""What a web page may do with this server. The gateway listens on a port every page in the user's browser can
reach, so without a guard any site could POST to it (store changes, unloads) and, by DNS rebinding (a name of
the attacker's that resolves to 127.0.0.1), read its answers too. Three rules, after Ollama's `OLLAMA_ORIGINS`:

- `Host` must be a name this server answers to: loopback, the bound address, any IP literal when bound to all
  interfaces, or one of `allowed_hosts`. A rebinding page sends its own name and is refused.
- A request with an `Origin` (browsers send one on every cross-origin request and on every POST) is served only
  from its own origin, a loopback origin, or one of `allowed_origins` (globs allowed, `*` for any).
- A browser request with a body must say `application/json` (or another type that forces a CORS preflight):
  `text/plain`, form types and no type at all need no preflight. Requests without `Origin` (curl, SDKs) keep
  Ollama's leniency, so `curl -d '{...}'` works as Ollama's documentation shows.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Mapping
from urllib.parse import urlsplit

from gateway.types import ErrorKind, GatewayError

LOOPBACK = ("localhost", "127.0.0.1", "::1")
ALL_INTERFACES = ("0.0.0.0", "::", "")
SIMPLE_TYPES = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "")


@dataclass
class BrowserGuard:
    bound_host: str = "127.0.0.1"
    allowed_hosts: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)

    def check(self, headers: Mapping[str, str], has_body: bool = False) -> None:
        """Raise FORBIDDEN for a request a web page must not make; `headers` has lower-case names."""
        host_header = headers.get("host", "")
        host = _hostname(host_header)
        if not self._host_ok(host):
            raise GatewayError(ErrorKind.FORBIDDEN, f"This server does not answer to the host name `{host[:100]}`; "
                                                    "add it to `allowed_hosts` to allow it.")
        origin = headers.get("origin")
        if origin is None:
            return
        if not self._origin_ok(origin, host_header):
            raise GatewayError(ErrorKind.FORBIDDEN, f"Requests from web pages at `{origin[:100]}` are not allowed; "
                                                    "add the origin to `allowed_origins` to allow them.")
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if has_body and content_type in SIMPLE_TYPES:
            raise GatewayError(ErrorKind.FORBIDDEN, "A request from a web page must send its JSON body as "
                                                    "`Content-Type: application/json`.")

    def _host_ok(self, host: str) -> bool:
        if host in LOOPBACK or host == self.bound_host.lower() or "*" in self.allowed_hosts:
            return True
        if any(fnmatchcase(host, pattern.lower()) for pattern in self.allowed_hosts):
            return True
        return self.bound_host in ALL_INTERFACES and _is_ip(host)

    def _origin_ok(self, origin: str, host_header: str) -> bool:
        parts = urlsplit(origin.strip())
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return any(fnmatchcase(origin, pattern) for pattern in self.allowed_origins)  # "null", app://...
        if parts.netloc.lower() == host_header.lower() or (parts.hostname or "") in LOOPBACK:
            return True
        return any(fnmatchcase(origin, pattern) for pattern in self.allowed_origins)


def _hostname(host_header: str) -> str:
    """`example.com:8080` → `example.com`; `[::1]:11435` → `::1`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False
