"""The keys of a `models:` entry with `backend: managed`: which engine server the gateway starts for the model,
with what arguments, and how it watches it.

Validated when the config is read, and the launch command is built once then (`launch_command`), so an unknown
engine, a missing model or a malformed argument is a startup error that names the key, not a failed load later.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any

from gateway.managed.engines import ENGINES, EngineError, launch_command

MANAGED_KEYS = ("engine", "model", "path", "command", "args", "env", "port", "output_dir", "startup_timeout",
                "heartbeat_interval", "prefix", "debug", "health_path")
"""The entry keys that describe the server; `path` (a GGUF file, checked to exist) and `model` (a name the engine
resolves, such as a Hugging Face repository) are the two ways to say what it serves."""


@dataclass(frozen=True)
class ManagedConfig:
    """How to start and watch one engine server (the arguments of `gateway.managed.ManagedServer`)."""

    engine: str
    model: str | None = None  # what the engine loads: a GGUF path or a model name
    command: tuple[str, ...] | str | None = None  # engine `command`'s argv, with {host}, {port}, {model}
    args: Any = None  # a list, or a mapping turned into the engine's flags
    env: dict[str, str] = field(default_factory=dict)
    port: int | None = None  # None: a free port
    output_dir: str | None = None  # logs and pidfiles; None: the user's state folder
    startup_timeout: float = 600.0  # seconds to become healthy (vLLM and SGLang load large models slowly)
    heartbeat_interval: float = 5.0
    prefix: tuple[str, ...] | str | None = None  # a profiler or any wrapper: `nsys profile -o run`
    debug: bool = False
    health_path: str | None = None  # None: the engine's own


def parse_managed(entry: dict[str, Any], where: str) -> ManagedConfig:
    """The managed keys of `entry` (`where` is its place in the config, named in every error)."""
    engine = entry.get("engine")
    if not isinstance(engine, str) or engine not in ENGINES:
        raise ValueError(f"{where}.engine: expected one of {', '.join(ENGINES)}, got {engine!r}")
    if "model" in entry and "path" in entry:
        raise ValueError(f"{where}: give `model` (a name the engine resolves) or `path` (a file), not both")
    model = entry.get("model", entry.get("path"))
    if model is not None and (not isinstance(model, str) or not model.strip()):
        raise ValueError(f"{where}.{'path' if 'path' in entry else 'model'}: expected a non-empty string, "
                         f"got {model!r}")
    if "path" in entry:
        model = os.path.expanduser(model)
        if not os.path.isfile(model):
            raise ValueError(f"{where}.path: {model!r} is not a file")
    env = entry.get("env") or {}
    if not isinstance(env, dict) or not all(isinstance(k, str) for k in env):
        raise ValueError(f"{where}.env: expected a mapping of variable names to values, got {env!r}")
    port = entry.get("port")
    if port is not None and (isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536):
        raise ValueError(f"{where}.port: expected a port from 1 to 65535 (or none for a free one), got {port!r}")
    config = ManagedConfig(
        engine=engine, model=model, command=_argv(entry, "command", where), args=entry.get("args"),
        env={k: str(v) for k, v in env.items()}, port=port, output_dir=_text(entry, "output_dir", where),
        startup_timeout=_seconds(entry, "startup_timeout", where, 600.0),
        heartbeat_interval=_seconds(entry, "heartbeat_interval", where, 5.0), prefix=_argv(entry, "prefix", where),
        debug=_flag(entry, "debug", where), health_path=_text(entry, "health_path", where))
    try:
        launch_command(engine, config.model, "127.0.0.1", port or 1, config.args, config.command)
    except EngineError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return config


def _argv(entry: dict[str, Any], key: str, where: str) -> tuple[str, ...] | str | None:
    value = entry.get(key)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in value):
        return tuple(str(a) for a in value)
    raise ValueError(f"{where}.{key}: expected a command line (a string or a list of strings), got {value!r}")


def _text(entry: dict[str, Any], key: str, where: str) -> str | None:
    value = entry.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise ValueError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    return os.path.expanduser(value) if key == "output_dir" and value else value


def _seconds(entry: dict[str, Any], key: str, where: str, default: float) -> float:
    value = entry.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}.{key}: expected a number of seconds above 0, got {value!r}")
    return float(value)


def _flag(entry: dict[str, Any], key: str, where: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise ValueError(f"{where}.{key}: expected true or false, got {value!r}")
    return value
