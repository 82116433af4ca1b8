"""The monitor's views on a bare Flask app with a tracker and a fake pool (no model): status codes, JSON shapes,
API keys, the event feed's frames, and the dashboard page."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from gateway.auth import Access
from gateway.config import Settings
from gateway.metrics import Metrics
from gateway.monitor import EventFeed, register_monitor
from gateway.polling import KEEPALIVE
from gateway.tracker import Tracker

KEY = "sk-monitor"
MODEL = "smollm2-135m-instruct"


@dataclass
class FakePool:
    loaded: list[str] = field(default_factory=lambda: [MODEL])

    def unload(self, name: str) -> bool:
        if name not in self.loaded:
            return False
        self.loaded.remove(name)
        return True

    def compute_summary(self) -> str:
        return "CPU only: this llama.cpp build cannot offload to a GPU"

    def view(self) -> list[dict[str, Any]]:
        return [{"name": name, "n_ctx": 2048, "parallel": 4, "busy": 0, "waiting": 0, "kv_used": 0, "size": 1,
                 "keep_alive_left": 300.0, "load_seconds": 0.5} for name in self.loaded]


@dataclass
class FakeGateway:
    pool: FakePool


def build(api_keys: list[str] | None = None, metrics: bool = True) -> tuple[Flask, Tracker, FakePool]:
    pool = FakePool()
    tracker = Tracker()
    m = Metrics(tracker) if metrics else None
    app = Flask("gateway")
    app.extensions["gateway"] = FakeGateway(pool)
    register_monitor(app, tracker, m, pool.view, Access(api_keys or []), Settings())
    return app, tracker, pool


def start(tracker: Tracker, rid: str, tokens: int = 0):
    rec = tracker.open(rid, "openai", "/v1/chat/completions", MODEL, True)
    rec.set_model(MODEL)
    rec.started(5, 0, 100)
    if tokens:
        rec.tokens(tokens)
    return rec


def test_progress_is_the_record_or_404() -> None:
    app, tracker, _ = build()
    start(tracker, "abc", tokens=3)
    client = app.test_client()
    r = client.get("/api/progress/abc")
    assert r.status_code == 200 and r.mimetype == "application/json"
    assert (r.json["id"], r.json["status"], r.json["tokens_generated"]) == ("abc", "running", 3)
    r = client.get("/api/progress/nope")
    assert r.status_code == 404 and r.json == {"error": "No request with id `nope`."}


def test_requests_lists_and_filters_and_rejects_an_unknown_status() -> None:
    app, tracker, _ = build()
    start(tracker, "a")
    start(tracker, "b").finish("completed", "stop")
    client = app.test_client()
    assert [r["id"] for r in client.get("/api/requests").json["requests"]] == ["a", "b"]
    assert [r["id"] for r in client.get("/api/requests?status=completed").json["requests"]] == ["b"]
    assert client.get(f"/api/requests?model={MODEL}&status=running").json["requests"][0]["id"] == "a"
    assert client.get("/api/requests?model=other").json == {"requests": []}
    r = client.get("/api/requests?status=done")
    assert r.status_code == 400 and "`status` must be one of queued, running" in r.json["error"]


def test_cancel_stops_a_running_request_and_says_so_for_others() -> None:
    app, tracker, _ = build()
    rec = start(tracker, "a")
    stopped = []
    rec.on_cancel(lambda: stopped.append(True))
    client = app.test_client()
    r = client.post("/api/requests/a/cancel")
    assert r.status_code == 200 and r.json == {"id": "a", "cancelled": True} and stopped == [True]
    rec.finish("cancelled", "stop")
    assert client.post("/api/requests/a/cancel").status_code == 409
    assert client.post("/api/requests/zzz/cancel").status_code == 404


def test_unload_unloads_a_loaded_model_and_404s_otherwise() -> None:
    app, _, pool = build()
    client = app.test_client()
    r = client.post(f"/api/models/{MODEL}/unload")
    assert r.status_code == 200 and r.json == {"model": MODEL, "unloaded": True} and pool.loaded == []
    assert client.post(f"/api/models/{MODEL}/unload").status_code == 404


@pytest.mark.parametrize("method, path", [
    ("GET", "/api/progress/a"), ("GET", "/api/requests"), ("POST", "/api/requests/a/cancel"),
    ("POST", f"/api/models/{MODEL}/unload"), ("GET", "/api/events"), ("GET", "/metrics"),
])
def test_with_api_keys_every_api_needs_one(method: str, path: str) -> None:
    app, tracker, _ = build([KEY])
    start(tracker, "a")
    client = app.test_client()
    r = client.open(path, method=method)
    assert r.status_code == 401 and r.json == {"error": "Invalid or missing API key."}
    r = client.open(path, method=method, headers={"x-api-key": "wrong"})
    assert r.status_code == 401
    r = client.open(path, method=method, headers={"Authorization": f"Bearer {KEY}"}, buffered=False)
    assert r.status_code == 200
    r.close()


def test_the_dashboard_page_and_its_files_need_no_key() -> None:
    app, _, _ = build([KEY])
    client = app.test_client()
    page = client.get("/dashboard")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    assert 'data-auth="on"' in html and "/dashboard/static/dashboard.js" in html
    for name in ("dashboard.js", "dashboard.css"):
        assert client.get(f"/dashboard/static/{name}").status_code == 200


def test_metrics_is_prometheus_text_and_absent_when_off() -> None:
    app, tracker, _ = build()
    start(tracker, "a", tokens=2).finish("completed", "stop")
    r = app.test_client().get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain; version=")
    names = {f.name for f in text_string_to_metric_families(r.get_data(as_text=True))}
    assert {"llm_gateway_requests", "llm_gateway_generated_tokens", "llm_gateway_models_loaded"} <= names
    app, _, _ = build(metrics=False)
    assert app.test_client().get("/metrics").status_code == 404


def sse_events(chunks: list[bytes]) -> list[tuple[str, Any]]:
    events = []
    for block in b"".join(chunks).decode().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":"))
        if "event" in lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_the_event_stream_starts_with_a_snapshot_and_unsubscribes_on_close() -> None:
    app, tracker, _ = build()
    start(tracker, "a", tokens=4)
    r = app.test_client().get("/api/events", buffered=False)
    assert r.status_code == 200 and r.mimetype == "text/event-stream"
    assert r.headers["Cache-Control"] == "no-cache"
    frames = iter(r.response)
    assert next(frames) == b"retry: 2000\n\n"
    (name, snapshot), = sse_events([next(frames)])
    assert name == "snapshot"
    assert [rec["id"] for rec in snapshot["requests"]] == ["a"]
    assert snapshot["models"][0]["name"] == MODEL and snapshot["running"] == 1
    assert sum(count for _, count in snapshot["throughput"]) == 4
    start(tracker, "b")
    assert sse_events([next(frames)])[0][1]["id"] == "b"
    r.close()
    assert tracker._subscribers == []


def until_keepalive(feed: Iterator[Any]) -> list[Any]:
    events = []
    while (event := next(feed)) is not KEEPALIVE:
        events.append(event)
    return events


def test_the_feed_sends_changes_then_keepalives(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.monitor.TICK_SECONDS", 0.01)
    pool = FakePool()
    tracker = Tracker()
    rec = start(tracker, "a")
    watcher = EventFeed(tracker, pool.view, keepalive=0.05)
    feed = iter(watcher)
    assert next(feed)[0] == "snapshot"
    rec.tokens(5)  # the first token is a phase change, sent at once
    rec.tokens(2)  # later ones are sent by the next tick
    seen = until_keepalive(feed)
    assert [name for name, _ in seen] == ["request", "progress", "tick"]
    assert seen[0][1]["phase"] == "generating"
    assert seen[1][1]["requests"][0]["tokens_generated"] == 7
    assert seen[2][1]["running"] == 1 and sum(count for _, count in seen[2][1]["throughput"]) == 7
    pool.loaded.clear()
    assert until_keepalive(feed) == [("models", {"models": []})]
    rec.finish("completed", "stop")
    seen = dict(until_keepalive(feed))
    assert seen["request"]["status"] == "completed" and seen["tick"]["running"] == 0
    watcher.close()
