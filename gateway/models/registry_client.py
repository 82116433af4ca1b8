"""Pulling models from an Ollama-compatible registry into the Ollama store (Ollama's `PullModel`).

The protocol is OCI distribution v2: `GET /v2/<namespace>/<model>/manifests/<tag>`, then one
`GET /v2/<namespace>/<model>/blobs/<digest>` per layer. Each blob streams into `blobs/sha256-<hex>-partial`,
hashed on the way; an interrupted download resumes from the partial file with a `Range` header; a blob is
renamed into place only after its size and sha256 matched; the manifest is written last, so the store never
lists a model whose files are not all there. Progress statuses and error wording follow Ollama's, because
Ollama clients print them. Standard library only; every socket operation has a timeout.
"""

from __future__ import annotations

import fnmatch
import hashlib
import ipaddress
import json
import logging
import shutil
import socket
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path
from typing import Callable

from gateway import __version__
from gateway.models.gguf import GGUFError, read_metadata
from gateway.models.ollama_store import (
    MANIFEST_MEDIA_TYPE,
    MODEL_MEDIA_TYPE,
    ModelName,
    OllamaStore,
    ProgressCallback,
    digest_hex,
    parse_name,
)
from gateway.types import ErrorKind, GatewayError, Progress, invalid

log = logging.getLogger(__name__)

CHUNK = 1 << 20
DISK_RESERVE = 256 << 20  # bytes a pull leaves free on the store's disk
RESUMES = 3  # times one pull resumes a blob whose connection broke off
PROGRESS_BYTES = 64 << 20
"""A layer's progress is reported every 1 % of it, or every 64 MiB when that comes first."""
MAX_MANIFEST_BYTES = 4 << 20
MAX_ERROR_BODY = 500
LOCK_POLL_SECONDS = 0.2

_digest_locks: dict[str, threading.Lock] = {}
_digest_locks_guard = threading.Lock()


@dataclass
class _RemoteLayer:
    media_type: str
    digest: str
    size: int


class RegistryClient:
    """Pulls into one store. `default_registry` (e.g. "http://127.0.0.1:5000") serves names written without a
    host; the model is still stored under the name the client wrote, so `smollm2` pulled from a mirror is
    `smollm2:latest` afterwards. Without a scheme there, or for names with a host, https is used unless the pull
    is `insecure` (Ollama's rule: insecure means plain http)."""

    def __init__(self, store: OllamaStore, default_registry: str | None = None, timeout: float = 30.0,
                 private_networks: bool = False, allowed_hosts: list[str] | None = None):
        self.store = store
        self.default_registry = default_registry.rstrip("/") if default_registry else None
        self.timeout = timeout
        # A name may carry any host, and the API may be called by anyone who may pull: without this opt-in, a
        # pull never reaches loopback, private or link-local addresses (the configured default registry aside).
        self.private_networks = private_networks
        self.allowed_hosts = [h.lower() for h in allowed_hosts or []]  # empty: any host

    def pull(
        self,
        name: str,
        insecure: bool = False,
        on_progress: ProgressCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        """Pull `name`, reporting Ollama's progress statuses; `should_stop()` is polled between chunks and a true
        answer abandons the pull (a partial blob stays for the next try to resume)."""
        ref = parse_name(name)
        if ref is None:
            raise invalid("invalid model name", "model")
        ref = self.store.existing_name(ref)
        base_url = self._base_url(ref, insecure)
        trusted = not ref.host_given and self.default_registry is not None
        host = (urllib.parse.urlsplit(base_url).netloc or "").lower()
        if not trusted and self.allowed_hosts and not any(fnmatch.fnmatchcase(host, h) for h in self.allowed_hosts):
            allowed = ", ".join(self.allowed_hosts)
            raise GatewayError(ErrorKind.FORBIDDEN, f"pull: this server pulls only from {allowed} (`registry_hosts`), "
                                                    f"not from {host}", "model")
        if not (trusted or self.private_networks):
            check_public_host(urllib.parse.urlsplit(base_url).hostname or "", "pull model manifest")
        session = _Session(base_url, ref, self.timeout, should_stop or _never, self.private_networks)
        report = on_progress or _ignore
        previous = self.store.manifest_digests(ref)
        report(Progress(status="pulling manifest"))
        data = session.fetch_manifest()
        layers = _parse_manifest(data, ref)
        self._check_disk(ref, layers)
        fetched: set[str] = set()
        try:
            for layer in _unique(layers):
                if self._fetch_blob(session, layer, report):
                    fetched.add(layer.digest)
        except GatewayError:
            if not session.should_stop():  # a failed pull takes the blobs it brought; a cancelled one keeps them
                self.store.remove_unused_blobs(fetched)
            raise
        report(Progress(status="verifying sha256 digest"))
        session.check_stop()
        self._check_model_layers(ref, layers, fetched)
        report(Progress(status="writing manifest"))
        self.store.write_manifest(ref, data)
        unused = previous - {layer.digest for layer in layers}
        if unused:
            report(Progress(status="removing unused layers"))
            self.store.remove_unused_blobs(unused)
        report(Progress(status="success"))

    def _base_url(self, ref: ModelName, insecure: bool) -> str:
        if ref.scheme == "http" and not insecure:
            raise invalid("insecure protocol http", "insecure")
        scheme = "http" if insecure else "https"
        if ref.host_given or self.default_registry is None:
            return f"{scheme}://{ref.host}"
        if "://" in self.default_registry:
            return self.default_registry
        return f"{scheme}://{self.default_registry}"

    def _check_disk(self, ref: ModelName, layers: list[_RemoteLayer]) -> None:
        """Refuse a pull whose missing blobs do not fit the store's disk (with DISK_RESERVE to spare) before a
        byte is written, rather than filling the disk and failing half-way."""
        needed = 0
        for layer in _unique(layers):
            blob = self.store.blob_path(layer.digest)
            if not blob.is_file():
                partial = blob.with_name(blob.name + "-partial")
                needed += max(0, layer.size - (partial.stat().st_size if partial.is_file() else 0))
        folder = self.store.root
        while not folder.exists() and folder != folder.parent:
            folder = folder.parent
        free = shutil.disk_usage(folder).free
        if needed + DISK_RESERVE > free:
            raise GatewayError(ErrorKind.UNAVAILABLE, f"pull {ref.display}: not enough disk space: the model needs "
                                                      f"{needed / 2**30:.2f} GiB more and {free / 2**30:.2f} GiB "
                                                      "are free", details={"needed": needed, "free": free})

    def _check_model_layers(self, ref: ModelName, layers: list[_RemoteLayer], fetched: set[str]) -> None:
        """A model layer that is not a GGUF file fails the pull before its manifest is written, and the blobs this
        pull brought that nothing else uses go again: the store is left as it was."""
        for layer in layers:
            if layer.media_type != MODEL_MEDIA_TYPE:
                continue
            try:
                read_metadata(self.store.blob_path(layer.digest))
            except GGUFError as exc:
                self.store.remove_unused_blobs(fetched)
                raise invalid(f"pull {ref.display}: the model layer {layer.digest[:19]} is not a usable GGUF file "
                              f"({str(exc).rsplit(': ', 1)[-1]})", "model") from None

    def _fetch_blob(self, session: _Session, layer: _RemoteLayer, report: ProgressCallback) -> bool:
        """Download one blob unless the store has it (True when this call downloaded it); one download per digest
        at a time in this process, so two clients pulling the same model do not write into the same partial
        file."""
        blob = self.store.blob_path(layer.digest)
        lock = _lock_for(layer.digest)
        while not lock.acquire(timeout=LOCK_POLL_SECONDS):
            session.check_stop()
        try:
            if blob.is_file():
                size = blob.stat().st_size
                report(_layer_progress(layer, size, size))
                return False
            _Download(session, layer, blob, report).run()
            return True
        except OSError as err:  # the store's disk, not the network: full, read-only, permissions
            raise GatewayError(ErrorKind.INTERNAL, f"pull {layer.digest}: {err}") from None
        finally:
            lock.release()


class _Session:
    """One pull's HTTP conversation with one registry repository, holding the bearer token once it has one."""

    def __init__(self, base_url: str, ref: ModelName, timeout: float, should_stop: Callable[[], bool],
                 private_networks: bool = False):
        self.base_url = base_url
        self.ref = ref
        self.timeout = timeout
        self.should_stop = should_stop
        self.token: str | None = None
        self.opener = urllib.request.build_opener(_Redirects(base_url, private_networks))

    def check_stop(self) -> None:
        if self.should_stop():
            raise GatewayError(ErrorKind.INTERNAL, "The pull was cancelled.")

    def fetch_manifest(self) -> bytes:
        url = f"{self.base_url}/v2/{self.ref.repository}/manifests/{urllib.parse.quote(self.ref.tag)}"
        what = "pull model manifest"
        with self.open(url, {"Accept": MANIFEST_MEDIA_TYPE}, what) as response:
            try:
                data = response.read(MAX_MANIFEST_BYTES + 1)
            except (OSError, HTTPException) as err:
                raise _network_error(what, err) from None
        if len(data) > MAX_MANIFEST_BYTES:
            raise GatewayError(ErrorKind.INTERNAL, "pull model manifest: the manifest is larger than 4 MiB")
        return data

    def open_blob(self, digest: str, offset: int) -> HTTPResponse:
        headers = {"Range": f"bytes={offset}-"} if offset else {}
        return self.open(f"{self.base_url}/v2/{self.ref.repository}/blobs/{digest}", headers, f"pull {digest}")

    def open(self, url: str, headers: dict[str, str], what: str, authenticate: bool = True) -> HTTPResponse:
        """GET `url`; a 401 with a Bearer challenge is answered once with an anonymous token, as Ollama does.
        Failures become GatewayErrors whose message starts with `what`."""
        try:
            return self.opener.open(self._request(url, headers), timeout=self.timeout)
        except urllib.error.HTTPError as err:
            body = _error_body(err)
            if err.code == 401 and authenticate:
                self.token = self._token(err.headers.get("WWW-Authenticate", ""), what)
                return self.open(url, headers, what, authenticate=False)
            raise _status_error(what, err.code, body) from None
        except (urllib.error.URLError, OSError) as err:
            raise _network_error(what, err) from None

    def _request(self, url: str, headers: dict[str, str]) -> urllib.request.Request:
        request = urllib.request.Request(url, headers={**headers, "User-Agent": f"llm-gateway/{__version__}"})
        if self.token:
            # Unredirected: blob downloads are redirected to storage hosts that must not see the token.
            request.add_unredirected_header("Authorization", f"Bearer {self.token}")
        return request

    def _token(self, challenge: str, what: str) -> str:
        """An anonymous token from the challenge's realm (`Bearer realm="…",service="…",scope="…"`). The realm
        must be on the registry's own host, Ollama's guard against being sent elsewhere."""
        scheme, _, params = challenge.partition(" ")
        values = _challenge_values(params)
        realm = values.get("realm", "")
        if scheme.lower() != "bearer" or not realm:
            raise GatewayError(ErrorKind.INTERNAL, f"{what}: unauthorized: the registry asks for credentials")
        realm_url = urllib.parse.urlsplit(realm)
        registry_host = urllib.parse.urlsplit(self.base_url).netloc
        if realm_url.netloc != registry_host:
            raise GatewayError(ErrorKind.INTERNAL, f'{what}: realm host "{realm_url.netloc}" does not match '
                                                   f'original host "{registry_host}"')
        query = [(k, v) for k in ("service", "scope") for v in values.get(k, "").split(" ") if v]
        separator = "&" if realm_url.query else "?"
        url = realm + (separator + urllib.parse.urlencode(query) if query else "")
        try:
            with self.opener.open(urllib.request.Request(url), timeout=self.timeout) as response:
                doc = json.loads(response.read(MAX_MANIFEST_BYTES))
        except urllib.error.HTTPError as err:
            raise _status_error(f"{what}: token", err.code, _error_body(err)) from None
        except (urllib.error.URLError, OSError, HTTPException, ValueError) as err:
            raise _network_error(f"{what}: token", err) from None
        token = doc.get("token") or doc.get("access_token") if isinstance(doc, dict) else None
        if not isinstance(token, str) or not token:
            raise GatewayError(ErrorKind.INTERNAL, f"{what}: the token endpoint returned no token")
        return token


class _Download:
    """One blob into `<blob>-partial`: resume what is there, hash everything, rename only a verified file."""

    def __init__(self, session: _Session, layer: _RemoteLayer, blob: Path, report: ProgressCallback):
        self.session = session
        self.layer = layer
        self.blob = blob
        self.partial = blob.with_name(blob.name + "-partial")
        self.report = report
        self.hasher = hashlib.sha256()
        self.completed = 0
        self.reported = -1
        self.step = max(1, min(layer.size // 100, PROGRESS_BYTES))

    def run(self) -> None:
        """A pull that fails leaves no partial behind (the store is as it was); only a pull whose client left
        keeps its partial, for the next try to resume."""
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        self._hash_partial()
        try:
            self.partial.touch()
            self._progress(force=True)
            if self.completed < self.layer.size:
                self._receive()
            self._verify()
        except (GatewayError, OSError):
            if not self.session.should_stop():
                self.partial.unlink(missing_ok=True)
            raise
        self.partial.replace(self.blob)

    def _hash_partial(self) -> None:
        """Take over what an earlier, interrupted pull left; a partial longer than the blob is garbage."""
        if not self.partial.is_file():
            return
        if self.partial.stat().st_size > self.layer.size:
            self.partial.unlink()
            return
        with open(self.partial, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                self.hasher.update(chunk)
                self.completed += len(chunk)

    def _receive(self) -> None:
        """Download the rest; a connection that breaks off is resumed with a Range request, RESUMES times."""
        for attempt in range(RESUMES + 1):
            offset = self.completed
            try:
                with self.session.open_blob(self.layer.digest, offset) as response:
                    if offset and not (response.status == 206 and _range_starts_at(response, offset)):
                        self._restart()
                    self._copy(response)
            except GatewayError as err:
                if err.kind is not ErrorKind.UNAVAILABLE or attempt == RESUMES or self.session.should_stop():
                    raise
            if self.completed >= self.layer.size:
                return
            log.info("pull %s: the connection closed after %d of %d bytes; resuming", self.layer.digest,
                     self.completed, self.layer.size)
        raise GatewayError(ErrorKind.UNAVAILABLE, f"pull {self.layer.digest}: the connection closed after "
                                                  f"{self.completed} of {self.layer.size} bytes")

    def _copy(self, response: HTTPResponse) -> None:
        with open(self.partial, "ab") as out:
            while self.completed < self.layer.size:
                self.session.check_stop()
                chunk = self._read(response)
                if not chunk:
                    return
                out.write(chunk)
                self.hasher.update(chunk)
                self.completed += len(chunk)
                self._progress()

    def _read(self, response: HTTPResponse) -> bytes:
        try:
            return response.read(min(CHUNK, self.layer.size - self.completed))
        except (OSError, HTTPException) as err:
            raise _network_error(f"pull {self.layer.digest}", err) from None

    def _restart(self) -> None:
        """The server sent the whole blob (no Range support): drop the partial and take it from the start."""
        self.partial.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()
        self.completed = 0

    def _verify(self) -> None:
        got = f"sha256:{self.hasher.hexdigest()}"
        if got != f"sha256:{digest_hex(self.layer.digest)}":
            self.partial.unlink(missing_ok=True)
            raise GatewayError(ErrorKind.INTERNAL, f"digest mismatch, file must be downloaded again: want "
                                                   f"{self.layer.digest}, got {got}")

    def _progress(self, force: bool = False) -> None:
        due = force or self.completed >= self.layer.size or self.completed - self.reported >= self.step
        if due and self.completed != self.reported:
            self.report(_layer_progress(self.layer, self.layer.size, self.completed))
            self.reported = self.completed


def _parse_manifest(data: bytes, ref: ModelName) -> list[_RemoteLayer]:
    """The layers and config a pulled manifest names, checked before any byte is downloaded: digests must be
    sha256 (they become file names) and a GGUF model layer must be there, or the pull would be useless."""
    try:
        doc = json.loads(data)
    except ValueError:
        raise GatewayError(ErrorKind.INTERNAL, "pull model manifest: the registry sent invalid JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
        raise GatewayError(ErrorKind.INTERNAL, "pull model manifest: the registry sent no image manifest")
    items = list(doc["layers"])
    if isinstance(doc.get("config"), dict) and doc["config"].get("digest"):
        items.append(doc["config"])
    layers = [_remote_layer(item) for item in items]
    if not any(layer.media_type == MODEL_MEDIA_TYPE for layer in layers):
        raise invalid(f"{ref.display} has no GGUF model layer ({MODEL_MEDIA_TYPE}); only GGUF models can be "
                      "pulled", "model")
    return layers


def _remote_layer(item: object) -> _RemoteLayer:
    if not isinstance(item, dict):
        raise GatewayError(ErrorKind.INTERNAL, "pull model manifest: a layer is not an object")
    digest, size, media_type = item.get("digest"), item.get("size"), item.get("mediaType", "")
    try:
        digest_hex(digest)
    except ValueError:
        raise GatewayError(ErrorKind.INTERNAL, f"pull model manifest: invalid digest format: {digest!r}") from None
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise GatewayError(ErrorKind.INTERNAL, f"pull model manifest: layer {digest} has no valid size")
    return _RemoteLayer(str(media_type), digest, size)


def _unique(layers: list[_RemoteLayer]) -> list[_RemoteLayer]:
    seen: dict[str, _RemoteLayer] = {}
    for layer in layers:
        seen.setdefault(layer.digest, layer)
    return list(seen.values())


def _layer_progress(layer: _RemoteLayer, total: int, completed: int) -> Progress:
    """Ollama's per-layer line: `pulling <first 12 hex digits>` with the digest and byte counts."""
    return Progress(status=f"pulling {digest_hex(layer.digest)[:12]}", digest=layer.digest, total=total,
                    completed=completed)


def _range_starts_at(response: HTTPResponse, offset: int) -> bool:
    return response.headers.get("Content-Range", "").startswith(f"bytes {offset}-")


def _challenge_values(params: str) -> dict[str, str]:
    """`realm="a",service="b",scope="c d"` → dict; commas inside quoted values are kept."""
    values: dict[str, str] = {}
    rest = params.strip()
    while rest:
        key, sep, rest = rest.partition("=")
        if not sep:
            break
        if rest.startswith('"'):
            value, _, rest = rest[1:].partition('"')
        else:
            value, _, rest = rest.partition(",")
        values[key.strip().lower()] = value
        rest = rest.lstrip(", ")
    return values


def _status_error(what: str, status: int, body: str) -> GatewayError:
    """Ollama's wording: a 404 is `file does not exist`, anything else `<status>: <message>`, where the message
    is the registry's own error message (OCI `{"errors": [{"message"}]}`) and never an arbitrary body: a pull can
    be pointed at any host, and what that host answers must not be read back through us."""
    if status == 404:
        return GatewayError(ErrorKind.NOT_FOUND, f"{what}: file does not exist", param="model")
    if status == 401:
        return GatewayError(ErrorKind.INTERNAL, f"{what}: unauthorized: access denied")
    kind = ErrorKind.UNAVAILABLE if status >= 500 or status == 429 else ErrorKind.INTERNAL
    message = _registry_message(body)
    return GatewayError(kind, f"{what}: {status}" + (f": {message}" if message else ""))


def _registry_message(body: str) -> str:
    try:
        errors = json.loads(body).get("errors")
        message = errors[0].get("message") or errors[0].get("code")
    except (ValueError, AttributeError, IndexError, TypeError):
        return ""
    if not isinstance(message, str):
        return ""
    return "".join(c for c in message if c.isprintable())[:200]


def check_public_host(host: str, what: str) -> None:
    """Refuse a registry host that is, or resolves to, a loopback, private, link-local or otherwise special
    address (server-side request forgery through /api/pull)."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except (OSError, UnicodeError) as err:
        raise GatewayError(ErrorKind.UNAVAILABLE, f"{what}: {host}: {err}") from None
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global:
            raise GatewayError(ErrorKind.FORBIDDEN, f"{what}: {host} is on a private or local network ({ip}); "
                                                    "`registry_private_networks: true` allows it", "model")


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Redirects go to https only (or to http when the registry itself is plain http, an `insecure` pull), and
    to public hosts only unless private networks are allowed: never file:, ftp: or the cloud metadata address."""

    def __init__(self, base_url: str, private_networks: bool):
        super().__init__()
        self.allowed_schemes = ("https", "http") if base_url.startswith("http://") else ("https",)
        self.base_host = urllib.parse.urlsplit(base_url).hostname
        self.private_networks = private_networks

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        target = urllib.parse.urlsplit(urllib.parse.urljoin(req.full_url, newurl))
        if target.scheme not in self.allowed_schemes:
            raise GatewayError(ErrorKind.INTERNAL, f"the registry redirected to a {target.scheme or 'relative'}: "
                                                   "URL, which a pull does not follow")
        if not self.private_networks and target.hostname != self.base_host:
            check_public_host(target.hostname or "", "redirect")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _network_error(what: str, err: Exception) -> GatewayError:
    """A connection that failed, timed out or broke off: the registry is unavailable, not the request wrong."""
    reason = getattr(err, "reason", None) or err or type(err).__name__
    return GatewayError(ErrorKind.UNAVAILABLE, f"{what}: {reason}")


def _error_body(err: urllib.error.HTTPError) -> str:
    try:
        return err.read(MAX_ERROR_BODY).decode("utf-8", errors="replace").strip()
    except OSError:
        return ""
    finally:
        err.close()


def _lock_for(digest: str) -> threading.Lock:
    with _digest_locks_guard:
        return _digest_locks.setdefault(digest_hex(digest), threading.Lock())


def _never() -> bool:
    return False


def _ignore(_: Progress) -> None:
    """The progress callback when the caller does not want progress."""
