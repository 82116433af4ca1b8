"""SIGHUP reloads models, aliases, keys and per-model settings from the config file while requests run: the
worker is not restarted, a running stream finishes normally, a config with an error changes nothing, and a model
whose settings (or store entry) changed is reloaded once its requests finish. Also checked here: the context a
model gets when none is configured, and why, as the API reports it."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
import requests
import yaml

from gateway.models.embedded import embedded_model_path
from tests.integration.support import ALIAS, MODEL, GatewayServer
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

KEY = "sk-reload-0123456789abcdef"
DEADLINE = 60.0


def hup(server: GatewayServer, config: dict[str, Any]) -> None:
    (server.work_dir / "gateway.yaml").write_text(yaml.safe_dump(config))
    os.kill(server.proc.pid, signal.SIGHUP)


def runner(server: GatewayServer, name: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    models = requests.get(server.url + "/api/ps", headers=headers, timeout=10).json()["models"]
    return next(m for m in models if m["name"] in (name, name + ":latest"))


def worker_pids(server: GatewayServer) -> set[int]:
    return {int(p) for p in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()}


def test_sighup_adds_a_model_and_keys_while_a_stream_runs_on(tmp_path: Path) -> None:
    config: dict[str, Any] = {"aliases": {ALIAS: MODEL}, "parallel": 4}  # n_ctx left to the server
    with GatewayServer(tmp_path, config, log_level="info") as server:
        listed = {m["id"]: m for m in requests.get(server.url + "/v1/models", timeout=10).json()["data"]}
        assert listed[MODEL]["max_model_len"] == 8192  # SmolLM2's trained length: its KV cache fits easily
        assert "trained length" in listed[MODEL]["context_reason"]
        shown = requests.post(server.url + "/api/show", json={"model": MODEL}, timeout=10).json()
        assert shown["context"] == {"size": 8192, "reason": listed[MODEL]["context_reason"]}
        log_text = server.log_path.read_text()
        assert f"n_ctx 8192: {listed[MODEL]['context_reason']}" in log_text
        assert "Booting worker with pid" in log_text and "Logging error" not in log_text  # gunicorn's lines too
        health = requests.get(server.url + "/health", timeout=10).json()
        assert any(d["type"] == "cpu" and d["memory_total"] > 0 for d in health["devices"])
        compute = "GPU offload" if health["gpu_offload"] else "CPU only"
        assert compute in requests.get(server.url + "/dashboard", timeout=10).text

        workers, pid = worker_pids(server), runner(server, MODEL)["runner"]["pid"]
        lines: list[str] = []
        started = threading.Event()

        def stream() -> None:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a story."}], "stream": True,
                    "max_tokens": 300, "min_tokens": 300}
            with requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=120) as r:
                for line in r.iter_lines(decode_unicode=True):
                    if line:
                        lines.append(line)
                        started.set()

        thread = threading.Thread(target=stream)
        thread.start()
        assert started.wait(DEADLINE)
        entry = {"name": "second", "path": embedded_model_path(), "n_ctx": 1024}
        hup(server, {**config, "models": [entry], "api_keys": [KEY]})
        auth = {"Authorization": f"Bearer {KEY}"}
        wait_for(lambda: requests.get(server.url + "/v1/models", timeout=10).status_code == 401, "the new key")
        models = {m["id"]: m for m in requests.get(server.url + "/v1/models", headers=auth, timeout=10).json()["data"]}
        assert models["second"]["max_model_len"] == 1024
        answer = requests.post(server.url + "/v1/chat/completions", headers=auth, timeout=60, json={
            "model": "second", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})
        assert answer.status_code == 200 and answer.json()["model"] == "second"
        thread.join(DEADLINE * 2)
        assert lines[-1] == "data: [DONE]"
        assert json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert not any('"error"' in line for line in lines)
        assert worker_pids(server) == workers  # gunicorn did not restart its worker
        assert runner(server, MODEL, auth)["runner"]["pid"] == pid  # an unchanged model keeps its runner


def test_a_bad_config_changes_nothing_and_a_changed_model_reloads_once_idle(tmp_path: Path) -> None:
    entry = {"name": "mine", "path": embedded_model_path(), "n_ctx": 1024}
    config: dict[str, Any] = {"models": [entry], "parallel": 2, "embedded_model": False}
    with GatewayServer(tmp_path, config, log_level="info") as server:
        def chat(model: str) -> requests.Response:
            return requests.post(server.url + "/v1/chat/completions", timeout=60, json={
                "model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4})

        first = runner(server, "mine")["runner"]["pid"]
        hup(server, {**config, "models": [{"name": "mine"}]})
        wait_for(lambda: "config reload failed" in server.log_path.read_text(), "the failed reload in the log")
        assert "models[0]: missing required key 'path'" in server.log_path.read_text()
        assert chat("mine").status_code == 200 and runner(server, "mine")["runner"]["pid"] == first

        hup(server, {**config, "models": [{**entry, "n_ctx": 2048}], "parallel": 3})
        wait_for(lambda: "config reloaded" in server.log_path.read_text(), "the reload in the log")
        assert "only after a restart: parallel" in server.log_path.read_text()
        assert chat("mine").status_code == 200
        again = runner(server, "mine")
        assert again["runner"]["pid"] != first and again["context_length"] == 2048

        # a store model created again under its name with other settings is a new model too
        for system in ("You are terse.", "You are verbose."):
            made = requests.post(server.url + "/api/create", timeout=60, json={
                "model": "store-made", "from": "mine", "system": system, "stream": False})
            assert made.status_code == 200, made.text
            assert chat("store-made").status_code == 200
            if system == "You are terse.":
                before = runner(server, "store-made")["runner"]["pid"]
        assert runner(server, "store-made")["runner"]["pid"] != before
