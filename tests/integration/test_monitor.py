"""The request tracker, progress endpoints, event feed and Prometheus metrics on the real server and model: a
stream of every family shows up running with a growing token count and then completed, a cancel ends a stream
the way a normal stop does, and the metrics move by exactly the requests sent."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from typing import Any, Callable, Iterator

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer
from tests.waiting import wait_for

pytestmark = pytest.mark.integration

STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
STORY_TEXT = "Once upon a time, in a land far away, there lived a dragon who"
NO_EOS = {"0": -100, "2": -100, "4": -100}  # SmolLM2's end-of-generation ids, for requests that must run long
TOKENS = 40  # enough to watch a stream grow, short enough to read to its end quickly on a slow machine
LONG = 1500  # a stream that only a cancel ends in reasonable time (within the 2048-token test context)
FINAL = ("completed", "cancelled", "failed")
ANTHROPIC = {"anthropic-version": "2023-06-01", "x-api-key": "test"}

# family → (path, body, headers)
STREAMS: dict[str, tuple[str, dict[str, Any], dict[str, str]]] = {
    "openai": ("/v1/chat/completions", {"model": MODEL, "messages": STORY, "max_tokens": TOKENS, "stream": True,
                                        "temperature": 0, "logit_bias": NO_EOS}, {}),
    "anthropic": ("/v1/messages", {"model": MODEL, "messages": STORY, "max_tokens": TOKENS, "stream": True,
                                   "temperature": 0}, ANTHROPIC),
    "ollama": ("/api/chat", {"model": MODEL, "messages": STORY, "stream": True,
                             "options": {"num_predict": TOKENS, "temperature": 0}}, {}),
    "tgi": ("/generate_stream", {"inputs": STORY_TEXT, "parameters": {"max_new_tokens": TOKENS}}, {}),
    "vllm": ("/generate", {"prompt": STORY_TEXT, "max_tokens": TOKENS, "stream": True, "ignore_eos": True,
                           "temperature": 0}, {}),
}


@pytest.fixture(scope="module")
def single_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """One sequence, so a second request has to queue."""
    config = {**DEFAULT_CONFIG, "parallel": 1}
    with GatewayServer(tmp_path_factory.mktemp("gateway-single"), config) as gw:
        yield gw


# -- helpers ----------------------------------------------------------------------------------------------------


def progress(server: GatewayServer, rid: str) -> dict[str, Any]:
    r = requests.get(f"{server.url}/api/progress/{rid}", timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def open_stream(server: GatewayServer, family: str, **changes: Any) -> tuple[requests.Response, str]:
    path, body, headers = STREAMS[family]
    body = {**body, **changes}
    r = requests.post(server.url + path, json=body, headers=headers, stream=True, timeout=(10, 120))
    assert r.status_code == 200, r.text
    return r, r.headers["X-Request-Id"]


def drain(response: requests.Response) -> list[str]:
    return [line for line in response.iter_lines(decode_unicode=True) if line]


def running(server: GatewayServer, rid: str) -> bool:
    record = progress(server, rid)
    assert record["status"] not in FINAL, f"it finished before it was seen running: {record}"
    return record["status"] == "running"


def wait_finished(server: GatewayServer, rid: str) -> dict[str, Any]:
    return wait_for(lambda: (p := progress(server, rid))["status"] in FINAL and p, f"request {rid} to finish")


def wait_idle(server: GatewayServer) -> None:
    """No request active: the counters are settled."""
    wait_for(lambda: not [r for r in requests.get(server.url + "/api/requests", timeout=10).json()["requests"]
                          if r["status"] not in FINAL], "every request to finish")


def parse_time(text: str) -> datetime:
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text[:-1] + "+00:00")


def scrape(server: GatewayServer) -> dict[tuple[str, tuple], float]:
    r = requests.get(server.url + "/metrics", timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def ended_properly(family: str, lines: list[str]) -> bool:
    """The family's own end of stream, as after a normal stop."""
    if family == "openai":
        return lines[-1] == "data: [DONE]"
    if family == "anthropic":
        return "event: message_stop" in lines
    return json.loads(lines[-1]).get("done") is True  # ollama


# -- a stream of every family -------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", list(STREAMS))
def test_a_stream_is_running_with_a_growing_token_count_then_completed(server: GatewayServer, family: str) -> None:
    response, rid = open_stream(server, family)
    with response:
        counts: list[int] = []

        def grew() -> bool:
            record = progress(server, rid)
            assert record["status"] not in FINAL, f"it finished before it was seen growing: {record}"
            if record["status"] == "running" and record["phase"] == "generating":
                counts.append(record["tokens_generated"])
            return len(set(counts)) >= 2

        wait_for(lambda: running(server, rid), "the request to run")
        listed = requests.get(server.url + "/api/requests", params={"status": "running"}, timeout=10).json()
        assert rid in [r["id"] for r in listed["requests"]]
        wait_for(grew, "the token count to grow")
        assert counts == sorted(counts)
        drain(response)
    record = wait_finished(server, rid)
    path = STREAMS[family][0]
    assert (record["status"], record["phase"], record["api"], record["endpoint"]) == ("completed", "done", family,
                                                                                       path)
    assert record["model"] == MODEL and record["stream"] is True and record["error"] is None
    assert record["finish_reason"] in ("stop", "length")
    assert record["tokens_generated"] >= max(counts) and record["tokens_generated"] <= TOKENS
    assert record["prompt_tokens"] > 0 and record["prompt_tokens_done"] == record["prompt_tokens"]
    assert record["tokens_per_second"] is None or record["tokens_per_second"] > 0
    times = [parse_time(record[k]) for k in ("queued_at", "started_at", "first_token_at", "finished_at")]
    assert times == sorted(times)


def test_a_finished_request_is_listed_and_filtered(server: GatewayServer) -> None:
    r = requests.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 3},
                      timeout=60)
    rid = r.headers["X-Request-Id"]
    record = wait_finished(server, rid)
    assert (record["status"], record["stream"], record["tokens_generated"]) == ("completed", False, 3)
    assert record["finish_reason"] == "length" and record["max_tokens"] == 3
    completed = requests.get(server.url + "/api/requests", params={"status": "completed", "model": MODEL},
                             timeout=10).json()["requests"]
    assert rid in [x["id"] for x in completed]
    assert all(x["status"] == "completed" and x["model"] == MODEL for x in completed)
    assert requests.get(server.url + "/api/requests", params={"model": "nothing"}, timeout=10).json() == \
        {"requests": []}


def test_a_request_for_an_unknown_model_is_recorded_failed(server: GatewayServer) -> None:
    r = requests.post(server.url + "/v1/chat/completions",
                      json={"model": "no-such-model", "messages": STORY, "max_tokens": 3}, timeout=60)
    assert r.status_code == 404
    record = wait_finished(server, r.headers["X-Request-Id"])
    assert record["status"] == "failed" and record["error"] and record["started_at"] is None


def test_unknown_ids_and_filters_are_refused(server: GatewayServer) -> None:
    r = requests.get(server.url + "/api/progress/0000", timeout=10)
    assert r.status_code == 404 and "0000" in r.json()["error"]
    assert requests.post(server.url + "/api/requests/0000/cancel", timeout=10).status_code == 404
    r = requests.get(server.url + "/api/requests", params={"status": "done"}, timeout=10)
    assert r.status_code == 400 and "`status`" in r.json()["error"]


# -- cancel -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["openai", "anthropic", "ollama"])
def test_cancel_ends_the_stream_the_way_a_stop_does(server: GatewayServer, family: str) -> None:
    tokens = {"openai": {"max_tokens": LONG}, "anthropic": {"max_tokens": LONG},
              "ollama": {"options": {"num_predict": LONG, "temperature": 0}}}[family]
    response, rid = open_stream(server, family, **tokens)
    with response:
        wait_for(lambda: progress(server, rid)["tokens_generated"] >= 3, "a few tokens")
        r = requests.post(f"{server.url}/api/requests/{rid}/cancel", timeout=10)
        assert r.status_code == 200 and r.json() == {"id": rid, "cancelled": True}
        lines = drain(response)  # the stream ends; the record below proves it ended early (fewer than LONG)
    assert ended_properly(family, lines), lines[-3:]
    record = wait_finished(server, rid)
    assert record["status"] == "cancelled" and record["tokens_generated"] < LONG
    assert requests.post(f"{server.url}/api/requests/{rid}/cancel", timeout=10).status_code == 409


# -- the event feed -----------------------------------------------------------------------------------------------


def read_events(lines: Iterator[str], until: Callable[[str, Any], bool], limit: int = 5000) -> list:
    """Events from one `iter_lines()` iterator, kept across calls (a second one would lose what the first
    buffered, and a collected one closes the socket). The feed never ends by itself (keepalives), so it is
    read for at most `limit` lines, however long they take."""
    events, name = [], None
    for count, line in enumerate(lines):
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            events.append((name, json.loads(line[6:])))
            if until(*events[-1]):
                return events
        if count >= limit:
            pytest.fail(f"no matching event in {limit} lines: {events[-5:]}")
    pytest.fail(f"the event stream ended: {events[-5:]}")


def test_the_event_feed_shows_a_request_from_arrival_to_end(server: GatewayServer) -> None:
    wait_idle(server)
    with requests.get(server.url + "/api/events", stream=True, timeout=(10, 60)) as feed:
        assert feed.headers["Content-Type"].startswith("text/event-stream")
        lines = feed.iter_lines(decode_unicode=True)
        (name, snapshot), = read_events(lines, lambda n, d: n == "snapshot")
        assert snapshot["models"][0]["name"] == MODEL and snapshot["running"] == 0
        assert {"n_ctx", "parallel", "busy", "kv_used", "size", "keep_alive_left"} <= set(snapshot["models"][0])
        result: dict[str, requests.Response] = {}
        body = {"model": MODEL, "messages": STORY, "max_tokens": 20, "temperature": 0}
        sender = threading.Thread(target=lambda: result.setdefault("r", requests.post(
            server.url + "/v1/chat/completions", json=body, timeout=60)))
        sender.start()
        events = read_events(lines, lambda n, d: n == "request" and d["status"] == "completed")
        if not any(n == "tick" and d["throughput"] for n, d in events):  # it ran within one tick
            events += read_events(lines, lambda n, d: n == "tick" and bool(d["throughput"]))
        sender.join(60)
    rid = result["r"].headers["X-Request-Id"]
    mine = [(n, d) for n, d in events if n in ("request", "progress") and d.get("id") == rid]
    statuses = [d["status"] for _, d in mine]
    assert statuses[0] == "queued" and statuses[-1] == "completed" and "running" in statuses
    assert mine[-1][1]["tokens_generated"] == result["r"].json()["usage"]["completion_tokens"]
    assert sum(c for n, d in events if n == "tick" for _, c in d["throughput"]) > 0


# -- metrics ------------------------------------------------------------------------------------------------------


def test_metrics_move_by_exactly_the_requests_sent(server: GatewayServer) -> None:
    wait_idle(server)
    before = scrape(server)
    usages = []
    for max_tokens in (2, 3, 4):
        r = requests.post(server.url + "/v1/chat/completions", timeout=60, json={
            "model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": max_tokens})
        usages.append(r.json()["usage"])
    stream, _ = open_stream(server, "ollama", options={"num_predict": 5})
    ollama_done = json.loads(drain(stream)[-1])
    wait_idle(server)
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    openai = {"api": "openai", "model": MODEL}
    assert delta("llm_gateway_requests_total", endpoint="/v1/chat/completions", status="completed", **openai) == 3
    assert delta("llm_gateway_requests_total", api="ollama", endpoint="/api/chat", model=MODEL,
                 status="completed") == 1
    assert delta("llm_gateway_generated_tokens_total", **openai) == sum(u["completion_tokens"] for u in usages)
    assert delta("llm_gateway_prompt_tokens_total", **openai) == sum(u["prompt_tokens"] for u in usages)
    cached = sum((u.get("prompt_tokens_details") or {}).get("cached_tokens", 0) for u in usages)
    assert delta("llm_gateway_prompt_cached_tokens_total", **openai) == cached
    assert delta("llm_gateway_generated_tokens_total", api="ollama", model=MODEL) == ollama_done["eval_count"]
    for histogram in ("time_to_first_token", "e2e_request_latency", "queue_wait"):
        assert delta(f"llm_gateway_{histogram}_seconds_count", model=MODEL) == 4, histogram
    generated = sum(u["completion_tokens"] for u in usages) + ollama_done["eval_count"]
    assert delta("llm_gateway_inter_token_latency_seconds_count", model=MODEL) == generated - 4
    assert after[("llm_gateway_models_loaded", ())] == 1
    assert after[("llm_gateway_requests_running", ())] == 0
    assert after[("llm_gateway_kv_cache_size_cells", (("model", MODEL),))] == DEFAULT_CONFIG["n_ctx"]
    assert 0 <= after[("llm_gateway_prefix_cache_hit_ratio", (("model", MODEL),))] <= 1
    assert all(name.startswith("llm_gateway_") for name, _ in after)


# -- queued, and the unload button's endpoint ----------------------------------------------------------------------


def test_a_request_waiting_for_a_sequence_shows_its_queue_position(single_server: GatewayServer) -> None:
    first, first_id = open_stream(single_server, "openai", max_tokens=LONG)
    with first:
        wait_for(lambda: running(single_server, first_id), "the first request to run")
        holder: dict[str, Any] = {}
        opener = threading.Thread(target=lambda: holder.update(zip(("r", "id"), open_stream(
            single_server, "openai", max_tokens=5), strict=True)))
        opener.start()
        queued = wait_for(lambda: [r for r in requests.get(single_server.url + "/api/requests",
                                                           params={"status": "queued"}, timeout=10).json()["requests"]
                                   if r["queue_position"] == 1], "the second request to queue")
        assert queued[0]["phase"] == "queued" and queued[0]["started_at"] is None
        second_id = queued[0]["id"]
        requests.post(f"{single_server.url}/api/requests/{first_id}/cancel", timeout=10)
        drain(first)
    opener.join(60)
    second = holder["r"]
    with second:
        drain(second)
    assert holder["id"] == second_id
    record = wait_finished(single_server, second_id)
    assert record["status"] == "completed" and record["queue_position"] is None


def test_unload_unloads_the_model_and_the_next_request_loads_it_again(server: GatewayServer) -> None:
    wait_idle(server)
    r = requests.post(f"{server.url}/api/models/{MODEL}/unload", timeout=30)
    assert r.status_code == 200 and r.json() == {"model": MODEL, "unloaded": True}
    wait_for(lambda: requests.get(server.url + "/api/ps", timeout=10).json()["models"] == [], "the model to go")
    assert requests.post(f"{server.url}/api/models/{MODEL}/unload", timeout=30).status_code == 404
    r = requests.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                      timeout=120)
    assert r.status_code == 200
    assert scrape(server)[("llm_gateway_models_loaded", ())] == 1


def test_progress_inside_the_clients_own_stream_on_request(server: GatewayServer) -> None:
    """With `X-Gateway-Progress: 1`, an SSE stream also carries `: progress {record}` comment lines through the
    phases; SSE clients skip comments, so the official SDKs still parse the stream unchanged."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Count to ten."}], "max_tokens": 12,
            "stream": True}
    r = requests.post(server.url + "/v1/chat/completions", json=body, headers={"X-Gateway-Progress": "1"},
                      stream=True, timeout=120)
    lines = [line for line in r.iter_lines(decode_unicode=True) if line]
    notes = [json.loads(line[len(": progress "):]) for line in lines if line.startswith(": progress ")]
    phases = [n["phase"] for n in notes]
    assert phases[0] == "queued" and "prompt" in phases and "generating" in phases
    assert all(n["id"] == r.headers["X-Request-Id"] for n in notes)
    assert lines[-1] == "data: [DONE]"
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="k", default_headers={"X-Gateway-Progress": "1"})
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=MODEL, messages=body["messages"], max_tokens=12, stream=True) if c.choices)
    assert text
    plain = requests.post(server.url + "/v1/chat/completions", json=body, stream=True, timeout=120)
    assert not any(line.startswith(b": progress") for line in plain.iter_lines())


def test_text_held_back_for_a_stop_string_is_no_extra_token(server: GatewayServer) -> None:
    """At the length cut, text that could still begin a stop string is released by one last event carrying no
    token of its own: the record (and so the metrics) count the tokens usage reports."""
    body = {"model": MODEL, "prompt": "The capital of France is", "max_tokens": 6, "temperature": 0}
    text = requests.post(server.url + "/v1/completions", json=body, timeout=60).json()["choices"][0]["text"]
    tail = text.rstrip()[-1]  # the answer's last character begins this stop string, so it is held back
    r = requests.post(server.url + "/v1/completions", timeout=60,
                      json={**body, "stop": [tail + "\u2603 never generated"]})
    choice, usage = r.json()["choices"][0], r.json()["usage"]
    assert choice["text"] == text and choice["finish_reason"] == "length"
    records = requests.get(server.url + "/api/requests", timeout=10).json()["requests"]
    record = next(rec for rec in records if rec["endpoint"] == "/v1/completions")  # the newest first
    assert record["tokens_generated"] == usage["completion_tokens"] == 6
