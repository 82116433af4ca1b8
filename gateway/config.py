"""Settings: defaults < YAML file < environment (`GATEWAY_*`) < command-line flags.

Every setting is declared once in `SETTINGS` with its default, type and description; the YAML keys, the
environment names and `python -m gateway check` all come from that one table, so they cannot drift apart.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import yaml

from gateway.engine_options import CACHE_TYPES, FLASH_ATTN_MODES, MAX_DEVICES, QUANTIZED_CACHE_TYPES
from gateway.keys import KeyPolicy, parse_keys
from gateway.prompt_rules import DEFAULT_RULES, PromptRule, parse_rules
from gateway.time_slice import MAX_US as MAX_SLICE_US
from gateway.time_slice import MIN_US as MIN_SLICE_US
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
    Setting("http_slice_us", 100, int, "Microseconds of CPU time slice the API process's threads ask Linux for "
                                       "(6.12+). A short slice lets the thread that passes a token on run at "
                                       "once, instead of after the decode threads' slice; it does not change "
                                       "their share of the CPU. 0: the kernel's default. 100 to 100000."),
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
                                "crashes), huge_pages, keep_alive, pinned, system, parameters (Ollama option names: "
                                "temperature, stop, num_ctx...), chat_format (how it writes tool calls: hermes, "
                                "mistral, llama3, generic; default: from its template), tool_choice (what "
                                "`auto` means for it: auto, or required for models too small to call tools "
                                "unasked). `backend: upstream` entries are served by OpenAI-compatible servers "
                                "elsewhere (vLLM, SGLang, llama-server, Ollama, another llm-gateway): upstream "
                                "(a URL, a list of URLs, or {urls, model, api_key or api_key_env, "
                                "connect_timeout, read_timeout, first_byte_timeout, health_interval, cooldown}), "
                                "with name, aliases, n_ctx, keep_alive, pinned, system, parameters. "
                                "`backend: managed` entries are engine servers the gateway starts, "
                                "watches and stops: engine (vllm, sglang, llama-server, llama-cpp-python, command), "
                                "model or path, args (a list, or a mapping of flags), env, port, output_dir, "
                                "startup_timeout, heartbeat_interval, prefix (a profiler), debug."),
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
    Setting("n_ctx", 0, int, "Context size per model; 0: the model's trained context when its KV cache fits the "
                             "memory it will have (memory_budget, or the GPUs' free memory when every layer is "
                             "offloaded), else the largest that fits."),
    Setting("n_batch", 512, int, "Most tokens in one decode step."),
    Setting("prefill_chunk", 128, int, "Most prompt tokens added to a step while other sequences generate."),
    Setting("n_threads", 0, int, "CPU threads for decoding; 0 means the number of physical cores."),
    Setting("tensor_split", [], list, "How models that set none split their layers across GPUs: one share per "
                                      "GPU, e.g. [3, 1] (or the text '3,1'); empty: llama.cpp's default (by "
                                      "free memory)."),
    Setting("flash_attn", "auto", str, "Flash attention for models that set none: auto (where the device "
                                       "supports it), on, off."),
    Setting("cache_type_k", "f16", str, "KV cache element type of K for models that set none: f32, f16, bf16, "
                                        "q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl (quantized types hold a longer "
                                        "context in the same memory)."),
    Setting("cache_type_v", "f16", str, "KV cache element type of V, as cache_type_k; a quantized V cache needs "
                                        "flash_attn auto or on."),
    Setting("huge_pages", True, bool, "Read each local model's weights into its runner's memory on 2 MiB "
                                      "transparent huge pages instead of mapping the file (Linux with glibc "
                                      "2.35+, huge pages not `never`): a single stream decodes 4-6% faster on a "
                                      "CPU; the weights then count as the runner's own memory. Per model: "
                                      "huge_pages."),
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
    Setting("default_model", "", str, "The model a request that names none gets (TGI, vLLM's optional model, "
                                      "huggingface_hub's placeholder); empty: the first configured model, else "
                                      "the embedded one."),
    Setting("request_timeout", 0.0, float, "Seconds a generation may run before it is ended with a timeout error "
                                           "(the family's 504, or its in-band error event once streaming); 0: no "
                                           "limit."),
    Setting("keep_think_tags", True, bool, "Ollama answers with `think` unset keep a model's reasoning in the "
                                           "content, tags and all (as Ollama does); false splits it into "
                                           "`thinking` there too."),
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
    Setting("prompt_cache_dir", "", str, "A folder for the persistent prompt cache: long prompt prefixes' KV state "
                                         "saved to disk, restored after a restart or reload; empty: off. "
                                         "e.g. ~/.cache/llm-gateway/prompt-cache."),
    Setting("prompt_cache_min_tokens", 512, int, "Shortest prefix (in tokens) the persistent prompt cache saves."),
    Setting("prompt_cache_max_bytes", 4 * 2**30, int, "Most bytes the prompt cache folder holds; the least "
                                                      "recently used files are removed beyond it."),
    Setting("parked_kv_max_bytes", -1, int, "Memory per model for idle sequences' KV state: when a job starts, "
                                            "idle sequences' cells leave the KV cache (every cell in use costs "
                                            "each running stream's attention) and their state waits here for a "
                                            "prompt that continues it; the least recently parked go first. -1: "
                                            "as much as the model's KV cache holds; 0: idle sequences keep their "
                                            "cells."),
    Setting("prompt_rules", DEFAULT_RULES, list, "Rules applied to system prompts before tokenizing, so that a "
                                                 "line that changes per request does not defeat the prefix "
                                                 "cache: {name, pattern (a regular expression, multiline), "
                                                 "action: strip | move_to_end}. [] turns them off."),
    Setting("request_history", 1000, int, "Finished requests kept for /api/requests and the dashboard."),
    Setting("metrics", True, bool, "Serve Prometheus metrics at /metrics."),
]

_BY_KEY = {s.key: s for s in SETTINGS}

GROUPS: list[tuple[str, tuple[str, ...]]] = [
    ("Server", ("host", "port", "http_threads", "http_slice_us", "max_body_bytes", "keepalive_seconds", "send_timeout",
                "shutdown_grace")),
    ("Models", ("models_dirs", "ollama_models", "embedded_model", "aliases", "default_model", "pinned",
                "ollama_registry", "registry_hosts", "registry_private_networks", "store_changes")),
    ("Per-model overrides", ("models",)),
    ("Engine: every model's defaults", ("parallel", "n_ctx", "n_batch", "prefill_chunk", "n_threads",
                                        "n_gpu_layers", "tensor_split", "huge_pages", "flash_attn", "cache_type_k",
                                        "cache_type_v", "prompt_cache_dir", "prompt_cache_min_tokens",
                                        "prompt_cache_max_bytes", "parked_kv_max_bytes", "prompt_rules")),
    ("Limits and the model pool", ("max_queue", "request_timeout", "keep_alive", "max_loaded_models",
                                   "memory_budget", "context_overflow")),
    ("Answers", ("reasoning_field", "keep_think_tags", "responses_store")),
    ("Auth and web pages", ("api_keys", "api_keys_file", "allowed_origins", "allowed_hosts")),
    ("Dashboard and metrics", ("request_history", "metrics")),
    ("Logging", ("log_level", "log_format")),
]
"""How `config/gateway.yaml` groups the settings, in its order; every setting is in exactly one group."""


def _manifests_root(value: Any) -> Any:
    """The seed named the store's `manifests` folder; the store is the folder above it."""
    if isinstance(value, str) and os.path.basename(os.path.normpath(os.path.expanduser(value))) == "manifests":
        return os.path.dirname(os.path.normpath(os.path.expanduser(value)))
    return value


SEED_KEYS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "models_dir": ("models_dirs", lambda v: [v] if isinstance(v, str) else v),
    "manifests_dir": ("ollama_models", _manifests_root),
    "default_context_size": ("n_ctx", lambda v: v),
    "gpu_layers": ("n_gpu_layers", lambda v: v),
    "threads": ("n_threads", lambda v: v),
    "batch_size": ("n_batch", lambda v: v),
    "preserve_think_tags": ("keep_think_tags", lambda v: v),
}
"""The seed service's `service_config.yaml` keys that have another name here: accepted, with a note in the log
(its `default_model`, `tensor_split` as text, `request_timeout` and `log_level` keep their names)."""


@dataclass
class Settings:
    values: dict[str, Any] = field(default_factory=lambda: {s.key: s.default for s in SETTINGS})
    notes: list[str] = field(default_factory=list)  # deprecations found while loading, logged once logging is up

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
    if setting.key == "tensor_split" and not text.lstrip().startswith("["):
        return [float(x) for x in re.split(r"[,\s]+", text.strip()) if x]  # the seed's "3,1"
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
            if key in SEED_KEYS:
                new_key, convert = SEED_KEYS[key]
                if new_key in data:
                    raise ConfigError(f"{config_file}: `{key}` and `{new_key}` both given; keep `{new_key}`")
                settings.notes.append(f"{config_file}: `{key}` is the seed service's name for `{new_key}`; it "
                                      f"still works, but will be removed: rename it")
                key, value = new_key, convert(value)
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
    if values["prompt_cache_dir"]:
        values["prompt_cache_dir"] = os.path.expanduser(values["prompt_cache_dir"])
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
    if settings.http_slice_us and not MIN_SLICE_US <= settings.http_slice_us <= MAX_SLICE_US:
        raise ConfigError(f"`http_slice_us` must be 0 (the kernel's default) or {MIN_SLICE_US} to {MAX_SLICE_US}, "
                          f"got {settings.http_slice_us}")
    if settings.parallel > 256:
        raise ConfigError(f"`parallel` must be at most 256, got {settings.parallel}")
    settings.values["log_level"] = settings.log_level.lower()  # the seed wrote INFO
    if settings.log_level not in ("debug", "info", "warning", "error"):
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
    if settings.request_timeout < 0:
        raise ConfigError(f"`request_timeout` must be 0 (no limit) or more seconds, got {settings.request_timeout}")
    split = settings.tensor_split
    if split and (not all(isinstance(x, (int, float)) and not isinstance(x, bool) and x >= 0 for x in split)
                  or not sum(split) > 0 or len(split) > MAX_DEVICES):
        raise ConfigError(f"`tensor_split` must be at most {MAX_DEVICES} non-negative shares with a positive sum "
                          f"(one per GPU, e.g. [3, 1]), got {split}")
    if settings.flash_attn not in FLASH_ATTN_MODES:
        raise ConfigError(f"`flash_attn` must be one of {', '.join(FLASH_ATTN_MODES)}, got {settings.flash_attn!r}")
    for key in ("cache_type_k", "cache_type_v"):
        if settings.values[key] not in CACHE_TYPES:
            raise ConfigError(f"`{key}` must be one of {', '.join(CACHE_TYPES)}, got {settings.values[key]!r}")
    if settings.flash_attn == "off" and settings.cache_type_v in QUANTIZED_CACHE_TYPES:
        raise ConfigError(f"`cache_type_v`: a quantized V cache ({settings.cache_type_v}) needs flash_attn auto or "
                          "on (llama.cpp refuses it without flash attention)")
    if settings.prompt_cache_min_tokens < 1 or settings.prompt_cache_max_bytes < 1:
        key = "prompt_cache_min_tokens" if settings.prompt_cache_min_tokens < 1 else "prompt_cache_max_bytes"
        raise ConfigError(f"`{key}` must be positive, got {settings.values[key]}")
    if settings.parked_kv_max_bytes < -1:
        raise ConfigError(f"`parked_kv_max_bytes` must be -1 (as much as the KV cache), 0 (off) or a number of "
                          f"bytes, got {settings.parked_kv_max_bytes}")
    prompt_rules(settings)
    if settings.max_loaded_models < 0:
        raise ConfigError(f"`max_loaded_models` must be 0 or more, got {settings.max_loaded_models}")
    memory_budget_bytes(settings)
    key_policies(settings)


def prompt_rules(settings: Settings) -> list[PromptRule]:
    """The validated `prompt_rules` (gateway/prompt_rules.py); a bad one is a ConfigError that names it."""
    try:
        return parse_rules(settings.prompt_rules)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


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
    for title, keys in GROUPS:
        lines.append(f"# == {title} ==")
        for s in (_BY_KEY[k] for k in keys):
            value = settings.values[s.key]
            if s.key == "api_keys":
                value = [_masked(k) for k in value]
            lines.append(f"{s.key} = {json.dumps(value)}    # {s.env}: {s.help}")
    return "\n".join(lines)


def _masked(key: Any) -> Any:
    """A key as `check` prints it: enough to tell keys apart, never enough to use one."""
    if isinstance(key, dict):
        return {**key, "key": _masked(key.get("key"))} if "key" in key else key
    if not isinstance(key, str):
        return key
    return "***" + key[-4:] if len(key) >= 16 else "***"
