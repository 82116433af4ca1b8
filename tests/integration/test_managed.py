"""Managed engine servers with a real engine: llama-cpp-python's own server (its `[server]` extra) on the
embedded SmolLM2, started by `ManagedServer`, used through the openai SDK, killed, restarted by the heartbeat,
and stopped with no process of its tree left; then the same server as a gateway's `backend: managed` model,
used through the openai and ollama clients, and gone when the gateway shuts down."""

from __future__ import annotations

import os
import signal

import ollama
import openai
import pytest
import requests

from gateway.managed import ManagedServer, list_endpoints
from gateway.managed.process import group_members, process_tree, read_proc
from gateway.models.embedded import embedded_model_path
from tests.integration.support import GatewayServer
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

DEADLINE = 120.0  # seconds: loading the 135M model takes a few; this is only a ceiling for a wedged machine


def running(pid: int) -> bool:
    info = read_proc(pid)
    return info is not None and info.state != "Z"


def greeting(server: ManagedServer) -> str:
    client = openai.OpenAI(base_url=server.base_url, api_key="unused", max_retries=0, timeout=DEADLINE)
    answer = client.chat.completions.create(model="smollm2", messages=[{"role": "user", "content": "Say hello."}],
                                            max_tokens=8, temperature=0)
    return answer.choices[0].message.content


def test_a_managed_llama_cpp_python_server_is_used_restarted_and_stopped_without_orphans(tmp_path):
    server = ManagedServer(engine="llama-cpp-python", model=str(embedded_model_path()),
                           args={"n_ctx": 512, "n_threads": 1, "verbose": False}, output_dir=tmp_path,
                           startup_timeout=DEADLINE, heartbeat_interval=0.5)
    with server:
        assert server.healthy() and server.health == "ok"
        assert "--interrupt_requests False" in server.log_file.read_text().splitlines()[0]
        [endpoint] = list_endpoints()
        assert endpoint["engine"] == "llama-cpp-python" and endpoint["pid"] == server.pid
        first = greeting(server)
        assert first

        killed = server.pid
        os.kill(killed, signal.SIGKILL)
        wait_for(lambda: server.restarts == 1 and server.health == "ok", "the heartbeat's restart")
        assert server.pid != killed and not running(killed)
        assert greeting(server) == first  # greedy decoding: the fresh server answers as the first did

        tree = process_tree(server.pid)
        leader = server.pid
    assert [p.pid for p in tree if running(p.pid)] == []
    assert group_members(leader) == []
    assert list_endpoints() == []


def test_a_gateway_serves_a_managed_model_and_stops_its_server_when_it_shuts_down(tmp_path):
    model = {"name": "managed-smollm2", "backend": "managed", "engine": "llama-cpp-python",
             "path": str(embedded_model_path()), "args": {"n_ctx": 512, "n_threads": 1},
             "output_dir": str(tmp_path / "engines"), "startup_timeout": DEADLINE, "heartbeat_interval": 1}
    with GatewayServer(tmp_path / "gateway", {"models": [model], "embedded_model": False}) as gateway:
        [loaded] = requests.get(gateway.url + "/api/ps", timeout=10).json()["models"]
        runner = loaded["runner"]
        assert (loaded["name"], runner["kind"], runner["health"]) == ("managed-smollm2:latest", "managed", "ok")
        assert loaded["context_length"] == 512  # from the engine's --n_ctx: its model list does not say
        assert runner["endpoints"][0]["engine"] == "llama-cpp-python"
        assert runner["endpoints"][0]["log_file"] == str(tmp_path / "engines" / "managed-smollm2.log")
        tree = process_tree(runner["pid"])
        assert tree and all(running(p.pid) for p in tree)

        chat = gateway.client().chat.completions.create(
            model="managed-smollm2", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8,
            temperature=0)
        assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
        answer = ollama.Client(host=gateway.url).chat(
            model="managed-smollm2", messages=[{"role": "user", "content": "Say hello."}],
            options={"num_predict": 8, "temperature": 0})
        assert answer.message.content == chat.choices[0].message.content
        gateway.stop()
        assert gateway.proc.returncode == 0, gateway.log_tail()
    assert [p.pid for p in tree if running(p.pid)] == []
    assert group_members(runner["pid"]) == []
