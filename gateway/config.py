"""Settings: defaults < YAML file < environment (`GATEWAY_*`) < command-line flags.

Every setting is declared once in `SETTINGS` with its default, type and description; the YAML keys, the
environment names and `python -m gateway check` all come from that one table, so they cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import yaml

from gateway.keys import KeyPolicy, parse_keys
from gateway.types import parse_duration


class ConfigError(ValueError):
    """A setting with a wrong key, type or value; the message names it."""


@dataclass(frozen=True)
class Setting:
    key: str
    default: Any
    type: type
    help: str

    @property
    def env(self) -> str:
        return "GATEWAY_" + self.key.upper()


SETTINGS: list[Setting] = [
    Setting("host", "127.0.0.1", str, "Address to listen on."),
    Setting("port", 11435, int, "Port to listen on."),
    Setting("log_level", "info", str, "Logging level: debug, info, warning, error."),
    Setting("log_format", "plain", str, "Log lines as plain text, or 'json': one object per line (a finished "
                                        "request's line carries its fields)."),
    Setting("http_threads", 64, int, "HTTP worker threads (each open stream holds one)."),
    Setting("max_body_bytes", 16 * 1024 * 1024, int, "Largest request body accepted (413 above)."),
    Setting("api_keys", [], list, "If not empty, requests must carry one of these keys (Bearer or x-api-key). A "
                                  "key is a string, or {key, name, max_concurrent, requests_per_minute, "
                                  "tokens_per_minute, models} for a key with limits (429 with Retry-After past "
                                  "them) and the models it may use."),
    Setting("api_keys_file", "", str, "A YAML file with more keys, a list in the form of `api_keys` (read at "
                                      "start; keeps keys out of the main config)."),
    Setting("allowed_origins", [], list, "Web page origins (besides this server's own and loopback ones) that may "
                                         "call the API from a browser, e.g. https://app.example.com; globs "
                                         "allowed, '*' for any. Other origins get 403."),
    Setting("allowed_hosts", [], list, "Host names (besides loopback, the bound address and, when bound to all "
                                       "interfaces, IP addresses) that requests may be addressed to; '*' for any. "
                                       "Guards against DNS rebinding."),
    Setting("store_changes", True, bool, "Allow pull, create, copy and delete of Ollama store models through the "
                                         "API (they need a key whenever api_keys is set)."),
    Setting("models_dirs", [], list, "Folders whose *.gguf files are served, named by file stem."),
    Setting("models", [], list, "Models with their own settings: name, path, aliases, parallel, n_ctx, "
                                "n_gpu_layers, split_mode, main_gpu, tensor_split, n_threads, repack (weights "
                                "repacked for the CPU: default on, off on CPUs with AMX, where llama.cpp #20824 "
                                "crashes), keep_alive, pinned, system, parameters (Ollama option names: "
                                "temperature, stop, num_ctx...), chat_format (how it writes tool calls: hermes, "
                                "mistral, llama3, generic; default: from its template), tool_choice (what "
                                "`auto` means for it: auto, or required for models too small to call tools "
                                "unasked)."),
    Setting("ollama_models", "auto", str, "An Ollama model store to serve: 'auto' ($OLLAMA_MODELS, else "
                                          "~/.ollama/models if it exists), 'off', or a folder."),
    Setting("ollama_registry", "https://registry.ollama.ai", str,
            "Registry that /api/pull uses for names without a host (the Ollama registry protocol)."),
    Setting("registry_hosts", [], list, "Hosts (globs allowed, with a port where one is used) that model names "
                                        "given with a host may be pulled from; empty: any. `ollama_registry` is "
                                        "always allowed."),
    Setting("registry_private_networks", False, bool, "Let /api/pull reach registries at loopback, private or "
                                                      "link-local addresses (names with such a host, redirects "
                                                      "to them); `ollama_registry` itself is always allowed."),
    Setting("aliases", {}, dict, "Extra names for models; keys may be globs (`claude-*: smollm2-135m-instruct`)."),
    Setting("embedded_model", True, bool, "Serve the embedded SmolLM2-135M-Instruct model."),
    Setting("parallel", 4, int, "Sequences decoded together per model (continuous batching)."),
    Setting("n_ctx", 0, int, "Context size per model; 0 means the model's trained context capped at 8192."),
    Setting("n_batch", 512, int, "Most tokens in one decode step."),
    Setting("prefill_chunk", 128, int, "Most prompt tokens added to a step while other sequences generate."),
    Setting("n_threads", 0, int, "CPU threads for decoding; 0 means the number of physical cores."),
    Setting("n_gpu_layers", -1, int, "Layers offloaded to GPUs for models that set none: -1 all, 0 none. Only "
                                     "where this build of llama.cpp can offload (CUDA, Metal, Vulkan...)."),
    Setting("max_queue", 64, int, "Requests that may wait for a free sequence before new ones get 429."),
    Setting("keep_alive", 300.0, float, "How long an idle model stays loaded: seconds or a duration ('5m', "
                                        "'1h'); negative keeps it forever, 0 unloads it when idle."),
    Setting("max_loaded_models", 3, int, "Most models loaded at once (0: no limit); the least recently used "
                                         "idle one is unloaded to make room."),
    Setting("memory_budget", "auto", str, "Memory for all loaded models, weights plus KV cache: 'auto' (90% of "
                                          "RAM), '0' (no limit), or a size such as '6GiB'."),
    Setting("pinned", [], list, "Models loaded at start and never unloaded."),
    Setting("context_overflow", "truncate", str, "An Ollama chat longer than its window: 'truncate' drops the "
                                                 "oldest turns (as Ollama does), 'error' answers 400."),
    Setting("keepalive_seconds", 10.0, float, "Idle seconds before a stream gets a keep-alive comment."),
    Setting("shutdown_grace", 30.0, float, "On SIGTERM, seconds requests in flight may take to finish; what still "
                                           "runs then ends with its family's error, and the server exits."),
    Setting("send_timeout", 60.0, float, "Seconds a write to a client that stopped reading may make no progress "
                                         "before the connection is closed and its request cancelled."),
    Setting("reasoning_field", "reasoning_content", str, "Where OpenAI-style responses put a model's reasoning: "
                                                         "'reasoning_content' (llama.cpp, DeepSeek), 'reasoning' "
                                                         "(newer vLLM, Ollama's /v1) or 'both'."),
    Setting("responses_store", "memory", str, "Where Responses API answers are kept for previous_response_id, "
                                              "GET and DELETE (the 1000 most recently used): 'memory', or the "
                                              "path of a SQLite file, so they survive a restart."),
    Setting("request_history", 1000, int, "Finished requests kept for /api/requests and the dashboard."),
    Setting("metrics", True, bool, "Serve Prometheus metrics at /metrics."),
]

_BY_KEY = {s.key: s for s in SETTINGS}


@dataclass
class Settings:
    values: dict[str, Any] = field(default_factory=lambda: {s.key: s.default for s in SETTINGS})

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["values"][key]
        except KeyError:
            raise AttributeError(key) from None


def _from_text(setting: Setting, text: str) -> Any:
    """Environment values are text: JSON for lists and maps (or one bare list item), words for booleans."""
    if setting.type is bool:
        return text.strip().lower() in ("1", "true", "yes", "on")
    if setting.key == "keep_alive":
        return parse_duration(text)
    if setting.type in (int, float):
        return setting.type(text)
    if setting.type is list and not text.lstrip().startswith("["):
        return [text]
    if setting.type in (list, dict):
        return json.loads(text)
    return text


def _coerce(setting: Setting, value: Any, source: str) -> Any:
    wrong = ConfigError(f"{source}: `{setting.key}` must be {setting.type.__name__}, got {value!r}")
    if isinstance(value, str) and setting.type is not str:
        try:
            value = _from_text(setting, value)
        except ValueError:
            raise wrong from None
    if setting.type is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if setting.key == "keep_alive" and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            value = parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: `keep_alive`: {exc}") from None
    if not isinstance(value, setting.type) or (setting.type is int and isinstance(value, bool)):
        raise wrong
    return value


def load_settings(config_file: str | None = None, env: Mapping[str, str] | None = None,
                  overrides: Mapping[str, Any] | None = None) -> Settings:
    """Merge the layers; an unknown key in the YAML file or a wrong type anywhere is a ConfigError."""
    settings = Settings()
    env = os.environ if env is None else env
    config_file = config_file or env.get("GATEWAY_CONFIG")
    if config_file:
        try:
            with open(os.path.expanduser(config_file)) as f:
                data = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"{config_file}: the top level must be a mapping of settings")
        for key, value in data.items():
            if key not in _BY_KEY:
                raise ConfigError(f"{config_file}: unknown setting `{key}`")
            settings.values[key] = _coerce(_BY_KEY[key], value, config_file)
    for setting in SETTINGS:
        if setting.env in env:
            settings.values[setting.key] = _coerce(setting, env[setting.env], setting.env)
    for key, value in (overrides or {}).items():
        if value is not None:
            settings.values[key] = _coerce(_BY_KEY[key], value, f"--{key.replace('_', '-')}")
    _expand_paths(settings)
    _validate(settings)
    return settings


def _expand_paths(settings: Settings) -> None:
    """`~` in every path setting means the home folder, as in a shell: `models_dirs: [~/models]` would
    otherwise look for a folder literally named `~` and serve nothing."""
    values = settings.values
    values["models_dirs"] = [os.path.expanduser(d) if isinstance(d, str) else d for d in values["models_dirs"]]
    if values["ollama_models"] not in ("auto", "off"):
        values["ollama_models"] = os.path.expanduser(values["ollama_models"])
    if values["responses_store"] != "memory":
        values["responses_store"] = os.path.expanduser(values["responses_store"])
    values["models"] = [{**entry, "path": os.path.expanduser(entry["path"])}
                        if isinstance(entry, dict) and isinstance(entry.get("path"), str) else entry
                        for entry in values["models"]]


def _validate(settings: Settings) -> None:
    positive = ("port", "http_threads", "parallel", "n_batch", "prefill_chunk", "max_body_bytes", "send_timeout")
    for key in positive:
        if settings.values[key] <= 0:
            raise ConfigError(f"`{key}` must be positive, got {settings.values[key]}")
    if settings.parallel > 256:
        raise ConfigError(f"`parallel` must be at most 256, got {settings.parallel}")
    if settings.log_level.lower() not in ("debug", "info", "warning", "error"):
        raise ConfigError(f"`log_level` must be debug, info, warning or error, got {settings.log_level!r}")
    if settings.log_format not in ("plain", "json"):
        raise ConfigError(f"`log_format` must be plain or json, got {settings.log_format!r}")
    if settings.context_overflow not in ("truncate", "error"):
        raise ConfigError(f"`context_overflow` must be truncate or error, got {settings.context_overflow!r}")
    if settings.reasoning_field not in ("reasoning_content", "reasoning", "both"):
        raise ConfigError("`reasoning_field` must be reasoning_content, reasoning or both, got "
                          f"{settings.reasoning_field!r}")
    if not settings.responses_store.strip():
        raise ConfigError("`responses_store` must be 'memory' or the path of a SQLite file, got an empty string")
    if settings.max_loaded_models < 0:
        raise ConfigError(f"`max_loaded_models` must be 0 or more, got {settings.max_loaded_models}")
    memory_budget_bytes(settings)
    key_policies(settings)


def key_policies(settings: Settings) -> list[KeyPolicy]:
    """The keys of `api_keys` and `api_keys_file`, validated (gateway/keys.py)."""
    entries, where = list(settings.api_keys), "api_keys"
    try:
        policies = parse_keys(entries, where)
        if settings.api_keys_file:
            where = settings.api_keys_file
            with open(os.path.expanduser(settings.api_keys_file)) as f:
                extra = yaml.safe_load(f) or []
            if not isinstance(extra, list):
                raise ValueError(f"{where}: expected a list of keys")
            policies = parse_keys([*entries, *extra], f"api_keys + {where}")
    except (OSError, yaml.YAMLError, ValueError) as exc:
        raise ConfigError(str(exc) if isinstance(exc, ValueError) else f"cannot read {where}: {exc}") from None
    return policies


_SIZE_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
               "kib": 2**10, "mib": 2**20, "gib": 2**30, "tb": 1000**4, "tib": 2**40}


def memory_budget_bytes(settings: Settings, total_ram: int | None = None) -> int:
    """`memory_budget` in bytes: 'auto' is 90% of physical memory, '0' no limit."""
    text = settings.memory_budget.strip().lower()
    if text == "auto":
        if total_ram is None:
            total_ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        return int(total_ram * 0.9)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-z]*)", text)
    if not match or match.group(2) not in _SIZE_UNITS:
        raise ConfigError(f"`memory_budget` must be auto, 0 or a size such as 6GiB, got {settings.memory_budget!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2)])


def describe(settings: Settings) -> str:
    """Every setting with its value, environment name and meaning (for `python -m gateway check`)."""
    lines = []
    for s in SETTINGS:
        lines.append(f"{s.key} = {json.dumps(settings.values[s.key])}    # {s.env}: {s.help}")
    return "\n".join(lines)
