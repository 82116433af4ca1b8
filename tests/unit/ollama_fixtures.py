"""Small files for the Ollama store and registry tests: a header-only GGUF and hand-written store entries."""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

MEDIA = "application/vnd.ollama.image."
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
CONFIG = {"model_format": "gguf", "model_family": "llama", "model_families": ["llama"], "model_type": "135K",
          "file_type": "Q4_K_M", "architecture": "amd64", "os": "linux"}


def _string(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf_bytes(architecture: str = "llama", padding: int = 0) -> bytes:
    """A GGUF v3 header (architecture, file type Q4_K_M, one 1000x135 tensor) and `padding` filler bytes: enough
    for the header reader, which never reads tensor data."""
    kvs = _string("general.architecture") + struct.pack("<I", 8) + _string(architecture)
    kvs += _string("general.file_type") + struct.pack("<I", 4) + struct.pack("<I", 15)
    tensor = _string("blk.0.weight") + struct.pack("<I2QIQ", 2, 1000, 135, 0, 0)
    return b"GGUF" + struct.pack("<IQQ", 3, 1, 2) + kvs + tensor + bytes(range(256)) * (padding // 256) \
        + bytes(padding % 256)


def tiny_gguf(path: Path, architecture: str = "llama", padding: int = 0) -> Path:
    path.write_bytes(gguf_bytes(architecture, padding))
    return path


def digest_of(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def put_blob(root: Path, data: bytes) -> dict[str, Any]:
    """Store `data` as a blob of the store at `root`; returns its descriptor (digest, size)."""
    digest = digest_of(data)
    blobs = root / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)
    (blobs / digest.replace(":", "-")).write_bytes(data)
    return {"digest": digest, "size": len(data)}


def manifest_for(root: Path, layers: list[tuple[str, bytes]], config: dict[str, Any] | None = None) -> dict:
    """A manifest whose layers (`(kind, data)`, kind like "model" or "template") are stored as blobs."""
    config_data = json.dumps(CONFIG if config is None else config).encode()
    return {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": CONFIG_MEDIA_TYPE, **put_blob(root, config_data)},
            "layers": [{"mediaType": MEDIA + kind, **put_blob(root, data)} for kind, data in layers]}


def put_manifest(root: Path, path: str, manifest: dict[str, Any] | bytes) -> Path:
    """Write a manifest at `manifests/<path>` (`host/namespace/model/tag`)."""
    target = root / "manifests" / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode())
    return target


def put_model(root: Path, path: str, layers: list[tuple[str, bytes]] | None = None) -> Path:
    """A complete model: a GGUF layer plus `layers`, its blobs and its manifest."""
    return put_manifest(root, path, manifest_for(root, [("model", gguf_bytes())] + (layers or [])))
