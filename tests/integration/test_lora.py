"""A LoRA adapter in a model's config reaches llama.cpp: with scale 1 it changes the greedy answer, with scale
0 the answer is the base model's."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest
import requests

from gateway.models.embedded import embedded_model_path
from tests.integration.support import GatewayServer
from tests.lora_fixture import write_lora

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    work = tmp_path_factory.mktemp("lora")
    adapter = write_lora(work / "ffn-down-lora.gguf", embedded_model_path())
    base = {"path": embedded_model_path(), "n_ctx": 512, "parallel": 1}
    models = [{"name": "plain", **base},
              {"name": "lora-off", **base, "lora": [{"path": str(adapter), "scale": 0.0}]},
              {"name": "lora-on", **base, "lora": [str(adapter)]}]
    with GatewayServer(work, {"models": models, "embedded_model": False, "max_loaded_models": 3}) as running:
        yield running


def answer(server: GatewayServer, model: str) -> str:
    r = requests.post(server.url + "/v1/completions", timeout=120, json={
        "model": model, "prompt": "The capital of France is", "max_tokens": 12, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_the_adapter_changes_the_answer_and_scale_zero_leaves_the_base_model(server: GatewayServer) -> None:
    plain, off, on = answer(server, "plain"), answer(server, "lora-off"), answer(server, "lora-on")
    assert off == plain
    assert on != plain


def test_an_adapter_that_does_not_fit_the_model_fails_its_load_with_a_clear_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken-lora.gguf"
    broken.write_bytes(b"GGUF" + bytes(64))
    config = {"models": [{"name": "broken", "path": embedded_model_path(), "n_ctx": 512, "lora": [str(broken)]}],
              "default_model": "smollm2-135m-instruct"}  # the one loaded at start
    with GatewayServer(tmp_path, config) as server:
        r = requests.post(server.url + "/v1/completions", timeout=120,
                          json={"model": "broken", "prompt": "Hi", "max_tokens": 2})
        assert r.status_code == 503 and "broken" in r.json()["error"]["message"]
        assert "LoRA adapter" in server.log_path.read_text()
