"""The gateway's own text exposition writes what prometheus_client's `generate_latest` writes, byte for byte:
for the gateway's full metric set (with a request, live gauges and key metrics in it) and for every metric kind
and awkward label value, scrape after scrape as the values change."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, Histogram, Info, Summary, generate_latest
from prometheus_client.core import GaugeMetricFamily

from gateway import tracker as tracker_module
from gateway.metrics import Metrics
from gateway.prometheus_text import KEPT_MAX, TextExposition
from gateway.tracker import Tracker
from tests.unit.test_metrics import MODEL, POOL, run_request
from tests.unit.test_tracker import FakeClock


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(tracker_module, "time", fake)
    return fake


def test_the_gateways_metrics_match_generate_latest_scrape_after_scrape(clock: FakeClock) -> None:
    tracker = Tracker()
    metrics = Metrics(tracker)
    metrics.watch(lambda: {"running": 1, "queued": 2},
                  lambda: [{**POOL[0], "prompt_cache": {"hits": 3, "entries": 2, "bytes": 10},
                            "prompt_rules": {"date line": {"applied": 4, "saved_chars": 120}}}, POOL[1]])
    for i in range(3):
        run_request(tracker, clock, rid=f"r{i}", tokens=3 + i)
        body, _ = metrics.render()
        assert body == generate_latest(metrics.registry)
        assert metrics.render()[0] == body  # nothing changed: every request metric's text kept
    assert b"llm_gateway_prompt_rule_applied_total" in body and b'rule="date line"' in body


def test_a_metric_changed_between_scrapes_is_written_again(clock: FakeClock) -> None:
    """Each kind of change (a start, a first token, later tokens, an end, a new model's first child) reaches the
    next scrape, with the kept text of the others."""
    tracker = Tracker()
    metrics = Metrics(tracker)
    metrics.render()
    record = tracker.open("a", "openai", "/v1/chat/completions", "gpt-4o-mini", True)
    record.set_model(MODEL)
    record.started(prompt_tokens=5, cached_tokens=2, max_tokens=20)
    assert metrics.render()[0] == generate_latest(metrics.registry)
    record.tokens()
    assert metrics.render()[0] == generate_latest(metrics.registry)
    for _ in range(3):
        clock.advance(0.01)
        record.tokens(2)
        assert metrics.render()[0] == generate_latest(metrics.registry)
    record.finish("completed", "stop")
    body = metrics.render()[0]
    assert body == generate_latest(metrics.registry) and b'status="completed"' in body


def test_every_kind_and_escaped_label_values_match_generate_latest() -> None:
    registry = CollectorRegistry()
    counter = Counter("c_things", "A counter.\nWith a \\ in its help.", ["who"], registry=registry)
    gauge = Gauge("g_level", "A gauge.", registry=registry)
    hist = Histogram("h_seconds", "A histogram.", ["model"], buckets=(0.1, 1.0), registry=registry)
    summary = Summary("s_seconds", "A summary.", registry=registry)
    Info("build", "An info.", registry=registry).info({"version": "1.2"})
    Enum("state", "An enum.", states=["up", "down"], registry=registry).state("down")

    class Custom:
        def collect(self):
            family = GaugeMetricFamily("custom_ratio", "Custom.", labels=["model"])
            family.add_metric(['we"ird\\name\nx'], float("inf"))
            family.add_metric(["plain"], 1e-7)
            return [family]

    registry.register(Custom())
    text = TextExposition()
    for value in (1, 2.5, 1e21):
        counter.labels('quote " and \\ and\nnewline').inc(value)
        counter.labels("plain").inc()
        gauge.set(-value)
        hist.labels("m").observe(value / 10)
        summary.observe(value)
        assert text.render([registry]) == generate_latest(registry)


def test_kept_names_are_bounded() -> None:
    registry = CollectorRegistry()
    counter = Counter("many", "Many label values.", ["n"], registry=registry)
    text = TextExposition()
    for n in range(KEPT_MAX + 10):
        counter.labels(str(n)).inc()
    assert text.render([registry]) == generate_latest(registry)
    assert len(text._names) <= KEPT_MAX
