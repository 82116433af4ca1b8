"""What the Ollama CLI sends (cmd/cmd.go, API-SPEC 2.11), replayed request for request with the bodies the Go
client writes, and the fields each command reads checked the way it reads them: NDJSON parsed line by line
(an empty line would end the command with an error), `digest[:12]`, `name` rather than `model` in show."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Iterator

import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer

pytestmark = pytest.mark.integration

GO_HEADERS = {"Content-Type": "application/json", "Accept": "application/x-ndjson",
              "User-Agent": "ollama/0.12.0 (amd64 linux) Go/go1.24.0"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with GatewayServer(tmp_path_factory.mktemp("gateway-ollama-cli"), DEFAULT_CONFIG) as gw:
        yield gw


def call(server: GatewayServer, method: str, path: str, body: dict[str, Any] | None = None) -> requests.Response:
    return requests.request(method, server.url + path, json=body, headers=GO_HEADERS, timeout=120)


def ndjson_lines(response: requests.Response) -> list[dict[str, Any]]:
    """The Go CLI's reader (bufio.Scanner): every line must be a JSON object, the last may lack its newline (a
    load answer is one plain JSON object, as Ollama's); an `error` key fails the command."""
    lines = response.content.decode().split("\n")
    if lines[-1] == "":
        lines.pop()
    objects = []
    for line in lines:
        assert line, "an empty line ends the CLI's stream with an error"
        obj = json.loads(line)
        assert "error" not in obj, obj
        objects.append(obj)
    return objects


def go_time(text: str) -> datetime:
    """Go parses RFC 3339 with a zone; Python 3.11 reads up to microseconds, so trim nanoseconds first."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac or '0')[:6]}+00:00")


def show_as_run(server: GatewayServer, name: str) -> requests.Response:
    return call(server, "POST", "/api/show", {"model": name, "system": "", "template": "", "verbose": False,
                                              "options": None, "name": ""})


def test_every_command_starts_with_a_heartbeat(server: GatewayServer) -> None:
    assert requests.head(server.url + "/", timeout=10).status_code < 400


def test_run_with_a_prompt(server: GatewayServer) -> None:
    shown = show_as_run(server, MODEL)
    assert shown.status_code == 200
    info = shown.json()
    assert isinstance(info["capabilities"], list) and "parent_model" in info["details"]
    assert "thinking" not in info["capabilities"]  # else the CLI would send think:true
    reply = call(server, "POST", "/api/generate", {"model": MODEL, "prompt": "Say hello.", "system": "",
                                                   "options": {"num_predict": 8}})
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("application/x-ndjson")
    parts = ndjson_lines(reply)
    assert "".join(p.get("response", "") for p in parts)
    final = parts[-1]
    assert final["done"] is True
    for key in ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count",
                "eval_duration"):
        assert isinstance(final[key], int), key


def test_interactive_run_loads_then_chats(server: GatewayServer) -> None:
    show_as_run(server, MODEL)
    load = call(server, "POST", "/api/generate", {"model": MODEL, "prompt": "", "suffix": "", "system": "",
                                                  "template": "", "options": None})
    assert load.status_code == 200
    assert ndjson_lines(load)[-1]["done"] is True
    history = [{"role": "user", "content": "Hi"}]
    turn = call(server, "POST", "/api/chat", {"model": MODEL, "messages": history, "options": {}})
    parts = ndjson_lines(turn)
    assert all(p["message"]["role"] == "assistant" for p in parts)
    answer = "".join(p["message"].get("content", "") for p in parts)
    history += [{"role": "assistant", "content": answer, "thinking": ""}, {"role": "user", "content": "Again"}]
    second = call(server, "POST", "/api/chat", {"model": MODEL, "messages": history, "options": {}})
    assert ndjson_lines(second)[-1]["done"] is True


def test_list(server: GatewayServer) -> None:
    models = call(server, "GET", "/api/tags").json()["models"]
    entry = next(m for m in models if m["name"] == f"{MODEL}:latest")
    assert len(entry["digest"]) >= 12 and entry["size"] > 0
    go_time(entry["modified_at"])


def test_show_uses_name(server: GatewayServer) -> None:
    shown = call(server, "POST", "/api/show", {"model": "", "system": "", "template": "", "verbose": False,
                                               "options": None, "name": MODEL}).json()
    info = shown["model_info"]
    arch = info["general.architecture"]
    assert arch == "llama"
    assert isinstance(info[f"{arch}.context_length"], int)
    assert isinstance(info[f"{arch}.embedding_length"], int)
    assert shown["details"]["parameter_size"] == "135M" and shown["details"]["quantization_level"] == "Q4_1"
    assert "completion" in shown["capabilities"]
    assert isinstance(shown.get("parameters", ""), str) and isinstance(shown.get("system", ""), str)


def test_ps_then_stop(server: GatewayServer) -> None:
    call(server, "POST", "/api/generate", {"model": MODEL, "prompt": "hi", "options": {"num_predict": 1}})
    running = call(server, "GET", "/api/ps").json()["models"]
    entry = next(m for m in running if m["name"] == f"{MODEL}:latest")
    assert len(entry["digest"]) >= 12 and entry["size"] > 0 and entry["size_vram"] == 0  # "100% CPU"
    assert entry["context_length"] > 0 and go_time(entry["expires_at"]) > datetime.now().astimezone()
    assert call(server, "POST", "/api/show", {"model": MODEL}).status_code == 200
    stop = call(server, "POST", "/api/generate", {"model": MODEL, "prompt": "", "suffix": "", "system": "",
                                                  "template": "", "options": None, "keep_alive": "0s"})
    assert ndjson_lines(stop)[-1]["done_reason"] == "unload"
    running = call(server, "GET", "/api/ps").json()["models"]
    assert all(m["name"] != f"{MODEL}:latest" or go_time(m["expires_at"]) <= datetime.now().astimezone()
               for m in running)


def test_stop_unknown_model_says_not_found(server: GatewayServer) -> None:
    shown = call(server, "POST", "/api/show", {"model": "ghost"})
    assert shown.status_code == 404 and "not found" in shown.json()["error"]


def test_copy_and_rm(server: GatewayServer) -> None:
    assert call(server, "POST", "/api/copy", {"source": MODEL, "destination": "cli-copy"}).status_code == 200
    assert "cli-copy:latest" in [m["name"] for m in call(server, "GET", "/api/tags").json()["models"]]
    call(server, "POST", "/api/generate", {"model": "cli-copy", "prompt": "", "keep_alive": "0s"})
    assert call(server, "DELETE", "/api/delete", {"name": "cli-copy"}).status_code == 200
    assert "cli-copy:latest" not in [m["name"] for m in call(server, "GET", "/api/tags").json()["models"]]


def test_version(server: GatewayServer) -> None:
    assert call(server, "GET", "/api/version").json()["version"]
