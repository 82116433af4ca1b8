"""The prompt cache on the real server and model: a long shared prefix reused by every family from whichever
sequence serves it, the persistent cache across restarts (and its bad files), `POST /api/cache/warm`, and an
agent-noise rule that keeps a date line from defeating the prefix cache."""

from __future__ import annotations

import concurrent.futures
import json
import re
from pathlib import Path

import anthropic
import pytest
import requests

from gateway.engine.executor import Executor, ExecutorSettings
from gateway.engine.jobs import Finished, GenerationJob, Piece
from gateway.engine.prompt_store import PromptCacheSettings
from gateway.models.embedded import embedded_model_path
from gateway.types import SamplingParams
from tests.integration.support import ALIAS, MODEL, GatewayServer
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

TOPICS = ["rivers", "bridges", "harbours", "mills", "roads", "wells", "markets", "walls", "gardens", "towers"]
SYSTEM = "You are the archivist of an old town. These are the town's records.\n" + "\n".join(
    f"Record {i}: the {TOPICS[i % 10]} of district {i // 10} were inspected in year {1700 + 7 * i}, and the "
    f"inspector wrote that {TOPICS[(3 * i) % 10]} near the {TOPICS[(7 * i) % 10]} needed {i % 5 + 2} new stones."
    for i in range(54))
OTHER_SYSTEM = SYSTEM.replace("archivist", "mayor").replace("records", "accounts")


def config(cache_dir: Path) -> dict:
    return {"aliases": {ALIAS: MODEL, "claude-*": MODEL}, "parallel": 4, "n_ctx": 4096,
            "prompt_cache_dir": str(cache_dir), "prompt_cache_min_tokens": 256}


def chat(server: GatewayServer, question: str, system: str = SYSTEM) -> dict:
    r = requests.post(server.url + "/v1/chat/completions", timeout=300, json={
        "model": ALIAS, "max_tokens": 4, "temperature": 0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": question}]})
    assert r.status_code == 200, r.text
    return r.json()["usage"]


def cached(usage: dict) -> int:
    return usage["prompt_tokens_details"]["cached_tokens"]


def system_tokens(server: GatewayServer, text: str = SYSTEM) -> int:
    r = requests.post(server.url + "/tokenize", timeout=60, json={"model": MODEL, "prompt": text})
    return r.json()["count"]


def cache_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.kvc"))


def wait_for_files(folder: Path, count: int) -> list[Path]:
    return wait_for(lambda: len(cache_files(folder)) >= count and cache_files(folder), f"{count} cache files")


def dashboard_model(server: GatewayServer) -> dict:
    """The model as the dashboard gets it: from the first event (`snapshot`) of /api/events."""
    with requests.get(server.url + "/api/events", stream=True, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith(b"data:"):
                return json.loads(line[5:])["models"][0]
    raise AssertionError("no snapshot")


def metric(server: GatewayServer, name: str) -> float:
    text = requests.get(server.url + "/metrics", timeout=30).text
    match = re.search(rf'^{name}{{model="{MODEL}"}} (\S+)$', text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prompt-cache")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path):
    with GatewayServer(tmp_path_factory.mktemp("gateway-prompt-cache"), config(cache_dir)) as gw:
        yield gw
        if not gw.alive():
            pytest.fail(f"the gateway died during the module's tests:\n{gw.log_tail()}")


def test_a_long_prefix_is_reused_whatever_sequence_serves_it_and_every_family_shows_it(server, cache_dir):
    n_system = system_tokens(server)
    assert n_system > 1900
    assert cached(chat(server, "Which district had the most stones?")) == 0
    claude = anthropic.Anthropic(base_url=server.url, api_key="k", max_retries=0, timeout=300)

    def openai_usage(question: str) -> int:
        return cached(chat(server, question))

    def anthropic_usage(question: str) -> int:
        msg = claude.messages.create(model="claude-test", max_tokens=4, system=SYSTEM,
                                     messages=[{"role": "user", "content": question}], extra_body={"temperature": 0})
        assert msg.usage.input_tokens + msg.usage.cache_read_input_tokens > n_system
        return msg.usage.cache_read_input_tokens

    def responses_usage(question: str) -> int:
        r = requests.post(server.url + "/v1/responses", timeout=300, json={
            "model": ALIAS, "instructions": SYSTEM, "input": question, "max_output_tokens": 16, "temperature": 0})
        assert r.status_code == 200, r.text
        return r.json()["usage"]["input_tokens_details"]["cached_tokens"]

    # at once, so they run on different sequences: each copies the prefix from the one that holds it
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        counts = list(pool.map(lambda call: call[0](call[1]), [
            (openai_usage, "Which district had the most mills?"), (openai_usage, "When were the towers inspected?"),
            (anthropic_usage, "What needed new stones?"), (responses_usage, "Name one river.")]))
    assert all(count >= n_system for count in counts), counts
    assert len(wait_for_files(cache_dir, 1)) == 1  # the system prompt, saved once


def test_after_a_restart_the_saved_prefix_is_restored_for_the_first_request(server, cache_dir, tmp_path):
    assert len(wait_for_files(cache_dir, 1)) == 1
    with GatewayServer(tmp_path, config(cache_dir)) as again:
        usage = chat(again, "What was inspected in year 1707?")
        assert cached(usage) >= system_tokens(again)
        assert metric(again, "llm_gateway_prompt_cache_hits_total") == 1
        assert metric(again, "llm_gateway_prompt_cache_restored_tokens_total") == cached(usage)


def test_a_truncated_cache_file_is_removed_and_the_server_keeps_serving(server, cache_dir, tmp_path):
    [path] = wait_for_files(cache_dir, 1)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    with GatewayServer(tmp_path, config(cache_dir)) as again:
        assert not path.exists()
        assert metric(again, "llm_gateway_prompt_cache_removed_total") == 1
        assert cached(chat(again, "Which walls were inspected?")) == 0
        assert len(wait_for_files(cache_dir, 1)) == 1  # saved again by that prefill


def test_a_corrupt_cache_file_never_reaches_llama_cpp(server, cache_dir, tmp_path):
    [path] = wait_for_files(cache_dir, 1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, so only the checksum can tell
    path.write_bytes(bytes(data))
    with GatewayServer(tmp_path, config(cache_dir)) as again:
        assert cached(chat(again, "Which gardens were inspected?")) == 0
        assert metric(again, "llm_gateway_prompt_cache_removed_total") == 1
        assert again.alive()
        assert cached(chat(again, "Which towers were inspected?")) >= system_tokens(again)


def test_the_warm_endpoint_fills_the_cache_for_the_requests_that_follow(server, cache_dir):
    before = len(cache_files(cache_dir))
    r = requests.post(server.url + "/api/cache/warm", timeout=300,
                      json={"model": ALIAS, "messages": [{"role": "system", "content": OTHER_SYSTEM}]})
    assert r.status_code == 200, r.text
    warm = r.json()
    assert warm["model"] == MODEL and warm["persisted"] is True
    assert warm["cached_tokens"] == warm["prompt_tokens"] > system_tokens(server, OTHER_SYSTEM)
    assert warm["reused_tokens"] < 100 and warm["seconds"] > 0
    assert cached(chat(server, "Who keeps the accounts?", OTHER_SYSTEM)) >= warm["prompt_tokens"]
    assert len(wait_for_files(cache_dir, before + 1)) == before + 1
    # Anthropic's shape (told by its top-level `system`): the system prompt is in the cache already
    r = requests.post(server.url + "/api/cache/warm", timeout=300, json={
        "model": "claude-test", "max_tokens": 1, "system": OTHER_SYSTEM,
        "messages": [{"role": "user", "content": "Who keeps the accounts?"}]})
    assert r.status_code == 200, r.text
    assert r.json()["reused_tokens"] >= warm["prompt_tokens"]
    r = requests.post(server.url + "/api/cache/warm?family=tgi", timeout=300,
                      json={"inputs": "A short prompt to keep."})
    assert r.status_code == 200, r.text
    assert r.json()["persisted"] is False  # below prompt_cache_min_tokens
    assert metric(server, "llm_gateway_prompt_cache_warm_total") == 3
    def reported() -> dict | None:  # a file's writer reports its entry after the warm has answered
        cache = dashboard_model(server)["prompt_cache"]
        return cache if cache["entries"] == len(cache_files(cache_dir)) else None

    cache = wait_for(reported, "the cache to report every file it wrote")
    assert cache["warms"] == 3 and cache["bytes"] > 0


def test_a_warm_body_that_no_family_reads_is_a_400_naming_the_field(server):
    r = requests.post(server.url + "/api/cache/warm", timeout=30, json={"model": ALIAS})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = requests.post(server.url + "/api/cache/warm?family=cohere", timeout=30, json={"model": ALIAS, "prompt": "x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "family"


def test_a_date_line_that_changes_does_not_defeat_the_prefix_cache(server):
    body = "\n".join(f"Guideline {i}: answer questions about topic {i} politely and briefly." for i in range(40))
    first = chat(server, "Hello?", f"Today's date is 2026-11-29.\n{body}")
    second = chat(server, "Hello?", f"Today's date is 2026-11-30.\n{body}")
    assert cached(second) >= system_tokens(server, body) > cached(first)
    text = requests.get(server.url + "/metrics", timeout=30).text
    assert f'llm_gateway_prompt_rule_applied_total{{model="{MODEL}",rule="current-date"}} 2.0' in text


def test_a_restored_prefix_gives_the_same_greedy_text_as_a_computed_one(tmp_path):
    """Engine level: one runner's saved state, loaded by the next, continues exactly as computed tokens do."""
    settings = ExecutorSettings(parallel=2, n_ctx=2048, prompt_cache=PromptCacheSettings(str(tmp_path), 256))

    def generate(executor: Executor, prompt: list[int], prefix: int) -> tuple[Finished, str]:
        handle = executor.submit(GenerationJob(prompt, SamplingParams(temperature=0), 12, cache_prefix=prefix))
        text = ""
        while True:
            _, event = handle.sink.get(timeout=120)
            text += event.text if isinstance(event, Piece) else ""
            if isinstance(event, Finished):
                return event, text

    first = Executor("smollm2", embedded_model_path(), settings)
    try:
        prefix = first.model.tokenize(SYSTEM[:2400], False, True)
        prompt = prefix + first.model.tokenize(" The oldest record is about", False, True)
        computed, computed_text = generate(first, prompt, len(prefix))
    finally:
        first.close()  # waits for the writer
    assert computed.cached_tokens == 0 and computed.persisted and len(cache_files(tmp_path)) == 1
    second = Executor("smollm2", embedded_model_path(), settings)
    try:
        restored, restored_text = generate(second, prompt, len(prefix))
    finally:
        second.close()
    assert restored.cached_tokens == len(prefix)
    assert restored_text == computed_text


def turn(server: GatewayServer, messages: list[dict]) -> tuple[str, dict]:
    r = requests.post(server.url + "/v1/chat/completions", timeout=120, json={
        "model": ALIAS, "max_tokens": 8, "temperature": 0, "messages": messages})
    assert r.status_code == 200, r.text
    body = r.json()
    return body["choices"][0]["message"]["content"], body["usage"]


@pytest.mark.parametrize("parked_kv_max_bytes", [-1, 0])
def test_a_conversation_whose_sequence_serves_another_comes_back_from_the_park(tmp_path, parked_kv_max_bytes):
    """Two conversations on two sequences: the second takes the first one's sequence (it shares the template's
    opening with it), so its cells are overwritten. Parked first (the default), the first conversation's next turn
    gets its state back and counts it as cached; with parking off it is computed again. `/api/ps` shows the park."""
    cfg = {"aliases": {ALIAS: MODEL}, "parallel": 2, "n_ctx": 2048, "parked_kv_max_bytes": parked_kv_max_bytes}
    with GatewayServer(tmp_path, cfg) as gw:
        rome = [{"role": "system", "content": "You are a guide to the city of Rome and its long history."},
                {"role": "user", "content": "Name one old bridge over the river."}]
        answer, first = turn(gw, rome)
        turn(gw, [{"role": "system", "content": "You write short recipes for bread."},
                  {"role": "user", "content": "What does a sourdough starter need?"}])
        _, second = turn(gw, [*rome, {"role": "assistant", "content": answer},
                              {"role": "user", "content": "And one old church?"}])
        runner = requests.get(gw.url + "/api/ps", timeout=30).json()["models"][0]["runner"]
    if parked_kv_max_bytes:
        assert cached(second) >= first["prompt_tokens"] - 1
        assert runner["parked"]["restored"] >= 1 and runner["parked"]["parked"] >= 2
    else:
        assert cached(second) < first["prompt_tokens"] // 2
        assert "parked" not in runner
