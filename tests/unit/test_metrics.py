"""Prometheus metrics listening to a tracker and reading a fake pool, checked through the exposition text
parsed with prometheus-client's own parser (as a scraper sees them)."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import tracker as tracker_module
from gateway.metrics import PENDING_MAX, Metrics
from gateway.tracker import Tracker
from tests.unit.test_tracker import FakeClock

MODEL = "smollm2-135m-instruct"
POOL = [{"name": MODEL, "n_ctx": 2048, "parallel": 4, "busy": 1, "waiting": 2, "kv_used": 512, "size": 300_000_000,
         "keep_alive_left": 120.0, "load_seconds": 0.75},
        {"name": "pinned", "n_ctx": 1024, "parallel": 1, "busy": 0, "waiting": 0, "kv_used": 0, "size": 10,
         "keep_alive_left": None, "load_seconds": 0.1}]


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(tracker_module, "time", fake)
    return fake


def scrape(metrics: Metrics) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}."""
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def run_request(tracker: Tracker, clock: FakeClock, rid: str = "r1", tokens: int = 5) -> None:
    rec = tracker.open(rid, "openai", "/v1/chat/completions", "gpt-4o-mini", True)
    rec.set_model(MODEL)
    clock.advance(0.2)
    rec.started(prompt_tokens=10, cached_tokens=4, max_tokens=20)
    clock.advance(0.3)
    for _ in range(tokens):
        rec.tokens()
        clock.advance(0.05)
    rec.finish("completed", "stop")


def test_a_request_moves_every_request_metric_once(clock: FakeClock) -> None:
    tracker = Tracker()
    metrics = Metrics(tracker)
    run_request(tracker, clock)
    s = scrape(metrics)
    key = (("api", "openai"), ("endpoint", "/v1/chat/completions"), ("model", MODEL), ("status", "completed"))
    assert s[("llm_gateway_requests_total", key)] == 1
    by_api = (("api", "openai"), ("model", MODEL))
    assert s[("llm_gateway_prompt_tokens_total", by_api)] == 10
    assert s[("llm_gateway_prompt_cached_tokens_total", by_api)] == 4
    assert s[("llm_gateway_generated_tokens_total", by_api)] == 5
    model = (("model", MODEL),)
    assert s[("llm_gateway_time_to_first_token_seconds_count", model)] == 1
    assert s[("llm_gateway_time_to_first_token_seconds_sum", model)] == pytest.approx(0.5)
    assert s[("llm_gateway_inter_token_latency_seconds_count", model)] == 4
    assert s[("llm_gateway_inter_token_latency_seconds_sum", model)] == pytest.approx(0.2)
    assert s[("llm_gateway_queue_wait_seconds_sum", model)] == pytest.approx(0.2)
    assert s[("llm_gateway_e2e_request_latency_seconds_count", model)] == 1
    assert s[("llm_gateway_e2e_request_latency_seconds_sum", model)] == pytest.approx(0.75)


def started_stream(api: str, endpoint: str) -> tuple[Tracker, Metrics, Any]:
    """A tracker with metrics listening, and one streaming request of MODEL that has started."""
    tracker = Tracker()
    metrics = Metrics(tracker)
    rec = tracker.open("r", api, endpoint, MODEL, True)
    rec.set_model(MODEL)
    rec.started(3, 0, None)
    return tracker, metrics, rec


def test_several_tokens_in_one_report_count_as_equal_gaps(clock: FakeClock) -> None:
    _, metrics, rec = started_stream("ollama", "/api/chat")
    rec.tokens()
    clock.advance(0.3)
    rec.tokens(3)
    s = scrape(metrics)
    assert s[("llm_gateway_inter_token_latency_seconds_count", (("model", MODEL),))] == 3
    assert s[("llm_gateway_inter_token_latency_seconds_bucket", (("le", "0.1"), ("model", MODEL)))] == 3
    assert s[("llm_gateway_generated_tokens_total", (("api", "ollama"), ("model", MODEL)))] == 4


def test_a_request_whose_model_never_resolved_has_an_empty_model_label(clock: FakeClock) -> None:
    tracker = Tracker()
    metrics = Metrics(tracker)
    rec = tracker.open("r", "openai", "/v1/chat/completions", "no-such-model-" + "x" * 50, False)
    rec.finish("failed", error="The model does not exist.")
    s = scrape(metrics)
    key = (("api", "openai"), ("endpoint", "/v1/chat/completions"), ("model", ""), ("status", "failed"))
    assert s[("llm_gateway_requests_total", key)] == 1
    assert not any("no-such-model" in str(labels) for _, labels in s)
    assert not any(name.startswith("llm_gateway_e2e") for name, _ in s)  # it never reached the engine


def test_live_gauges_are_read_from_the_tracker_and_the_pool_at_scrape_time(clock: FakeClock) -> None:
    tracker = Tracker()
    metrics = Metrics(tracker)
    pool = list(POOL)
    metrics.watch(tracker.counts, lambda: pool)
    tracker.open("q", "openai", "/v1/completions", MODEL, False)
    tracker.open("r", "openai", "/v1/completions", MODEL, False).started(5, 0, 5)
    s = scrape(metrics)
    assert s[("llm_gateway_requests_running", ())] == 1
    assert s[("llm_gateway_requests_queued", ())] == 1
    assert s[("llm_gateway_models_loaded", ())] == 2
    m = (("model", MODEL),)
    assert s[("llm_gateway_model_sequences_in_use", m)] == 1
    assert s[("llm_gateway_model_parallel_sequences", m)] == 4
    assert s[("llm_gateway_model_requests_waiting", m)] == 2
    assert s[("llm_gateway_kv_cache_used_cells", m)] == 512
    assert s[("llm_gateway_kv_cache_size_cells", m)] == 2048
    assert s[("llm_gateway_kv_cache_usage_ratio", m)] == 0.25
    assert s[("llm_gateway_model_memory_bytes", m)] == 300_000_000
    assert s[("llm_gateway_model_load_seconds", m)] == 0.75
    assert s[("llm_gateway_model_keep_alive_remaining_seconds", m)] == 120.0
    assert ("llm_gateway_model_keep_alive_remaining_seconds", (("model", "pinned"),)) not in s
    pool.pop()
    assert scrape(metrics)[("llm_gateway_models_loaded", ())] == 1


def test_prefix_cache_hit_ratio_is_cached_over_prompt_tokens(clock: FakeClock) -> None:
    tracker = Tracker()
    metrics = Metrics(tracker)
    metrics.watch(tracker.counts, lambda: [])
    run_request(tracker, clock, "a")
    run_request(tracker, clock, "b")
    assert scrape(metrics)[("llm_gateway_prefix_cache_hit_ratio", (("model", MODEL),))] == pytest.approx(0.4)


def test_every_name_has_the_prefix_and_each_app_has_its_own_registry(clock: FakeClock) -> None:
    tracker = Tracker()
    first, second = Metrics(tracker), Metrics(Tracker())
    first.watch(lambda: {"running": 0, "queued": 0}, lambda: POOL)
    run_request(tracker, clock)
    names = {name for name, _ in scrape(first)}
    assert names and all(name.startswith("llm_gateway_") for name in names)
    assert not any(name.startswith("llm_gateway_requests_total") for name, _ in scrape(second))


def test_token_reports_reach_the_metrics_without_a_scrape_once_enough_are_queued(clock: FakeClock) -> None:
    _, metrics, rec = started_stream("openai", "/v1/chat/completions")
    clock.advance(0.5)
    children = None
    for _ in range(PENDING_MAX + 1):  # the first report gives the TTFT; the rest queue their gaps
        rec.tokens()
        clock.advance(0.01)
        children = children or metrics._per_token("openai", MODEL)
    generated, itl = children
    assert generated._value.get() == PENDING_MAX + 1  # applied when the queue filled, before any scrape
    assert itl._sum.get() == pytest.approx(0.01 * PENDING_MAX)
    rec.tokens()
    assert generated._value.get() == PENDING_MAX + 1  # queued again
    assert scrape(metrics)[("llm_gateway_generated_tokens_total", (("api", "openai"), ("model", MODEL)))] == \
        PENDING_MAX + 2
