"""People arriving from the seed service keep its config file and its curl lines: its key names, its paths
`/api/chat/completions` and `/api/models`, its default model and its request timeout. The server here runs on a
config written with the seed's keys only, and every check is made on the wire."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import openai
import pytest
import requests

from gateway.models.embedded import embedded_model_path
from tests.integration.support import GatewayServer

pytestmark = pytest.mark.integration

SEED_MODEL = "seed-model"
CONTEXT = 8192
TIMEOUT = 3  # seconds; the long generations below cannot finish in it on any CPU
LONG = 7000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    work = tmp_path_factory.mktemp("seed")
    models = work / "models"
    models.mkdir()
    (models / f"{SEED_MODEL}.gguf").symlink_to(embedded_model_path())
    config: dict[str, Any] = {  # the seed's service_config.yaml keys
        "models_dir": str(models), "manifests_dir": str(work / "ollama" / "manifests"),
        "default_context_size": CONTEXT, "default_model": SEED_MODEL, "tensor_split": "1,1", "gpu_layers": 0,
        "threads": 2, "batch_size": 256, "request_timeout": TIMEOUT, "preserve_think_tags": True,
    }
    with GatewayServer(work, config, log_level="info") as running:
        yield running


def test_the_seed_keys_are_in_force_with_a_deprecation_note_each(server: GatewayServer) -> None:
    log = server.log_path.read_text()
    for old, new in (("models_dir", "models_dirs"), ("manifests_dir", "ollama_models"),
                     ("default_context_size", "n_ctx"), ("gpu_layers", "n_gpu_layers"), ("threads", "n_threads"),
                     ("batch_size", "n_batch"), ("preserve_think_tags", "keep_think_tags")):
        assert f"`{old}` is the seed service's name for `{new}`" in log
    running = requests.get(server.url + "/api/ps", timeout=10).json()["models"]
    assert [m["name"] for m in running] == [SEED_MODEL + ":latest"]  # the default model is the one loaded at start
    assert running[0]["context_length"] == CONTEXT and running[0]["runner"]["context_reason"].startswith("configured")


def test_the_seed_curl_lines(server: GatewayServer) -> None:
    body = {"model": SEED_MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 8}
    chat = requests.post(server.url + "/api/chat/completions", json=body, timeout=60)
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    assert chat.json()["choices"][0]["message"]["content"]
    with requests.post(server.url + "/api/chat/completions", json={**body, "stream": True}, stream=True,
                       timeout=60) as streamed:
        lines = [line for line in streamed.iter_lines(decode_unicode=True) if line]
    assert lines[-1] == "data: [DONE]" and json.loads(lines[0][6:])["object"] == "chat.completion.chunk"
    listed = requests.get(server.url + "/api/models", timeout=10).json()["data"]
    sizes = {m["id"]: m["context_size"] for m in listed}
    assert sizes[SEED_MODEL] == CONTEXT and sizes["smollm2-135m-instruct"] == CONTEXT
    assert all(m["context_reason"] for m in listed)


def test_a_request_that_names_no_model_gets_the_default_model(server: GatewayServer) -> None:
    tgi = requests.post(server.url + "/generate", json={"inputs": "Hello", "parameters": {"max_new_tokens": 4}},
                        timeout=60)
    assert tgi.status_code == 200
    records = requests.get(server.url + "/api/requests", timeout=10).json()["requests"]
    assert [r["model"] for r in records if r["endpoint"] == "/generate"] == [SEED_MODEL]


def test_a_generation_past_request_timeout_gets_the_families_timeout_error(server: GatewayServer) -> None:
    body = {"model": SEED_MODEL, "prompt": "Count: 1, 2, 3,", "max_tokens": LONG, "min_tokens": LONG}
    plain = requests.post(server.url + "/v1/completions", json=body, timeout=120)
    assert plain.status_code == 504 and plain.headers["x-should-retry"] == "false"
    error = plain.json()["error"]
    assert error["code"] == "request_timeout" and f"request_timeout ({TIMEOUT} s)" in error["message"]

    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    stream = client.completions.create(model=SEED_MODEL, prompt="Count: 1, 2, 3,", max_tokens=LONG, stream=True,
                                       extra_body={"min_tokens": LONG})
    texts = []
    with pytest.raises(openai.APIError, match="request_timeout"):
        for chunk in stream:
            texts.append(chunk.choices[0].text)
    assert "".join(texts)  # it had streamed before the timeout ended it

    records = requests.get(server.url + "/api/requests", params={"status": "failed"}, timeout=10).json()["requests"]
    timed_out = [r for r in records if "request_timeout" in (r.get("error") or "")]
    assert len(timed_out) == 2 and all(r["finish_reason"] == "timeout" for r in timed_out)


def test_check_reads_the_seed_flags(tmp_path: Path) -> None:
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-m", "gateway", "check", "--model-dir", str(tmp_path), "--debug",
                          "--default-tensor-split", "3,1"], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2], env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    values = dict(line.split(" = ", 1) for line in out.stdout.splitlines() if " = " in line and "#" in line)
    assert values["models_dirs"].startswith(json.dumps([str(tmp_path)]))
    assert values["log_level"].startswith('"debug"') and values["tensor_split"].startswith("[3.0, 1.0]")
