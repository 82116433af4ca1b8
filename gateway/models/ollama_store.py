"""The Ollama model store on disk (`OLLAMA_MODELS`): names, manifests and blobs, read and changed as Ollama does.

Users point the gateway at the models they already pulled with Ollama, and models pulled or created through the
gateway must work in Ollama too, so the layout, the name rules and the manifest format follow Ollama's source
(`envconfig`, `manifest/`, `types/model/name.go`, `server/create.go`):

    <root>/manifests/<host>/<namespace>/<model>/<tag>    a docker v2 manifest (JSON)
    <root>/blobs/sha256-<64 hex>                          layers and config, named by their digest

A name reaches the file system only after every part passed Ollama's character rules, and a digest only after
matching `sha256:<64 hex>`, so nothing a client sends can name a path outside the store.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from gateway.models.gguf import GGUFError, read_metadata
from gateway.types import ErrorKind, GatewayError, Progress, invalid

log = logging.getLogger(__name__)

DEFAULT_HOST = "registry.ollama.ai"
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"

MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL_MEDIA_TYPE = "application/vnd.ollama.image.model"
TEMPLATE_MEDIA_TYPE = "application/vnd.ollama.image.template"
LEGACY_PROMPT_MEDIA_TYPE = "application/vnd.ollama.image.prompt"
SYSTEM_MEDIA_TYPE = "application/vnd.ollama.image.system"
PARAMS_MEDIA_TYPE = "application/vnd.ollama.image.params"
LICENSE_MEDIA_TYPE = "application/vnd.ollama.image.license"
MESSAGES_MEDIA_TYPE = "application/vnd.ollama.image.messages"
PROJECTOR_MEDIA_TYPE = "application/vnd.ollama.image.projector"
ADAPTER_MEDIA_TYPE = "application/vnd.ollama.image.adapter"

COPY_CHUNK = 1 << 20

# Ollama's rules for host, namespace, model and tag (types/model/name.go): ASCII, the first character
# alphanumeric or '_', then a part-specific set; 350 characters for a host, 80 for the others.
_PART_PATTERNS = (
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]{0,349}"),
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,79}"),
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
    re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"),
)
_DIGEST = re.compile(r"sha256[:-]([0-9a-fA-F]{64})")
_SCHEMES = ("http", "https")

ProgressCallback = Callable[[Progress], None]


# ---------------------------------------------------------------------------------------------------------------
# Names


@dataclass(frozen=True)
class ModelName:
    """A fully qualified Ollama name. Equality is exact; `key` compares the way Ollama does (case-insensitive).
    `scheme` is the protocol a client wrote (`http://host/...`), "" when none; `host_given` says whether the host
    was written or defaulted, which decides if a configured default registry may serve the pull."""

    host: str
    namespace: str
    model: str
    tag: str
    scheme: str = field(default="", compare=False)
    host_given: bool = field(default=False, compare=False)

    def __str__(self) -> str:
        return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"

    @property
    def display(self) -> str:
        """Ollama's DisplayShortest: `smollm2:latest`, `user/model:tag`, or `host/namespace/model:tag`."""
        if self.host.lower() != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace.lower() != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    @property
    def key(self) -> str:
        """The canonical, case-folded form: two names with the same key are the same Ollama model."""
        return str(self).lower()

    @property
    def parts(self) -> tuple[str, str, str, str]:
        return (self.host, self.namespace, self.model, self.tag)

    @property
    def repository(self) -> str:
        """The registry repository path, `namespace/model`."""
        return f"{self.namespace}/{self.model}"


def parse_name(text: str) -> ModelName | None:
    """Parse `[scheme://][host/][namespace/]model[:tag]` like Ollama's ParseName, filling the defaults; None when
    any part breaks Ollama's rules (characters, lengths, a separator with nothing beside it) or contains `..`."""
    if not isinstance(text, str):
        return None
    rest, tag = text, DEFAULT_TAG
    if rest.rfind(":") > rest.rfind("/"):
        rest, _, tag = rest.rpartition(":")
    pieces = rest.split("/")
    host, scheme, host_given = DEFAULT_HOST, "", False
    if len(pieces) >= 3:
        host, scheme = _split_scheme("/".join(pieces[:-2]))
        host_given = True
    namespace = pieces[-2] if len(pieces) >= 2 else DEFAULT_NAMESPACE
    name = ModelName(host, namespace, pieces[-1], tag, scheme, host_given)
    return name if scheme in ("", *_SCHEMES) and _parts_valid(name) else None


def _split_scheme(host: str) -> tuple[str, str]:
    scheme, sep, rest = host.partition("://")
    return (rest, scheme) if sep else (host, "")


def _parts_valid(name: ModelName) -> bool:
    return all(p.fullmatch(v) and ".." not in v for p, v in zip(_PART_PATTERNS, name.parts, strict=True))


def digest_hex(digest: str) -> str:
    """The 64 lowercase hex digits of `sha256:<hex>` (or Ollama's file form `sha256-<hex>`); ValueError else."""
    match = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
    if match is None:
        raise ValueError(f"invalid digest format: {digest!r}")
    return match.group(1).lower()


def default_store_root(environ: dict[str, str] | None = None) -> Path:
    """`$OLLAMA_MODELS`, else `~/.ollama/models` (Ollama's envconfig.Models)."""
    env = os.environ if environ is None else environ
    configured = env.get("OLLAMA_MODELS", "")
    return Path(configured) if configured else Path.home() / ".ollama" / "models"


# ---------------------------------------------------------------------------------------------------------------
# The store


@dataclass
class StoreModel:
    """One model of the store with everything serving and listing need. `digest` is the GGUF layer's digest;
    `manifest_digest` is the hex sha256 of the manifest bytes, what Ollama's /api/tags calls `digest`. `size` is
    Ollama's: every layer plus the config. `parameters` keeps Ollama's option names (`{"stop": [...]}`)."""

    name: str
    full_name: str
    manifest_path: Path
    manifest_digest: str
    model_path: Path
    digest: str
    size: int
    modified: float
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    projector: Path | None = None
    adapter_paths: list[Path] = field(default_factory=list)
    license: list[str] = field(default_factory=list)
    messages: list[Any] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Layer:
    media_type: str
    digest: str
    size: int
    status: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": self.digest, "size": self.size}


class BrokenManifest(ValueError):
    """A manifest that cannot serve a model; listings skip it with a warning naming the reason."""


class OllamaStore:
    """The store under one root. It keeps no state between calls: every call reads the disk, so models that
    Ollama (or another gateway worker) adds or removes show up at once; writes go through a temporary file and a
    rename, so a reader never sees half a manifest or half a blob."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.manifests_dir = self.root / "manifests"
        self.blobs_dir = self.root / "blobs"

    # -- paths ----------------------------------------------------------------------------------------------

    def manifest_path(self, name: ModelName) -> Path:
        if not _parts_valid(name):
            raise ValueError(f"invalid model name: {name}")
        return self.manifests_dir.joinpath(*name.parts)

    def remove_partials(self) -> list[str]:
        """Delete the `-partial` downloads a stopped server left (a pull resumes only within its own run or after
        its client left); the names removed."""
        if not self.blobs_dir.is_dir():
            return []
        removed = []
        for partial in self.blobs_dir.glob("sha256-*-partial"):
            partial.unlink(missing_ok=True)
            removed.append(partial.name)
        return removed

    def blob_path(self, digest: str) -> Path:
        """The file of a `sha256:<hex>` digest; ValueError for anything else, so a manifest cannot name a path."""
        return self.blobs_dir / f"sha256-{digest_hex(digest)}"

    # -- reading --------------------------------------------------------------------------------------------

    def names(self) -> list[ModelName]:
        """Every name with a manifest file (`manifests/*/*/*/*`), valid names only, sorted."""
        found = []
        for path in self.manifests_dir.glob("*/*/*/*"):
            if path.name.startswith(".") or not path.is_file():
                continue
            host, namespace, model, tag = path.relative_to(self.manifests_dir).parts
            name = ModelName(host, namespace, model, tag)
            if _parts_valid(name):
                found.append(name)
            else:
                log.warning("ollama store: skipping %s: not a valid model name", path)
        return sorted(found, key=str)

    def models(self) -> list[StoreModel]:
        """Every usable model, newest first as Ollama lists them; broken manifests are logged and skipped."""
        found = []
        for name in self.names():
            try:
                found.append(self.load(name))
            except (BrokenManifest, OSError) as exc:
                log.warning("ollama store: skipping %s: %s", name, exc)
        return sorted(found, key=lambda m: m.modified, reverse=True)

    def find(self, text: str) -> StoreModel:
        """The model a client named, matched case-insensitively; NOT_FOUND in Ollama's wording otherwise."""
        name = self.locate(text)
        if name is None:
            raise _not_found(text)
        try:
            return self.load(name)
        except (BrokenManifest, OSError) as exc:
            raise GatewayError(ErrorKind.INTERNAL, f"model '{text}' cannot be used: {exc}", param="model") from exc

    def locate(self, text: str) -> ModelName | None:
        """The stored name a client's text means (case-insensitively), or None: invalid, or not in the store."""
        name = parse_name(text)
        if name is None:
            return None
        name = self.existing_name(name)
        return name if self.manifest_path(name).is_file() else None

    def existing_name(self, name: ModelName) -> ModelName:
        """The spelling already on disk for `name` (Ollama's getExistingName): a stored name equal ignoring case
        wins whole; otherwise each part takes the spelling of any stored part equal to it ignoring case, so a new
        tag of `Llama` lands in the same folder on case-sensitive file systems."""
        stored = self.names()
        same = next((s for s in stored if s.key == name.key), None)
        if same is not None:
            return ModelName(*same.parts, scheme=name.scheme, host_given=name.host_given)
        parts = list(name.parts)
        for index, part in enumerate(parts):
            match = next((s.parts[index] for s in stored if s.parts[index].lower() == part.lower()), None)
            parts[index] = match or part
        return ModelName(*parts, scheme=name.scheme, host_given=name.host_given)

    def load(self, name: ModelName) -> StoreModel:
        """Read one manifest and the small layers it names; BrokenManifest says what is wrong with it."""
        path = self.manifest_path(name)
        data = path.read_bytes()
        modified = path.stat().st_mtime
        layers, config = self._manifest_layers(data)
        models = [layer for layer in layers if layer.media_type == MODEL_MEDIA_TYPE]
        if not models:
            raise BrokenManifest("the manifest has no GGUF model layer (application/vnd.ollama.image.model)")
        model = models[-1]  # Ollama: the last model layer wins
        model_path = self.blob_path(model.digest)
        if not model_path.is_file():
            raise BrokenManifest(f"the model blob {model.digest} is missing")
        found = StoreModel(
            name=name.display, full_name=str(name), manifest_path=path,
            manifest_digest=hashlib.sha256(data).hexdigest(), model_path=model_path, digest=model.digest,
            size=sum(layer.size for layer in layers) + (config.size if config else 0), modified=modified)
        for layer in layers:
            self._apply_layer(found, layer)
        if config is not None:
            found.config = self._config(config)
        return found

    def _manifest_layers(self, data: bytes) -> tuple[list[_Layer], _Layer | None]:
        try:
            doc = json.loads(data)
        except ValueError as exc:
            raise BrokenManifest(f"not JSON: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("layers"), list):
            raise BrokenManifest("not a manifest (no 'layers' list)")
        layers = [_parse_layer(item, f"layers[{i}]") for i, item in enumerate(doc["layers"])]
        config = doc.get("config")
        return layers, _parse_layer(config, "config") if isinstance(config, dict) and config.get("digest") else None

    def _apply_layer(self, found: StoreModel, layer: _Layer) -> None:
        kind = layer.media_type
        if kind in (TEMPLATE_MEDIA_TYPE, LEGACY_PROMPT_MEDIA_TYPE):
            found.template = self._text(layer)
        elif kind == SYSTEM_MEDIA_TYPE:
            found.system = self._text(layer)
        elif kind == PARAMS_MEDIA_TYPE:
            found.parameters = self._json(layer, dict)
        elif kind == LICENSE_MEDIA_TYPE:
            found.license.append(self._text(layer))
        elif kind == MESSAGES_MEDIA_TYPE:
            found.messages = self._json(layer, list)
        elif kind == PROJECTOR_MEDIA_TYPE and found.projector is None:
            found.projector = self._existing_blob(layer)
        elif kind == ADAPTER_MEDIA_TYPE:
            found.adapter_paths.append(self._existing_blob(layer))

    def _existing_blob(self, layer: _Layer) -> Path:
        path = self.blob_path(layer.digest)
        if not path.is_file():
            raise BrokenManifest(f"the {layer.media_type.rsplit('.', 1)[-1]} blob {layer.digest} is missing")
        return path

    def _text(self, layer: _Layer) -> str:
        return self._existing_blob(layer).read_text(encoding="utf-8", errors="replace")

    def _json(self, layer: _Layer, expected: type) -> Any:
        try:
            value = json.loads(self._existing_blob(layer).read_bytes())
        except ValueError as exc:
            raise BrokenManifest(f"the {layer.media_type} layer is not JSON: {exc}") from exc
        if not isinstance(value, expected):
            raise BrokenManifest(f"the {layer.media_type} layer is not a JSON {expected.__name__}")
        return value

    def _config(self, layer: _Layer) -> dict[str, Any]:
        """The config blob (model_family, model_type, file_type...); only listings read it, so a missing or odd
        one costs the details, not the model."""
        try:
            value = json.loads(self.blob_path(layer.digest).read_bytes())
        except (OSError, ValueError) as exc:
            log.debug("ollama store: config %s unreadable: %s", layer.digest, exc)
            return {}
        return value if isinstance(value, dict) else {}

    # -- changing -------------------------------------------------------------------------------------------

    def copy(self, source: str, destination: str) -> None:
        """Ollama's CopyModel: the destination gets a byte copy of the source manifest; blobs are shared."""
        src = self.locate(source)
        if src is None:
            raise GatewayError(ErrorKind.NOT_FOUND, f'model "{source}" not found', param="source")
        dst = parse_name(destination)
        if dst is None:
            raise invalid(f'destination "{destination}" is invalid', "destination")
        src_path, dst_path = self.manifest_path(src), self.manifest_path(self.existing_name(dst))
        if dst_path != src_path:
            self._write_atomic(dst_path, src_path.read_bytes())

    def delete(self, text: str) -> None:
        """Remove the manifest, the folders it leaves empty, then every blob no other manifest uses."""
        name = self.locate(text)
        if name is None:
            raise _not_found(text)
        path = self.manifest_path(name)
        digests = self.manifest_digests(name)
        path.unlink()
        self._prune_folders(path.parent)
        self.remove_unused_blobs(digests)

    def create(
        self,
        name: str,
        gguf_path: str | os.PathLike[str],
        template: str | None = None,
        system: str | None = None,
        parameters: dict[str, Any] | None = None,
        on_progress: ProgressCallback | None = None,
    ) -> None:
        """Store a GGUF as a model with its template, system prompt and default parameters (Ollama's create).

        The GGUF becomes a blob named by its sha256: a hard link when the store is on the same file system
        (instant, no extra space; the source must then not be edited in place), else a copy. A GGUF that is
        already a blob of this store is reused without hashing it again. Replacing a model frees the blobs only
        the old manifest used."""
        report = on_progress or _ignore
        target = parse_name(name)
        if target is None:
            raise invalid("invalid model name", "model")
        target = self.existing_name(target)
        report(Progress(status="parsing GGUF"))
        try:
            meta = read_metadata(gguf_path)
        except GGUFError as exc:
            raise invalid(str(exc), "from") from exc
        old_digests = self.manifest_digests(target)
        layers = [self._import_gguf(Path(gguf_path))]
        if template:
            layers.append(self._store_bytes(template.encode(), TEMPLATE_MEDIA_TYPE))
        if system:
            layers.append(self._store_bytes(system.encode(), SYSTEM_MEDIA_TYPE))
        if parameters:
            layers.append(self._store_bytes(_go_json(parameters), PARAMS_MEDIA_TYPE))
        config = self._store_bytes(_go_json(_config_v2(meta.architecture, meta.parameter_size,
                                                       meta.quantization)), CONFIG_MEDIA_TYPE)
        for layer in layers:
            report(Progress(status=layer.status))
        report(Progress(status="writing manifest"))
        manifest = {"schemaVersion": 2, "mediaType": MANIFEST_MEDIA_TYPE, "config": config.to_json(),
                    "layers": [layer.to_json() for layer in layers]}
        self.write_manifest(target, _go_json(manifest))
        self.remove_unused_blobs(old_digests)
        report(Progress(status="success"))

    def write_manifest(self, name: ModelName, data: bytes) -> None:
        """Write (or replace) a manifest atomically; its blobs must be in place first."""
        self._write_atomic(self.manifest_path(name), data)

    def manifest_digests(self, name: ModelName) -> set[str]:
        """The digests (`sha256:<hex>`) a stored manifest uses; empty when there is none or it is unreadable."""
        try:
            return _referenced_digests(self.manifest_path(name).read_bytes())
        except OSError:
            return set()

    def remove_unused_blobs(self, digests: Iterable[str]) -> None:
        """Delete the blobs among `digests` that no manifest references any more (a manifest that does not
        parse references nothing, as in Ollama, so a corrupt one cannot pin blobs forever)."""
        candidates = set(digests)
        if not candidates:
            return
        in_use: set[str] = set()
        for other in self.names():
            in_use |= self.manifest_digests(other)
        for digest in candidates - in_use:
            try:
                self.blob_path(digest).unlink(missing_ok=True)
            except ValueError:
                continue

    def _prune_folders(self, folder: Path) -> None:
        """Remove empty folders from `folder` up to (not including) the manifests root."""
        while folder != self.manifests_dir and self.manifests_dir in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent

    def _import_gguf(self, source: Path) -> _Layer:
        reused = self._own_blob_digest(source)
        if reused is not None:
            return _Layer(MODEL_MEDIA_TYPE, reused, source.stat().st_size, f"using existing layer {reused}")
        temp = self._temp_blob()
        try:
            try:
                os.link(source, temp)
                digest = _sha256_file(temp)
            except OSError:  # another file system, or links not allowed: copy, hashing on the way
                digest = _copy_hashing(source, temp)
            return self._commit_blob(temp, digest, MODEL_MEDIA_TYPE)
        finally:
            temp.unlink(missing_ok=True)

    def _own_blob_digest(self, source: Path) -> str | None:
        """The digest of `source` when it already is one of this store's blobs (trusted by name, as Ollama does)."""
        if source.resolve().parent != self.blobs_dir.resolve():
            return None
        try:
            return f"sha256:{digest_hex(source.name)}"
        except ValueError:
            return None

    def _store_bytes(self, data: bytes, media_type: str) -> _Layer:
        temp = self._temp_blob()
        try:
            temp.write_bytes(data)
            return self._commit_blob(temp, f"sha256:{hashlib.sha256(data).hexdigest()}", media_type)
        finally:
            temp.unlink(missing_ok=True)

    def _commit_blob(self, temp: Path, digest: str, media_type: str) -> _Layer:
        blob = self.blob_path(digest)
        size = temp.stat().st_size
        if blob.is_file():
            return _Layer(media_type, digest, size, f"using existing layer {digest}")
        os.replace(temp, blob)
        return _Layer(media_type, digest, size, f"creating new layer {digest}")

    def _temp_blob(self) -> Path:
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        return self.blobs_dir / f".tmp-{secrets.token_hex(8)}"

    def _write_atomic(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            temp.write_bytes(data)
            os.replace(temp, path)
        finally:
            temp.unlink(missing_ok=True)


def _parse_layer(item: Any, where: str) -> _Layer:
    if not isinstance(item, dict):
        raise BrokenManifest(f"{where} is not an object")
    media_type, digest, size = item.get("mediaType"), item.get("digest"), item.get("size")
    if not isinstance(media_type, str) or not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise BrokenManifest(f"{where} needs a string 'mediaType' and a non-negative integer 'size'")
    try:
        digest_hex(digest)
    except ValueError as exc:
        raise BrokenManifest(f"{where}: {exc}") from exc
    return _Layer(media_type, digest, size)


def _referenced_digests(data: bytes) -> set[str]:
    try:
        doc = json.loads(data)
    except ValueError:
        return set()
    if not isinstance(doc, dict):
        return set()
    items = list(doc.get("layers") or []) + [doc.get("config")]
    return {item["digest"] for item in items if isinstance(item, dict) and isinstance(item.get("digest"), str)}


def _config_v2(architecture: str, parameter_size: str, quantization: str) -> dict[str, Any]:
    """Ollama's ConfigV2 for a GGUF (its /api/tags `details` come from here); field order as Ollama writes it."""
    return {"model_format": "gguf", "model_family": architecture, "model_families": [architecture],
            "model_type": parameter_size, "file_type": quantization, "architecture": "amd64", "os": "linux"}


def _go_json(value: Any) -> bytes:
    """JSON as Go's json.Encoder writes it: compact, one trailing newline."""
    return (json.dumps(value, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(COPY_CHUNK), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


def _copy_hashing(source: Path, target: Path) -> str:
    digest = hashlib.sha256()
    with open(source, "rb") as src, open(target, "wb") as dst:
        for chunk in iter(lambda: src.read(COPY_CHUNK), b""):
            digest.update(chunk)
            dst.write(chunk)
    shutil.copymode(source, target)
    return f"sha256:{digest.hexdigest()}"


def _not_found(text: str) -> GatewayError:
    return GatewayError(ErrorKind.NOT_FOUND, f"model '{text}' not found", param="model", code="model_not_found")


def _ignore(_: Progress) -> None:
    """The progress callback when the caller does not want progress."""
