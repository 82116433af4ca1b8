"""A real OCI registry for tests, and pushing a GGUF into it as an Ollama model.

The registry is Debian's `docker-registry` package (CNCF distribution 2.8, `apt-get install docker-registry`,
binary `/usr/bin/docker-registry`), started as `docker-registry serve <config.yml>` with filesystem storage in
a temporary folder and plain http on a free loopback port. Ollama's own registry speaks the same protocol, so a
model pushed here with `push_ollama_model` can be pulled by the gateway (or by `ollama pull --insecure`).

    binary = docker_registry_binary()
    require_tool(binary, NOT_INSTALLED)  # tests/system_tools.py
    with DockerRegistry(tmp_path, binary) as registry:
        push_ollama_model(registry.url, "library/tiny:latest", gguf_path, template="{{ .Prompt }}")
        # pull "tiny" with default_registry=registry.url, or "<registry.host>/library/tiny" with insecure=True
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from gateway.models.gguf import read_metadata

DOCKER_REGISTRY_PACKAGE = "docker-registry"
NOT_INSTALLED = "docker-registry is not installed (as root: apt-get install docker-registry)"
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
OLLAMA_MEDIA_PREFIX = "application/vnd.ollama.image."
START_TIMEOUT = 15.0
HTTP_TIMEOUT = 60.0

_CONFIG = """\
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
http:
  addr: 127.0.0.1:{port}
  secret: llm-gateway-tests
"""


def docker_registry_binary() -> str | None:
    """The registry binary, or None when the package is not installed (tests then skip, naming the package)."""
    return shutil.which("docker-registry") or next(
        (p for p in ("/usr/bin/docker-registry",) if os.access(p, os.X_OK)), None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DockerRegistry:
    """One registry process with its own storage under `workdir`; a context manager that stops it on exit."""

    def __init__(self, workdir: Path, binary: str | None = None):
        self.workdir = Path(workdir)
        self.binary = binary or docker_registry_binary()
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.workdir / "registry.log"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.host}"

    def start(self) -> DockerRegistry:
        if self.binary is None:
            raise RuntimeError(NOT_INSTALLED)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = self.workdir / "config.yml"
        config.write_text(_CONFIG.format(storage=self.workdir / "storage", port=self.port))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen([self.binary, "serve", str(config)], stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> DockerRegistry:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/v2/", timeout=1) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"docker-registry did not come up on {self.url}:\n{self.log_tail()}")


def push_blob(registry_url: str, repository: str, source: bytes | Path) -> dict[str, Any]:
    """Upload one blob (monolithic upload: POST an upload, PUT its data with `?digest=`); returns its descriptor
    without mediaType. A file is streamed, never read into memory whole."""
    digest, size = _digest_of(source)
    with urllib.request.urlopen(urllib.request.Request(
            f"{registry_url}/v2/{repository}/blobs/uploads/", method="POST", data=b""), timeout=HTTP_TIMEOUT) as r:
        location = urllib.parse.urljoin(registry_url, r.headers["Location"])
    separator = "&" if urllib.parse.urlsplit(location).query else "?"
    put_url = f"{location}{separator}digest={urllib.parse.quote(digest)}"
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
    if isinstance(source, bytes):
        _send(urllib.request.Request(put_url, method="PUT", data=source, headers=headers))
    else:
        with open(source, "rb") as body:
            _send(urllib.request.Request(put_url, method="PUT", data=body, headers=headers))
    return {"digest": digest, "size": size}


def push_ollama_model(
    registry_url: str,
    name: str,
    gguf_path: Path,
    template: str | None = None,
    system: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Push a GGUF as Ollama does: model (+ template, system, params) layers, a ConfigV2 config blob, then the
    docker v2 manifest under `name` (`namespace/model[:tag]`, tag `latest` by default). Returns the manifest."""
    repository, _, tag = name.partition(":")
    tag = tag or "latest"
    layers = [{"mediaType": OLLAMA_MEDIA_PREFIX + "model", **push_blob(registry_url, repository, Path(gguf_path))}]
    extras = {"template": template, "system": system,
              "params": json.dumps(parameters) if parameters else None}
    for kind, text in extras.items():
        if text:
            layers.append({"mediaType": OLLAMA_MEDIA_PREFIX + kind,
                           **push_blob(registry_url, repository, text.encode())})
    meta = read_metadata(gguf_path)
    config = json.dumps({"model_format": "gguf", "model_family": meta.architecture,
                         "model_families": [meta.architecture], "model_type": meta.parameter_size,
                         "file_type": meta.quantization, "architecture": "amd64", "os": "linux"}).encode()
    manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
                "config": {"mediaType": CONFIG_MEDIA_TYPE, **push_blob(registry_url, repository, config)},
                "layers": layers}
    _send(urllib.request.Request(f"{registry_url}/v2/{repository}/manifests/{tag}", method="PUT",
                                 data=json.dumps(manifest).encode(), headers={"Content-Type": MANIFEST_MEDIA_TYPE}))
    return manifest


def _digest_of(source: bytes | Path) -> tuple[str, int]:
    if isinstance(source, bytes):
        return f"sha256:{hashlib.sha256(source).hexdigest()}", len(source)
    digest = hashlib.sha256()
    with open(source, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}", os.path.getsize(source)


def _send(request: urllib.request.Request) -> None:
    try:
        with urllib.request.urlopen(request, timeout=HTTP_TIMEOUT) as response:
            response.read()
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{request.get_method()} {request.full_url}: {err.code} {err.read()[:500]!r}") from None
