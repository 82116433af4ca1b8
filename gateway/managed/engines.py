"""How each engine is launched: its command line, how it spells flags, and where it says it is ready.

Everything here is a pure function of the configuration, so the launch commands of engines that need GPUs
(vLLM, SGLang) are tested as argument lists on any machine. The engines disagree on flag syntax, and a wrong
guess is a server that exits at once with a usage message, so each engine states its own:

- vLLM and SGLang use argparse with dashed names, `store_true` switches and `nargs="+"` lists; dict-valued
  options (vLLM's `--compilation-config`, `--hf-overrides`, SGLang's `--json-model-override-args`) take JSON.
- llama-server (llama.cpp's `common/arg.cpp`) uses dashed names and comma-separated lists (`--tensor-split 3,1`,
  `--rpc host1:50052,host2:50052`).
- llama-cpp-python's server builds its parser from pydantic fields: the names keep their underscores, every
  boolean takes a value (`--interrupt_requests False`) and lists are `nargs="*"`.
"""

from __future__ import annotations

import json
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

Args = Sequence[Any] | Mapping[str, Any] | None
"""Extra arguments: a list (passed as given) or a mapping turned into flags by `to_flags`."""


@dataclass(frozen=True)
class Engine:
    """One engine's launch conventions."""

    name: str
    health_path: str  # answers 200 only once the model is loaded
    dashes: bool = True  # `tensor_parallel_size` → `--tensor-parallel-size`
    bool_values: bool = False  # a boolean is `--flag True`/`--flag False`, not a bare switch
    lists: str = "nargs"  # nargs: `--k a b`; comma: `--k a,b`; repeat: `--k a --k b`
    concurrency: int | None = None  # requests it serves at once; None: as many as it is sent
    alias_flag: str | None = None  # the flag that names the model in its API (else it answers to `model`)
    context_flags: tuple[str, ...] = ()  # the flags that set its context size


ENGINES: dict[str, Engine] = {
    # vLLM binds its port before loading, but refuses connections (and /health) until the model is ready.
    "vllm": Engine("vllm", "/health", alias_flag="--served-model-name", context_flags=("--max-model-len",)),
    "sglang": Engine("sglang", "/health", alias_flag="--served-model-name", context_flags=("--context-length",)),
    # llama-server answers /health with 503 while loading and 200 once ready.
    "llama-server": Engine("llama-server", "/health", lists="comma", alias_flag="--alias",
                           context_flags=("-c", "--ctx-size")),
    # llama-cpp-python's server has no /health; /v1/models answers once uvicorn runs, after the model loaded.
    # It runs one request at a time, and by default a second request ends the running stream, so it is
    # started with `--interrupt_requests False` and sent one request at a time.
    "llama-cpp-python": Engine("llama-cpp-python", "/v1/models", dashes=False, bool_values=True, concurrency=1,
                               alias_flag="--model_alias", context_flags=("--n_ctx",)),
    "command": Engine("command", "/health", lists="repeat"),
}


class EngineError(ValueError):
    """A launch that cannot be built: an unknown engine, a missing model or command, a malformed argument."""


def engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise EngineError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})") from None


def launch_command(name: str, model: str | None, host: str, port: int, args: Args = None,
                   command: str | Sequence[str] | None = None) -> list[str]:
    """The full argv of one server: the engine's own start command, then the extra arguments.

    `command` is the `command` engine's argv (a list, or a string split as a shell would), in which `{port}`,
    `{host}` and `{model}` are replaced; plain replacement rather than `str.format`, so JSON in an argument
    needs no doubled braces."""
    eng = engine(name)
    if name == "command":
        if not command:
            raise EngineError("engine `command` needs `command`: the server's argv, with {port} and {host}")
        argv = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
        values = {"{port}": str(port), "{host}": host, "{model}": model or ""}
        for placeholder, value in values.items():
            argv = [a.replace(placeholder, value) for a in argv]
        return argv + to_flags(args, eng)
    if command:
        raise EngineError(f"`command` is only for engine `command`, not {name!r}")
    if not model:
        raise EngineError(f"engine {name!r} needs `model`: a model name or path")
    return _engine_start(name, model, host, port) + to_flags(args, eng)


def served_name(name: str, model: str | None, args: Args = None) -> str | None:
    """The model name the server's API answers to: the value of its alias flag when the arguments set one
    (vLLM refuses any other name with a 404), else what it loaded."""
    eng = engine(name)
    return _flag_value(to_flags(args, eng), (eng.alias_flag,) if eng.alias_flag else ()) or model


def context_size(name: str, args: Args = None) -> int | None:
    """The context size the arguments give the server, if they do: not every engine reports it in its model
    list (llama-cpp-python does not), and the gateway needs it to fit prompts and default `max_tokens`."""
    eng = engine(name)
    value = _flag_value(to_flags(args, eng), eng.context_flags)
    return int(value) if value is not None and value.isdigit() else None


def _flag_value(argv: list[str], flags: tuple[str, ...]) -> str | None:
    """The value after the last of `flags` in `argv` (argparse lets the last one win)."""
    found = [i for i, arg in enumerate(argv[:-1]) if arg in flags]
    return argv[found[-1] + 1] if found else None


def _engine_start(name: str, model: str, host: str, port: int) -> list[str]:
    """The engine's start command with the model and the address; `--host` is always given, because vLLM and
    llama-cpp-python's defaults differ from ours and vLLM's default listens on every interface."""
    address = ["--host", host, "--port", str(port)]
    if name == "vllm":
        return [_script("vllm"), "serve", model, *address]
    if name == "sglang":
        return [sys.executable, "-m", "sglang.launch_server", "--model-path", model, *address]
    if name == "llama-server":
        return ["llama-server", "-m", model, *address]
    return [sys.executable, "-m", "llama_cpp.server", "--model", model, *address, "--interrupt_requests", "False"]


def _script(name: str) -> str:
    """A console script of the gateway's own environment when it is there (a venv need not be on PATH), else
    the name, found on PATH."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


def to_flags(args: Args, eng: Engine) -> list[str]:
    """Extra arguments as argv: a list is taken as it is; a mapping becomes flags in the engine's syntax.

    `key: value` → `--key value`; `flag: true` → `--flag`; false and null leave the flag out (for engines whose
    booleans take a value, false is `--flag False`, the only way to turn off a default); a nested mapping is one
    JSON argument; a list follows the engine's list syntax. A key that starts with `-` is used as written
    (llama-server's `-c 4096`)."""
    if args is None:
        return []
    if isinstance(args, str):
        raise EngineError(f"`args` must be a list or a mapping, not a string: {args!r} (write it as a list)")
    if not isinstance(args, Mapping):
        return [_scalar(a, "args") for a in args]
    argv: list[str] = []
    for key, value in args.items():
        if not isinstance(key, str) or not key:
            raise EngineError(f"`args`: keys must be non-empty strings, got {key!r}")
        flag = key if key.startswith("-") else "--" + (key.replace("_", "-") if eng.dashes else key)
        argv += _flag(flag, value, eng, f"args.{key}")
    return argv


def _flag(flag: str, value: Any, eng: Engine, where: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, bool):
        if eng.bool_values:
            return [flag, str(value)]
        return [flag] if value else []
    if isinstance(value, Mapping):
        return [flag, json.dumps(value, separators=(",", ":"))]
    if isinstance(value, (list, tuple)):
        items = [_scalar(v, where) for v in value]
        if eng.lists == "comma":
            return [flag, ",".join(items)]
        if eng.lists == "repeat":
            return [part for item in items for part in (flag, item)]
        return [flag, *items]
    return [flag, _scalar(value, where)]


def _scalar(value: Any, where: str) -> str:
    if isinstance(value, (Mapping, list, tuple)) or value is None:
        raise EngineError(f"`{where}`: expected a string or a number, got {value!r}")
    return str(value)
