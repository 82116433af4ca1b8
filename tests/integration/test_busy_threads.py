"""Every HTTP thread a generation may take is busy: `/health` and listings still answer, a further generation
is refused at once (429, which clients retry) instead of waiting behind the streams, and once the streams end
generations work again."""

from __future__ import annotations

import json
import threading

import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

HTTP_THREADS = 6
LONG_SLOTS = 4  # all but max(2, threads // 16)


@pytest.fixture(scope="module")
def server_config() -> dict:
    return {**DEFAULT_CONFIG, "http_threads": HTTP_THREADS}


def chat(stream: bool, tokens: int) -> dict:
    return {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "stream": stream,
            "max_tokens": tokens, "min_tokens": tokens}


def test_health_answers_while_every_generation_thread_is_busy(server):
    streams = [requests.post(server.url + "/v1/chat/completions", json=chat(True, 1800), stream=True, timeout=30)
               for _ in range(LONG_SLOTS)]
    stop = threading.Event()
    readers = [threading.Thread(target=_drain, args=(r, stop), daemon=True) for r in streams]
    try:
        for reader in readers:
            reader.start()
        assert all(r.status_code == 200 for r in streams)
        health = requests.get(server.url + "/health", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        assert requests.get(server.url + "/api/tags", timeout=10).status_code == 200
        refused = requests.post(server.url + "/v1/chat/completions", json=chat(False, 4), timeout=10)
        assert refused.status_code == 429, refused.text
        assert "busy" in refused.json()["error"]["message"]
        ollama = requests.post(server.url + "/api/chat", json={"model": MODEL, "stream": False, "messages": [
            {"role": "user", "content": "Hi"}]}, timeout=10)
        # Ollama's answer to a full server is 503 "server busy"; its exact words tell it from a crash's 500
        assert ollama.status_code == 503, ollama.text
        assert ollama.json() == {"error": refused.json()["error"]["message"]}
    finally:
        stop.set()
        for response in streams:
            response.close()
    for reader in readers:
        reader.join(timeout=10)
    # the server notices the hang-ups within its poll interval, then frees their threads
    def freed() -> list[requests.Response] | None:  # a response is falsy when not ok: wrap it
        r = requests.post(server.url + "/v1/chat/completions", json=chat(False, 4), timeout=60)
        return None if r.status_code == 429 else [r]

    after = wait_for(freed, "the hung-up streams' threads to be freed", interval=0.5)[0]
    assert after.status_code == 200, after.text
    assert json.loads(after.text)["choices"][0]["message"]["content"]


def _drain(response: requests.Response, stop: threading.Event) -> None:
    try:
        for _ in response.iter_lines():
            if stop.is_set():
                return
    except (requests.RequestException, AttributeError):  # closed under us: the test is done with it
        return
