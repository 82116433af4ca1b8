"""Runner processes under real faults: a runner killed with SIGSEGV mid-stream (as llama.cpp #20824 does), an
unload, and SIGTERM to the gateway. The API process must survive all of it, say which model's runner died and
how, and serve the next request from a fresh runner."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import anthropic
import ollama
import openai
import pytest
import requests

from gateway.engine import huge_pages
from gateway.models.embedded import embedded_model_path
from gateway.time_slice import slice_ns
from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer, descendants
from tests.integration.test_model_pool import CACHE
from tests.models import GEMMA_MODEL_NAME, gemma_test_model
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

COUNTING = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15,"
LONG = 400  # tokens a stream is asked for: it is still running when the runner is killed


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    CACHE.mkdir(parents=True, exist_ok=True)
    gemma_test_model(CACHE)
    config = {**DEFAULT_CONFIG, "parallel": 2, "n_ctx": 1024, "keep_alive": -1,
              "models": [{"name": "smol-repacked", "path": embedded_model_path(), "repack": True},
                         {"name": "smol-mapped", "path": embedded_model_path(), "huge_pages": False}]}
    with GatewayServer(tmp_path_factory.mktemp("faults"), config, extra_args=["--models-dir", str(CACHE)],
                       log_level="info") as gw:
        yield gw
        assert gw.alive(), gw.log_tail()


def runner(server: GatewayServer, model: str = MODEL) -> dict:
    """The model's entry in /api/ps, loading it first if needed; `runner` holds pid, health, restarts..."""
    requests.post(server.url + "/api/generate", json={"model": model}, timeout=120).raise_for_status()
    models = requests.get(server.url + "/api/ps", timeout=10).json()["models"]
    return next(m for m in models if m["name"] in (model, model + ":latest"))["runner"]


def gone(pid: int) -> bool:
    """True once no process has this pid (the parent reaped it, so not even a zombie is left)."""
    return wait_for(lambda: not Path(f"/proc/{pid}").exists(), f"process {pid} to be reaped")


def kill_runner(server: GatewayServer, model: str = MODEL) -> int:
    pid = runner(server, model)["pid"]
    os.kill(pid, signal.SIGSEGV)
    assert gone(pid)
    return pid


def assert_restarted(server: GatewayServer, old_pid: int, model: str = MODEL) -> dict:
    """The next request is served by a fresh runner, and /api/ps counts the crash and the restart."""
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                           max_tokens=8, temperature=0)
    assert reply.choices[0].message.content
    facts = runner(server, model)
    assert facts["pid"] != old_pid and facts["health"] == "ok"
    assert facts["last_crash"] == "signal SIGSEGV" and facts["crashes"] >= 1 and facts["restarts"] >= 1
    return facts


def read_and_kill_at_first(stream, pid: int, is_text) -> None:
    """Read a stream to its end, killing the runner with SIGSEGV at the first event that carries text."""
    killed = False
    for event in stream:
        if not killed and is_text(event):
            os.kill(pid, signal.SIGSEGV)
            killed = True


def test_an_openai_stream_ends_with_an_in_band_error_naming_the_model_and_signal(server):
    pid = runner(server)["pid"]
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=120)
    stream = client.completions.create(model=MODEL, prompt=COUNTING, max_tokens=LONG, temperature=0, stream=True,
                                       extra_body={"min_tokens": LONG})
    chunks = iter(stream)
    assert next(chunks).choices[0].text is not None
    os.kill(pid, signal.SIGSEGV)
    with pytest.raises(openai.APIError) as info:
        for _ in chunks:
            pass
    assert f"`{MODEL}`" in str(info.value) and "SIGSEGV" in str(info.value)
    assert_restarted(server, pid)


def test_an_anthropic_stream_ends_with_an_error_event(server):
    pid = runner(server)["pid"]
    client = anthropic.Anthropic(base_url=server.url, api_key="x", max_retries=0, timeout=120)
    messages = [{"role": "user", "content": "Count from 1 to 300: " + COUNTING}]
    with pytest.raises(anthropic.APIStatusError) as info, \
            client.messages.stream(model=MODEL, max_tokens=LONG, messages=messages,
                                   extra_body={"temperature": 0}) as stream:
        read_and_kill_at_first(stream, pid, lambda event: event.type == "content_block_delta")
    assert "SIGSEGV" in str(info.value) and MODEL in str(info.value)
    assert_restarted(server, pid)


def test_an_ollama_stream_ends_with_an_error_line(server):
    pid = runner(server)["pid"]
    client = ollama.Client(host=server.url, timeout=120)
    stream = client.generate(model=MODEL, prompt=COUNTING, raw=True, stream=True,
                             options={"temperature": 0, "num_predict": LONG})
    with pytest.raises(ollama.ResponseError) as info:
        read_and_kill_at_first(stream, pid, lambda part: bool(part.response))
    assert "SIGSEGV" in str(info.value) and MODEL in str(info.value)
    assert_restarted(server, pid)


def test_a_request_waiting_for_its_whole_answer_gets_a_503_and_other_models_keep_serving(server):
    pid = runner(server)["pid"]
    result: dict = {}

    def ask() -> None:
        result["response"] = requests.post(server.url + "/v1/completions", timeout=120, json={
            "model": MODEL, "prompt": COUNTING, "max_tokens": LONG, "min_tokens": LONG, "temperature": 0})

    thread = threading.Thread(target=ask)
    thread.start()
    wait_for_tokens(server)
    os.kill(pid, signal.SIGSEGV)
    thread.join(60)
    response = result["response"]
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "runner_terminated" and "SIGSEGV" in error["message"] and MODEL in error["message"]
    other = ollama.Client(host=server.url, timeout=120).generate(model=GEMMA_MODEL_NAME, prompt="Hi",
                                                                 options={"num_predict": 4})
    assert other.done
    assert_restarted(server, pid)


def wait_for_tokens(server: GatewayServer) -> None:
    """Until a running request has generated a token: the kill lands mid-generation, not before."""
    wait_for(lambda: any(r["status"] == "running" and r["tokens_generated"]
                         for r in requests.get(server.url + "/api/requests", timeout=10).json()["requests"]),
             "a request to start generating", interval=0.02)


def test_a_runner_that_dies_before_its_first_token_with_repacking_on_comes_back_with_it_off(server):
    facts = runner(server, "smol-repacked")
    assert facts["weight_repacking"] is True
    kill_runner(server, "smol-repacked")
    facts = assert_restarted(server, facts["pid"], "smol-repacked")
    assert facts["weight_repacking"] is False and "repacking turned off" in facts["note"]
    assert "repacking" in server.log_tail(200)


def test_unloading_a_model_ends_its_runner(server):
    pid = runner(server, GEMMA_MODEL_NAME)["pid"]
    requests.post(server.url + "/api/generate", json={"model": GEMMA_MODEL_NAME, "keep_alive": 0},
                  timeout=60).raise_for_status()
    assert gone(pid)


def test_the_api_threads_have_the_short_slice_and_the_runners_threads_the_kernels_default(server):
    """The runner is started from a request thread, which has the short slice: it must not pass it on."""
    said = next(line for line in server.log_path.read_text().splitlines() if "HTTP threads' time slice:" in line)
    pid = runner(server)["pid"]
    worker = next(p for p in descendants(server.proc.pid) if pid in descendants(p))
    api, decode = ({slice_ns(int(task.name)) for task in Path(f"/proc/{p}/task").iterdir()} - {None}
                   for p in (worker, pid))
    if said.endswith("100 µs"):
        assert api == {100_000} and decode and 100_000 not in decode
    else:  # a kernel before 6.12: nothing changed, and the log said why
        assert "the kernel's default (" in said and api == decode


def test_weights_are_on_huge_pages_where_the_system_has_them_and_mapped_from_the_file_when_turned_off(server):
    """What /api/ps says against the runner's own memory map: with huge pages the GGUF file is not mapped and
    part of the runner's memory is on huge pages; with `huge_pages: false` the file is mapped as before."""
    path = os.path.realpath(embedded_model_path())
    default, mapped = runner(server), runner(server, "smol-mapped")
    assert "model weights" in server.log_path.read_text()  # the startup line says which
    maps = {name: Path(f"/proc/{facts['pid']}/maps").read_text() for name, facts in
            (("default", default), ("mapped", mapped))}
    assert mapped["huge_pages"] is False and path in maps["mapped"]
    if huge_pages.unavailable_reason() is None:
        assert default["huge_pages"] is True and default["huge_page_bytes"] > 0
        assert path not in maps["default"]
        environ = Path(f"/proc/{default['pid']}/environ").read_bytes().split(b"\0")
        tunables = next(item for item in environ if item.startswith(b"GLIBC_TUNABLES="))
        assert b"glibc.malloc.hugetlb=1" in tunables.split(b"=", 1)[1].split(b":")
    else:  # no huge pages here: the default falls back to mapping, and says so
        assert default["huge_pages"] is False and path in maps["default"]


def test_the_dashboard_feed_shows_crashes_and_restarts(server):
    pid = kill_runner(server)
    assert_restarted(server, pid)
    entry = next(m for m in _first_models_event(server) if m["name"] == MODEL)
    assert entry["restarts"] >= 1 and entry["crashes"] >= 1 and entry["last_crash"]["reason"] == "signal SIGSEGV"


def _first_models_event(server: GatewayServer) -> list[dict]:
    with requests.get(server.url + "/api/events", stream=True, timeout=10) as feed:
        for line in feed.iter_lines():
            if line.startswith(b"data:"):
                data = json.loads(line[5:])
                if "models" in data:
                    return data["models"]
    pytest.fail("the event feed sent no models")


def test_sigterm_to_the_gateway_leaves_no_runner(tmp_path):
    with GatewayServer(tmp_path, {**DEFAULT_CONFIG, "parallel": 1, "n_ctx": 512}) as gw:
        pid = runner(gw)["pid"]
        gw.proc.send_signal(signal.SIGTERM)
        gw.proc.wait(30)
    assert gone(pid)
