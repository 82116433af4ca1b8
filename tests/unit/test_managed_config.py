"""`backend: managed` entries in `models:`: what the registry makes of them, and the errors that name the key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from gateway.models.embedded import embedded_model_path
from gateway.models.managed_config import ManagedConfig
from gateway.models.registry import ModelRegistry

SMOLLM2 = str(embedded_model_path())


def managed(**keys: Any) -> dict[str, Any]:
    return {"name": "big", "backend": "managed", "engine": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct", **keys}


def test_a_managed_entry_becomes_a_spec_with_its_server():
    entry = managed(aliases=["gpt-4o"], args={"tensor_parallel_size": 2}, env={"CUDA_VISIBLE_DEVICES": 0},
                    port=8001, output_dir="~/logs", startup_timeout=900, heartbeat_interval=2,
                    prefix="nsys profile -o run", keep_alive="1h")
    registry = ModelRegistry.discover([], [entry], {}, include_embedded=False)
    spec = registry.resolve("gpt-4o")
    assert (spec.name, spec.backend, spec.path, spec.keep_alive) == ("big", "managed", "", 3600.0)
    assert spec.managed == ManagedConfig(
        engine="vllm", model="Qwen/Qwen2.5-7B-Instruct", args={"tensor_parallel_size": 2},
        env={"CUDA_VISIBLE_DEVICES": "0"}, port=8001, output_dir=str(Path.home() / "logs"),
        startup_timeout=900.0, heartbeat_interval=2.0, prefix="nsys profile -o run")
    info = registry.info(spec)
    assert info.metadata == {"managed.engine": "vllm", "managed.model": "Qwen/Qwen2.5-7B-Instruct"}
    assert info.digest.startswith("sha256:")


def test_a_gguf_is_given_as_path_and_a_command_as_argv():
    entries = [{"name": "small", "backend": "managed", "engine": "llama-cpp-python", "path": SMOLLM2},
               {"name": "own", "backend": "managed", "engine": "command", "command": ["serve", "--port", "{port}"]}]
    small, own = ModelRegistry.discover([], entries, {}, include_embedded=False).specs()
    assert small.managed.model == SMOLLM2 and small.managed.engine == "llama-cpp-python"
    assert own.managed.command == ("serve", "--port", "{port}") and own.managed.model is None


@pytest.mark.parametrize("change, message", [
    ({"engine": "tgi"}, "models[0].engine: expected one of vllm, sglang, llama-server, llama-cpp-python, command"),
    ({"engine": None}, "models[0].engine: expected one of"),
    ({"path": SMOLLM2}, "models[0]: give `model` (a name the engine resolves) or `path` (a file), not both"),
    ({"model": None, "path": "/nonexistent.gguf"}, "models[0].path: '/nonexistent.gguf' is not a file"),
    ({"model": None}, "models[0]: engine 'vllm' needs `model`"),
    ({"port": 70000}, "models[0].port: expected a port from 1 to 65535"),
    ({"port": True}, "models[0].port: expected a port"),
    ({"args": "--tp 2"}, "models[0]: `args` must be a list or a mapping"),
    ({"args": {"tp": [[1]]}}, "models[0]: `args.tp`: expected a string or a number"),
    ({"env": ["A=1"]}, "models[0].env: expected a mapping"),
    ({"startup_timeout": 0}, "models[0].startup_timeout: expected a number of seconds above 0"),
    ({"heartbeat_interval": "5s"}, "models[0].heartbeat_interval: expected a number of seconds above 0"),
    ({"prefix": [["nsys"]]}, "models[0].prefix: expected a command line"),
    ({"debug": "yes"}, "models[0].debug: expected true or false"),
    ({"command": "serve {port}"}, "models[0]: `command` is only for engine `command`"),
    ({"n_gpu_layers": 99}, "models[0].n_gpu_layers: not used by a model with `backend: managed`"),
    ({"aliases": "x"}, "models[0].aliases: wrong type str"),
    ({"name": ""}, "models[0].name: must not be empty"),
])
def test_a_bad_managed_entry_names_the_key(change, message):
    entry = {key: value for key, value in managed(**change).items() if value is not None or key == "engine"}
    with pytest.raises(ValueError, match=re.escape(message)):
        ModelRegistry.discover([], [entry], {}, include_embedded=False)


def test_a_managed_entry_needs_an_engine():
    entry = managed()
    del entry["engine"]
    with pytest.raises(ValueError, match=re.escape("models[0]: missing required key 'engine' (for `backend: "
                                                   "managed`)")):
        ModelRegistry.discover([], [entry], {}, include_embedded=False)


@pytest.mark.parametrize("entry", [{"name": "m", "path": SMOLLM2, "rpc_servers": ["10.0.0.2:50052"]},
                                   managed(rpc_servers="10.0.0.2:50052")])
def test_rpc_servers_are_refused_with_the_way_that_works(entry):
    with pytest.raises(ValueError, match=r"models\[0\]\.rpc_servers: .*no `rpc_servers` .*GGML_RPC.*llama-server "
                                         r"with `--rpc` as a `backend: managed` model"):
        ModelRegistry.discover([], [entry], {}, include_embedded=False)
