"""Launch commands of the managed engines, checked as argument lists: vLLM and SGLang need GPUs to run, so their
command lines are the part of them a test on any machine can hold to the engines' own CLI syntax."""

from __future__ import annotations

import re
import sys

import pytest

from gateway.managed.engines import ENGINES, EngineError, context_size, launch_command, served_name, to_flags


def test_vllm_serves_the_model_on_loopback_with_dashed_flags():
    argv = launch_command("vllm", "meta-llama/Llama-3.1-70B-Instruct", "127.0.0.1", 8001, {
        "tensor_parallel_size": 4, "pipeline_parallel_size": 2, "enable_prefix_caching": True,
        "enforce_eager": False, "max_model_len": None, "compilation_config": {"level": 3, "cudagraph_sizes": [1, 2]},
        "allowed_origins": ["a", "b"]})
    assert argv[0].endswith("vllm")
    assert argv[1:] == ["serve", "meta-llama/Llama-3.1-70B-Instruct", "--host", "127.0.0.1", "--port", "8001",
                        "--tensor-parallel-size", "4", "--pipeline-parallel-size", "2", "--enable-prefix-caching",
                        "--compilation-config", '{"level":3,"cudagraph_sizes":[1,2]}', "--allowed-origins", "a", "b"]


def test_sglang_runs_its_launch_server_module_with_the_gateways_python():
    argv = launch_command("sglang", "Qwen/Qwen2.5-7B-Instruct", "127.0.0.1", 30001,
                          {"tp": 2, "mem_fraction_static": 0.8, "trust_remote_code": True,
                           "json_model_override_args": {"rope_scaling": {"factor": 2}}})
    assert argv == [sys.executable, "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen2.5-7B-Instruct",
                    "--host", "127.0.0.1", "--port", "30001", "--tp", "2", "--mem-fraction-static", "0.8",
                    "--trust-remote-code", "--json-model-override-args", '{"rope_scaling":{"factor":2}}']


def test_llama_server_joins_lists_with_commas_and_keeps_short_flags():
    argv = launch_command("llama-server", "/models/m.gguf", "127.0.0.1", 8080,
                          {"-c": 4096, "n_gpu_layers": 99, "tensor_split": [3, 1],
                           "rpc": ["10.0.0.2:50052", "10.0.0.3:50052"], "jinja": True})
    assert argv == ["llama-server", "-m", "/models/m.gguf", "--host", "127.0.0.1", "--port", "8080", "-c", "4096",
                    "--n-gpu-layers", "99", "--tensor-split", "3,1", "--rpc", "10.0.0.2:50052,10.0.0.3:50052",
                    "--jinja"]


def test_llama_cpp_python_keeps_underscores_spells_booleans_and_never_interrupts():
    argv = launch_command("llama-cpp-python", "/m.gguf", "127.0.0.1", 9000,
                          {"n_ctx": 512, "use_mmap": False, "verbose": True, "tensor_split": [0.5, 0.5]})
    assert argv == [sys.executable, "-m", "llama_cpp.server", "--model", "/m.gguf", "--host", "127.0.0.1",
                    "--port", "9000", "--interrupt_requests", "False", "--n_ctx", "512", "--use_mmap", "False",
                    "--verbose", "True", "--tensor_split", "0.5", "0.5"]
    assert ENGINES["llama-cpp-python"].concurrency == 1


def test_command_fills_placeholders_and_repeats_list_flags():
    argv = launch_command("command", "tiny", "127.0.0.1", 7000, {"lora": ["a", "b"], "extra_json": {"k": "{}"}},
                          command='serve --listen {host}:{port} --model {model} --conf \'{"x": 1}\'')
    assert argv == ["serve", "--listen", "127.0.0.1:7000", "--model", "tiny", "--conf", '{"x": 1}',
                    "--lora", "a", "--lora", "b", "--extra-json", '{"k":"{}"}']


def test_a_list_of_args_is_passed_as_written():
    assert launch_command("vllm", "m", "127.0.0.1", 1, ["--max-num-seqs", 8, "--enforce-eager"])[-3:] == [
        "--max-num-seqs", "8", "--enforce-eager"]


@pytest.mark.parametrize("name", ["vllm", "sglang", "llama-server", "llama-cpp-python", "command"])
def test_every_engine_listens_on_the_host_and_port_it_is_given(name):
    argv = launch_command(name, "m", "127.0.0.1", 4321, None, "run {host} {port}" if name == "command" else None)
    joined = " ".join(argv)
    assert ("--host 127.0.0.1 --port 4321" in joined) or joined == "run 127.0.0.1 4321"


@pytest.mark.parametrize("call, message", [
    (lambda: launch_command("tgi", "m", "h", 1), "unknown engine 'tgi'"),
    (lambda: launch_command("vllm", None, "h", 1), "engine 'vllm' needs `model`"),
    (lambda: launch_command("command", "m", "h", 1), "engine `command` needs `command`"),
    (lambda: launch_command("vllm", "m", "h", 1, command="x"), "`command` is only for engine `command`"),
    (lambda: to_flags("--a 1", ENGINES["vllm"]), "must be a list or a mapping"),
    (lambda: to_flags({"a": [{"b": 1}]}, ENGINES["vllm"]), "`args.a`: expected a string or a number"),
    (lambda: to_flags({"": 1}, ENGINES["vllm"]), "keys must be non-empty strings"),
])
def test_a_bad_launch_is_refused_with_what_is_wrong(call, message):
    with pytest.raises(EngineError, match=re.escape(message)):
        call()


def test_health_paths_are_the_engines_own():
    assert {name: e.health_path for name, e in ENGINES.items()} == {
        "vllm": "/health", "sglang": "/health", "llama-server": "/health", "llama-cpp-python": "/v1/models",
        "command": "/health"}


@pytest.mark.parametrize("engine, args, name, context", [
    ("vllm", {"served_model_name": "big", "max_model_len": 8192}, "big", 8192),
    ("vllm", ["--max-model-len", "4096", "--max-model-len", "2048"], "org/m", 2048),  # the last one wins
    ("sglang", {"served_model_name": ["a", "b"], "context_length": 32768}, "a", 32768),
    ("llama-server", {"-c": 4096, "alias": "small"}, "small", 4096),
    ("llama-server", {"ctx_size": 1024}, "org/m", 1024),
    ("llama-cpp-python", {"model_alias": "tiny", "n_ctx": 512}, "tiny", 512),
    ("command", {"served_model_name": "x", "n_ctx": 1}, "org/m", None),
    ("vllm", None, "org/m", None),
])
def test_the_served_name_and_context_come_from_the_engines_own_flags(engine, args, name, context):
    assert served_name(engine, "org/m", args) == name
    assert context_size(engine, args) == context
