"""Pulling from a registry: against a small OCI registry served in-process (http.server on a free loopback port),
and against Debian's real `docker-registry` when it is installed."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

from gateway.models import registry_client
from gateway.models.ollama_store import OllamaStore
from gateway.models.registry_client import RegistryClient
from gateway.types import ErrorKind, GatewayError, Progress
from tests.registry_fixture import NOT_INSTALLED, DockerRegistry, docker_registry_binary, push_ollama_model
from tests.system_tools import require_tool
from tests.unit.ollama_fixtures import MEDIA, digest_of, gguf_bytes, tiny_gguf

CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"


class FakeRegistry:
    """Serves manifests and blobs the way Ollama's registry does; can require a bearer token, ignore Range,
    drop the connection part-way through a blob once, and records every request."""

    def __init__(self) -> None:
        self.manifests: dict[str, bytes] = {}
        self.blobs: dict[str, bytes] = {}
        self.cut_after: dict[str, int] = {}
        self.cut_every: dict[str, int] = {}  # digest → bytes after which every response for it breaks off
        self.redirects: dict[str, str] = {}  # digest → where its blob request is redirected
        self.manifest_status: tuple[int, bytes] | None = None  # answer every manifest request with this
        self.ignore_range = False
        self.token: str | None = None
        self.realm: str | None = None
        self.challenge: str | None = None
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.02,), daemon=True)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def add_model(self, name: str, layers: list[tuple[str, bytes]]) -> bytes:
        """Publish `namespace/model:tag` with `(kind, data)` layers plus a config blob; returns the manifest."""
        config = json.dumps({"model_format": "gguf", "model_family": "llama"}).encode()
        manifest = {
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": CONFIG_MEDIA_TYPE, **self._blob(config)},
            "layers": [{"mediaType": MEDIA + kind, **self._blob(data)} for kind, data in layers],
        }
        data = json.dumps(manifest, indent=1).encode()
        self.manifests[name] = data
        return data

    def blob_requests(self) -> list[dict[str, str]]:
        return [headers for path, headers in self.requests if "/blobs/" in path]

    def _blob(self, data: bytes) -> dict[str, Any]:
        digest = digest_of(data)
        self.blobs[digest] = data
        return {"digest": digest, "size": len(data)}


def _handler_for(registry: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            registry.requests.append((self.path, dict(self.headers)))
            url = urllib.parse.urlsplit(self.path)
            if url.path == "/token":
                self._token(urllib.parse.parse_qs(url.query))
            elif registry.token and self.headers.get("Authorization") != f"Bearer {registry.token}":
                realm = registry.realm or f"http://{registry.host}/token"
                challenge = registry.challenge or (
                    f'Bearer realm="{realm}",service="registry.test",scope="repository:library/tiny:pull"')
                self._send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {"WWW-Authenticate": challenge})
            elif "/manifests/" in url.path and registry.manifest_status is not None:
                self._send(*registry.manifest_status)
            elif "/blobs/" in url.path and url.path.rsplit("/", 1)[-1] in registry.redirects:
                self._send(302, b"", {"Location": registry.redirects[url.path.rsplit("/", 1)[-1]]})
            elif "/manifests/" in url.path:
                repository, _, tag = url.path.removeprefix("/v2/").partition("/manifests/")
                data = registry.manifests.get(f"{repository}:{tag}")
                self._send(200, data) if data is not None else self._send(404, b'{"errors":[]}')
            elif "/blobs/" in url.path:
                self._blob(url.path.rsplit("/", 1)[-1])
            else:
                self._send(404, b"")

        def _token(self, query: dict[str, list[str]]) -> None:
            if query.get("service") == ["registry.test"] and query.get("scope") == ["repository:library/tiny:pull"]:
                self._send(200, json.dumps({"token": registry.token}).encode())
            else:
                self._send(403, b"bad token request")

        def _blob(self, digest: str) -> None:
            data = registry.blobs.get(digest)
            if data is None:
                self._send(404, b"")
                return
            start = 0
            if self.headers.get("Range") and not registry.ignore_range:
                start = int(self.headers["Range"].removeprefix("bytes=").rstrip("-"))
            body = data[start:]
            headers = {"Content-Length": str(len(body))}
            if start:
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            cut = registry.cut_after.pop(digest, None) or registry.cut_every.get(digest)
            self._send(206 if start else 200, body if cut is None else body[:cut], headers)

        def _send(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            headers = {"Content-Length": str(len(body)), **(headers or {})}
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def registry() -> Iterator[FakeRegistry]:
    fake = FakeRegistry()
    fake.thread.start()
    yield fake
    fake.server.shutdown()
    fake.server.server_close()


@pytest.fixture
def store(tmp_path: Path) -> OllamaStore:
    return OllamaStore(tmp_path / "models")


@pytest.fixture
def client(store: OllamaStore, registry: FakeRegistry) -> RegistryClient:
    return RegistryClient(store, default_registry=registry.url, timeout=5)


GGUF = gguf_bytes(padding=300_000)
TEMPLATE = b"{{ .Prompt }}"
PARAMS = json.dumps({"stop": ["<end>"]}).encode()


def publish_tiny(registry: FakeRegistry, template: bytes = TEMPLATE) -> bytes:
    return registry.add_model("library/tiny:latest", [("model", GGUF), ("template", template), ("params", PARAMS)])


def pull(client: RegistryClient, name: str = "tiny", **kwargs: Any) -> list[Progress]:
    events: list[Progress] = []
    client.pull(name, on_progress=events.append, **kwargs)
    return events


def blob_files(store: OllamaStore) -> list[str]:
    return sorted(p.name for p in store.blobs_dir.iterdir()) if store.blobs_dir.exists() else []


def test_a_full_pull_stores_every_blob_and_the_manifest_last(client, store, registry):
    manifest = publish_tiny(registry)
    events = pull(client)
    [model] = store.models()
    assert model.name == "tiny:latest"
    assert model.model_path.read_bytes() == GGUF
    assert (model.template, model.parameters) == ("{{ .Prompt }}", {"stop": ["<end>"]})
    assert model.manifest_path.read_bytes() == manifest
    assert not [name for name in blob_files(store) if not name.startswith("sha256-") or "partial" in name]
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    digests = [layer["digest"] for layer in json.loads(manifest)["layers"]] + [json.loads(manifest)["config"]["digest"]]
    assert list(dict.fromkeys(e.digest for e in events if e.digest)) == digests
    for event in events[1:-3]:
        assert event.status == f"pulling {event.digest[7:19]}"
        assert event.total == len(registry.blobs[event.digest])
    finals = {e.digest: e.completed for e in events if e.digest}
    assert all(finals[d] == len(registry.blobs[d]) for d in digests)
    assert [path for path, _ in registry.requests][0] == "/v2/library/tiny/manifests/latest"
    assert registry.requests[0][1]["Accept"] == "application/vnd.docker.distribution.manifest.v2+json"


def test_layer_progress_is_throttled_to_one_percent_steps(client, registry, monkeypatch):
    monkeypatch.setattr(registry_client, "CHUNK", 100)
    publish_tiny(registry)
    model_digest = digest_of(GGUF)
    completed = [e.completed for e in pull(client) if e.digest == model_digest]
    assert completed[0] == 0 and completed[-1] == len(GGUF)
    steps = [b - a for a, b in zip(completed, completed[1:], strict=False)]
    assert min(steps[:-1]) >= len(GGUF) // 100
    assert 90 <= len(completed) <= 102


def test_a_second_pull_uses_the_blobs_it_has(client, store, registry):
    publish_tiny(registry)
    pull(client)
    registry.requests.clear()
    events = pull(client)
    assert registry.blob_requests() == []
    assert all(e.completed == e.total for e in events if e.digest)
    assert events[-1].status == "success"


def test_a_connection_that_breaks_off_is_resumed_with_a_range_request_in_the_same_pull(client, store, registry):
    publish_tiny(registry)
    registry.cut_after[digest_of(GGUF)] = 100_000
    events = pull(client)
    ranges = [headers.get("Range") for headers in registry.blob_requests()]
    assert "bytes=100000-" in ranges
    model_events = [e.completed for e in events if e.digest == digest_of(GGUF)]
    assert 100_000 in model_events and model_events[-1] == len(GGUF)
    assert store.find("tiny").model_path.read_bytes() == GGUF
    assert not [name for name in blob_files(store) if "partial" in name]


def test_a_server_that_ignores_range_gets_a_fresh_download(client, store, registry):
    publish_tiny(registry)
    registry.cut_after[digest_of(GGUF)] = 5_000
    registry.ignore_range = True
    pull(client)
    assert store.find("tiny").model_path.read_bytes() == GGUF


def test_a_registry_that_keeps_dropping_the_connection_leaves_the_store_as_it_was(client, store, registry):
    publish_tiny(registry)
    pull(client)
    before = sorted(p.relative_to(store.root) for p in store.root.rglob("*"))
    registry.add_model("library/other:latest", [("system", b"other"), ("model", gguf_bytes(padding=400_000))])
    other = digest_of(gguf_bytes(padding=400_000))
    registry.cut_every[other] = 1_000  # its small blobs arrive whole, the model never does: all of it goes
    with pytest.raises(GatewayError, match="connection closed after") as caught:
        pull(client, "other")
    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert len([h for h in registry.blob_requests() if h.get("Range")]) == registry_client.RESUMES
    assert sorted(p.relative_to(store.root) for p in store.root.rglob("*")) == before


def test_a_disk_that_fills_during_a_pull_leaves_the_store_as_it_was(store, registry, tmp_path):
    """Fault injection with the kernel's own limit: the pulling process may not write files past 200 kB
    (RLIMIT_FSIZE), so the blob's write fails half-way with EFBIG, as on a full disk."""
    publish_tiny(registry)
    script = textwrap.dedent(f"""
        import resource, signal, sys
        from gateway.models.ollama_store import OllamaStore
        from gateway.models.registry_client import RegistryClient
        from gateway.types import GatewayError
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
        try:
            RegistryClient(OllamaStore({str(store.root)!r}), default_registry={registry.url!r}, timeout=5).pull("tiny")
        except GatewayError as err:
            print(err.message)
            sys.exit(3)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 3, done.stderr
    assert "File too large" in done.stdout
    assert store.models() == [] and blob_files(store) == []


def test_a_partial_longer_than_the_blob_is_discarded(client, store, registry):
    publish_tiny(registry)
    blob = store.blob_path(digest_of(GGUF))
    blob.parent.mkdir(parents=True)
    blob.with_name(blob.name + "-partial").write_bytes(b"x" * (len(GGUF) + 1))
    pull(client)
    assert blob.read_bytes() == GGUF


def test_a_blob_whose_digest_does_not_match_is_refused(client, store, registry):
    publish_tiny(registry)
    digest = digest_of(GGUF)
    registry.blobs[digest] = b"X" + GGUF[1:]
    with pytest.raises(GatewayError) as caught:
        pull(client)
    assert caught.value.kind is ErrorKind.INTERNAL
    assert caught.value.message.startswith(f"digest mismatch, file must be downloaded again: want {digest}, got ")
    assert not store.blob_path(digest).exists()
    assert not [name for name in blob_files(store) if digest[7:] in name]
    assert store.models() == []


def test_a_missing_model_is_not_found_in_ollamas_words(client, store):
    with pytest.raises(GatewayError) as caught:
        pull(client, "absent")
    assert caught.value.kind is ErrorKind.NOT_FOUND
    assert caught.value.message == "pull model manifest: file does not exist"
    assert store.models() == []


def test_a_missing_blob_fails_the_pull_without_a_manifest(client, store, registry):
    publish_tiny(registry)
    del registry.blobs[digest_of(TEMPLATE)]
    with pytest.raises(GatewayError, match="file does not exist"):
        pull(client)
    assert store.models() == []


def test_a_bearer_challenge_is_answered_with_an_anonymous_token(client, store, registry):
    publish_tiny(registry)
    registry.token = "secret-token"
    pull(client)
    assert store.find("tiny").model_path.read_bytes() == GGUF
    token_requests = [path for path, _ in registry.requests if path.startswith("/token")]
    assert len(token_requests) == 1
    assert all(headers.get("Authorization") == "Bearer secret-token" for headers in registry.blob_requests())


def test_a_realm_on_another_host_is_refused(client, registry):
    publish_tiny(registry)
    registry.token = "secret-token"
    registry.realm = "http://127.0.0.2:1/token"
    with pytest.raises(GatewayError, match='realm host "127.0.0.2:1" does not match original host'):
        pull(client)


def test_a_refused_token_request_fails_clearly(client, registry):
    publish_tiny(registry)
    registry.token = "secret-token"
    registry.realm = f"{registry.url}/token?service=other"
    with pytest.raises(GatewayError, match="pull model manifest: token: 403") as info:
        pull(client)
    assert "bad token request" not in info.value.message  # a registry's own words are not read back


def test_a_registry_that_wants_credentials_is_refused_clearly(store, registry):
    publish_tiny(registry)
    registry.token = "secret-token"
    registry.challenge = 'Basic realm="registry"'
    client = RegistryClient(store, default_registry=registry.url, timeout=5)
    with pytest.raises(GatewayError, match="pull model manifest: unauthorized: the registry asks for credentials"):
        pull(client)


def test_should_stop_abandons_the_download_and_keeps_the_partial(client, store, registry, monkeypatch):
    monkeypatch.setattr(registry_client, "CHUNK", 10_000)
    publish_tiny(registry)
    events: list[Progress] = []
    with pytest.raises(GatewayError, match="cancelled"):
        client.pull("tiny", on_progress=events.append, should_stop=lambda: len(events) > 5)
    blob = store.blob_path(digest_of(GGUF))
    assert not blob.exists()
    assert 0 < blob.with_name(blob.name + "-partial").stat().st_size < len(GGUF)
    assert store.models() == []


def test_names_with_a_host_go_to_that_host_and_keep_their_name(store, registry):
    publish_tiny(registry)
    RegistryClient(store, timeout=5, private_networks=True).pull(f"{registry.host}/library/tiny", insecure=True)
    assert [m.name for m in store.models()] == [f"{registry.host}/library/tiny:latest"]


def test_an_http_name_needs_insecure(store, registry):
    with pytest.raises(GatewayError, match="insecure protocol http") as caught:
        RegistryClient(store, private_networks=True).pull(f"http://{registry.host}/library/tiny")
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    publish_tiny(registry)
    RegistryClient(store, timeout=5, private_networks=True).pull(f"http://{registry.host}/library/tiny",
                                                                 insecure=True)
    assert len(store.models()) == 1


def test_https_is_the_default_scheme(store, registry):
    publish_tiny(registry)
    with pytest.raises(GatewayError) as caught:
        RegistryClient(store, timeout=5, private_networks=True).pull(f"{registry.host}/library/tiny")
    assert caught.value.kind is ErrorKind.UNAVAILABLE
    assert caught.value.message.startswith("pull model manifest: ")


def test_a_default_registry_without_a_scheme_follows_insecure(store, registry):
    publish_tiny(registry)
    RegistryClient(store, default_registry=registry.host, timeout=5).pull("tiny", insecure=True)
    assert [m.name for m in store.models()] == ["tiny:latest"]


def test_an_unreachable_registry_is_unavailable(store):
    client = RegistryClient(store, default_registry="http://127.0.0.1:9", timeout=5)
    with pytest.raises(GatewayError, match="pull model manifest: ") as caught:
        pull(client)
    assert caught.value.kind is ErrorKind.UNAVAILABLE


@pytest.mark.parametrize("name", ["../../etc/passwd", "bad name", "a/b/c/d"])
def test_invalid_names_are_refused_before_any_request(client, registry, name):
    with pytest.raises(GatewayError, match="invalid model name") as caught:
        pull(client, name)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert registry.requests == []


def test_a_manifest_without_a_gguf_layer_is_refused_before_downloading(client, store, registry):
    registry.add_model("library/tiny:latest", [("tensor", b"safetensors data")])
    with pytest.raises(GatewayError, match="tiny:latest has no GGUF model layer") as caught:
        pull(client)
    assert caught.value.kind is ErrorKind.INVALID_REQUEST
    assert registry.blob_requests() == [] and store.models() == []


@pytest.mark.parametrize("manifest, message", [
    (b"<html>", "invalid JSON"),
    (b"{}", "no image manifest"),
    (json.dumps({"layers": [{"mediaType": MEDIA + "model", "digest": "sha256:../../../etc/x", "size": 1}]}).encode(),
     "invalid digest format"),
    (json.dumps({"layers": [{"mediaType": MEDIA + "model", "digest": "sha256:" + "a" * 64}]}).encode(),
     "has no valid size"),
    (json.dumps({"layers": ["x"]}).encode(), "a layer is not an object"),
])
def test_a_malformed_manifest_is_refused_before_downloading(client, store, registry, manifest, message):
    registry.manifests["library/tiny:latest"] = manifest
    with pytest.raises(GatewayError, match=message):
        pull(client)
    assert registry.blob_requests() == [] and store.models() == []
    assert blob_files(store) == []


def test_pulling_a_new_version_removes_layers_only_the_old_one_used(client, store, registry):
    publish_tiny(registry, template=b"old template")
    pull(client)
    publish_tiny(registry, template=b"new template")
    events = pull(client)
    assert "removing unused layers" in [e.status for e in events]
    assert store.find("tiny").template == "new template"
    assert not store.blob_path(digest_of(b"old template")).exists()
    assert store.blob_path(digest_of(GGUF)).exists()


def test_a_pull_lands_in_the_stored_spelling_of_the_name(client, store, registry):
    publish_tiny(registry)
    pull(client, "tiny")
    pull(client, "TINY")
    assert [m.name for m in store.models()] == ["tiny:latest"]


def test_docker_registry_serves_ollama_models(tmp_path, store):
    """Debian's docker-registry (distribution 2.8) as a real registry: push a GGUF as an Ollama model over plain
    HTTP, pull it, then resume a partial download against it."""
    binary = docker_registry_binary()
    require_tool(binary, NOT_INSTALLED)
    gguf = tiny_gguf(tmp_path / "tiny.gguf", padding=200_000)
    with DockerRegistry(tmp_path / "registry", binary) as real:
        manifest = push_ollama_model(real.url, "library/tiny:v1", gguf, template="{{ .Prompt }}",
                                     parameters={"stop": ["<end>"]})
        client = RegistryClient(store, default_registry=real.url, timeout=10)
        client.pull("tiny:v1")
        model = store.find("tiny:v1")
        assert model.model_path.read_bytes() == gguf.read_bytes()
        assert (model.template, model.parameters) == ("{{ .Prompt }}", {"stop": ["<end>"]})
        assert model.config["model_family"] == "llama"
        store.delete("tiny:v1")
        digest = manifest["layers"][0]["digest"]
        partial = store.blob_path(digest).with_name(store.blob_path(digest).name + "-partial")
        partial.write_bytes(gguf.read_bytes()[:70_000])
        events = pull(client, "tiny:v1")
        assert [e.completed for e in events if e.digest == digest][0] == 70_000
        assert store.find("tiny:v1").model_path.read_bytes() == gguf.read_bytes()


def test_a_store_that_cannot_be_written_fails_with_the_reason(client, store, registry):
    publish_tiny(registry)
    store.root.mkdir(parents=True)
    store.blobs_dir.write_bytes(b"not a folder")
    with pytest.raises(GatewayError, match=r"pull sha256:[0-9a-f]{64}: \[Errno 17\] File exists") as caught:
        pull(client)
    assert caught.value.kind is ErrorKind.INTERNAL


@pytest.mark.parametrize("model_layer", [b"<html>not a model</html>" * 100, b"GGUF" + b"\xff" * 64])
def test_a_model_layer_that_is_not_a_gguf_fails_the_pull_and_leaves_the_store_as_it_was(client, store, registry,
                                                                                     model_layer):
    publish_tiny(registry)
    pull(client)  # a model already in the store: its blobs must survive the failed pull
    before = blob_files(store)
    registry.add_model("library/bad:latest", [("model", model_layer), ("template", b"{{ .Prompt }}!")])
    with pytest.raises(GatewayError, match="not a usable GGUF file") as info:
        pull(client, "bad")
    assert info.value.kind == ErrorKind.INVALID_REQUEST
    assert [m.name for m in store.models()] == ["tiny:latest"]
    assert blob_files(store) == before


@pytest.mark.parametrize("host", ["127.0.0.1:5000", "10.1.2.3", "169.254.169.254", "localhost", "192.168.0.1"])
def test_a_name_with_a_private_host_is_refused_without_the_opt_in(store, host):
    with pytest.raises(GatewayError, match="private or local network") as info:
        RegistryClient(store, timeout=5).pull(f"{host}/library/tiny", insecure=True)
    assert info.value.kind is ErrorKind.FORBIDDEN
    assert store.models() == []


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://x/"])
def test_redirects_go_nowhere_but_http_and_https(client, store, registry, target):
    """urllib itself refuses file: and gopher: (a 302 error); ftp: it would follow, and we do not."""
    publish_tiny(registry)
    registry.redirects[digest_of(GGUF)] = target
    with pytest.raises(GatewayError, match="does not follow|: 302"):
        pull(client)
    assert store.models() == []


def test_a_redirect_to_a_private_address_needs_the_opt_in(store, registry):
    publish_tiny(registry)
    registry.redirects[digest_of(GGUF)] = "http://10.255.255.1/blob"
    client = RegistryClient(store, default_registry=registry.url, timeout=5)
    with pytest.raises(GatewayError, match="private or local network"):
        pull(client)
    assert store.models() == []


def test_a_registrys_error_body_is_not_read_back_but_its_oci_message_is(client, registry):
    registry.manifest_status = (418, b"internal secret: db password hunter2")
    with pytest.raises(GatewayError) as info:
        pull(client)
    assert "hunter2" not in info.value.message and "418" in info.value.message
    registry.manifest_status = (400, b'{"errors": [{"code": "DENIED", "message": "repository is private"}]}')
    with pytest.raises(GatewayError, match="400: repository is private"):
        pull(client)


def test_a_pull_that_would_not_fit_the_disk_is_refused_before_writing(client, store, registry, monkeypatch):
    publish_tiny(registry)
    free = registry_client.DISK_RESERVE + len(GGUF) // 2
    monkeypatch.setattr(registry_client.shutil, "disk_usage", lambda _path: SimpleNamespace(free=free))
    with pytest.raises(GatewayError, match="not enough disk space") as info:
        pull(client)
    assert info.value.kind is ErrorKind.UNAVAILABLE
    assert blob_files(store) == [] and store.models() == []
    assert not registry.blob_requests()  # not a byte was asked for



def test_registry_hosts_limit_where_names_with_a_host_may_pull_from(store, registry):
    publish_tiny(registry)
    limited = RegistryClient(store, timeout=5, private_networks=True, allowed_hosts=["registry.example.com"])
    with pytest.raises(GatewayError, match="pulls only from registry.example.com") as info:
        limited.pull(f"{registry.host}/library/tiny", insecure=True)
    assert info.value.kind is ErrorKind.FORBIDDEN and registry.requests == []
    allowed = RegistryClient(store, timeout=5, private_networks=True, allowed_hosts=["127.0.0.1:*"])
    allowed.pull(f"{registry.host}/library/tiny", insecure=True)
    assert len(store.models()) == 1
