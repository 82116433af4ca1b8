"""Two different real models (SmolLM2 and Gemma 3) in one server: served at the same time, listed by /api/ps,
and the least recently used one unloaded when `max_loaded_models` is reached."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

import ollama
import pytest

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer
from tests.models import GEMMA_MODEL_NAME, gemma_test_model

pytestmark = pytest.mark.integration

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-gateway" / "test-models"


@pytest.fixture(scope="module")
def models_dir() -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    gemma_test_model(CACHE)
    return CACHE


def serve(tmp_path_factory: pytest.TempPathFactory, models_dir: Path, **config) -> GatewayServer:
    return GatewayServer(tmp_path_factory.mktemp("gateway-pool"), {**DEFAULT_CONFIG, "parallel": 2, **config},
                         extra_args=["--models-dir", str(models_dir)])


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, models_dir) -> Iterator[ollama.Client]:
    with serve(tmp_path_factory, models_dir) as gw:
        yield ollama.Client(host=gw.url, timeout=180)


def test_two_models_answer_at_the_same_time(two_models: ollama.Client) -> None:
    results: dict[str, ollama.GenerateResponse] = {}

    def ask(name: str) -> None:
        results[name] = two_models.generate(name, prompt="The sky is", raw=True,
                                            options={"temperature": 0, "num_predict": 16})

    threads = [threading.Thread(target=ask, args=(name,)) for name in (MODEL, GEMMA_MODEL_NAME)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert set(results) == {MODEL, GEMMA_MODEL_NAME}
    assert results[MODEL].response != results[GEMMA_MODEL_NAME].response
    running = {m.model: m for m in two_models.ps().models}
    assert {f"{MODEL}:latest", f"{GEMMA_MODEL_NAME}:latest"} <= set(running)
    gemma = two_models.show(GEMMA_MODEL_NAME)
    assert gemma.modelinfo["general.architecture"] == "gemma3"


def test_least_recently_used_model_leaves_at_the_limit(tmp_path_factory, models_dir) -> None:
    with serve(tmp_path_factory, models_dir, max_loaded_models=1) as gw:
        client = ollama.Client(host=gw.url, timeout=180)
        assert [m.model for m in client.ps().models] == [f"{MODEL}:latest"]  # preloaded default
        client.generate(GEMMA_MODEL_NAME, prompt="Hi", raw=True, options={"num_predict": 2})
        assert [m.model for m in client.ps().models] == [f"{GEMMA_MODEL_NAME}:latest"]
        again = client.generate(MODEL, prompt="Hi", raw=True, options={"num_predict": 2})
        assert again.load_duration > 0
        assert [m.model for m in client.ps().models] == [f"{MODEL}:latest"]
