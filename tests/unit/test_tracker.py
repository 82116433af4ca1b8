"""The request tracker on plain data: a record's life, its JSON, the bounded history, cancel, the watchers' feed and
the listener, with a fake clock so times and rates are exact."""

from __future__ import annotations

import threading
from datetime import datetime

import pytest

from gateway import tracker as tracker_module
from gateway.tracker import SUBSCRIBER_QUEUE, Tracker

FIELDS = ["id", "api", "endpoint", "model", "stream", "status", "phase", "queue_position", "prompt_tokens",
          "cached_tokens", "prompt_tokens_done", "tokens_generated", "max_tokens", "tokens_per_second",
          "finish_reason", "error", "queued_at", "started_at", "first_token_at", "finished_at"]
EPOCH = 1_700_000_000.0


class FakeClock:
    """Stands in for the `time` module inside gateway.tracker: wall and monotonic clocks move together."""

    def __init__(self) -> None:
        self.now = 0.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
        return EPOCH + self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(tracker_module, "time", fake)
    return fake


def opened(tracker: Tracker, rid: str = "r1", model: str = "gpt-4o-mini"):
    return tracker.open(rid, "openai", "/v1/chat/completions", model, True)


def test_a_new_record_has_every_field_and_is_queued(clock: FakeClock) -> None:
    tracker = Tracker()
    opened(tracker)
    record = tracker.get("r1")
    assert list(record) == FIELDS
    assert record["status"] == record["phase"] == "queued"
    assert record["queued_at"] == "2023-11-14T22:13:20.000Z"
    assert datetime.fromisoformat(record["queued_at"].replace("Z", "+00:00")).timestamp() == EPOCH
    assert record["started_at"] is record["finished_at"] is None
    assert (record["tokens_generated"], record["prompt_tokens"], record["tokens_per_second"]) == (0, None, None)


def test_a_record_through_every_phase(clock: FakeClock) -> None:
    tracker = Tracker()
    rec = opened(tracker)
    rec.set_model("smollm2")
    rec.loading()
    assert tracker.get("r1")["phase"] == "loading"
    rec.queued(lambda: 3)
    assert (tracker.get("r1")["phase"], tracker.get("r1")["queue_position"]) == ("queued", 3)
    clock.advance(1.0)
    rec.started(prompt_tokens=100, cached_tokens=40, max_tokens=50)
    got = tracker.get("r1")
    assert (got["status"], got["phase"], got["queue_position"]) == ("running", "prompt", None)
    assert (got["prompt_tokens"], got["cached_tokens"], got["prompt_tokens_done"], got["max_tokens"]) == \
        (100, 40, 40, 50)
    assert got["started_at"] == "2023-11-14T22:13:21.000Z"
    rec.prompt_progress(80)
    assert tracker.get("r1")["prompt_tokens_done"] == 80
    clock.advance(0.5)
    rec.tokens()
    got = tracker.get("r1")
    assert (got["phase"], got["tokens_generated"], got["prompt_tokens_done"]) == ("generating", 1, 100)
    assert got["first_token_at"] == "2023-11-14T22:13:21.500Z"
    for _ in range(10):
        clock.advance(0.1)
        rec.tokens()
    assert tracker.get("r1")["tokens_per_second"] == pytest.approx(10.0)
    rec.finish("completed", "length")
    got = tracker.get("r1")
    assert (got["status"], got["phase"], got["finish_reason"], got["error"]) == ("completed", "done", "length", None)
    assert got["model"] == "smollm2" and got["tokens_generated"] == 11
    assert got["finished_at"] == "2023-11-14T22:13:22.500Z"


def test_reports_after_the_end_are_ignored(clock: FakeClock) -> None:
    tracker = Tracker()
    rec = opened(tracker)
    rec.finish("failed", error="The model `x` does not exist.")
    rec.started(5, 0, 10)
    rec.tokens(3)
    rec.loading()
    rec.finish("completed", "stop")
    got = tracker.get("r1")
    assert (got["status"], got["phase"], got["tokens_generated"]) == ("failed", "done", 0)
    assert got["error"] == "The model `x` does not exist."


def test_finish_takes_only_a_final_status() -> None:
    with pytest.raises(ValueError, match="finish status"):
        opened(Tracker()).finish("running")


def test_a_queue_position_that_fails_to_answer_is_null() -> None:
    tracker = Tracker()
    opened(tracker).queued(lambda: 1 // 0)
    assert tracker.get("r1")["queue_position"] is None


def test_the_history_is_bounded_and_lists_newest_first() -> None:
    tracker = Tracker(history=3)
    for i in range(5):
        opened(tracker, f"r{i}").finish("completed", "stop")
    opened(tracker, "live")
    assert [r["id"] for r in tracker.list()] == ["live", "r4", "r3", "r2"]
    assert tracker.get("r1") is None and tracker.get("r2") is not None


def test_list_filters_by_status_and_model() -> None:
    tracker = Tracker()
    opened(tracker, "a", model="m1").started(1, 0, 5)
    opened(tracker, "b", model="m2")
    opened(tracker, "c", model="m1").finish("cancelled")
    assert [r["id"] for r in tracker.list(status="running")] == ["a"]
    assert [r["id"] for r in tracker.list(model="m1")] == ["a", "c"]
    assert [r["id"] for r in tracker.list(status="queued", model="m2")] == ["b"]
    assert tracker.counts() == {"running": 1, "queued": 1}


def test_cancel_calls_the_callback_and_the_record_ends_cancelled() -> None:
    tracker = Tracker()
    rec = opened(tracker)
    calls = []
    rec.on_cancel(lambda: calls.append("stop"))
    assert tracker.cancel("r1") is True and calls == ["stop"]
    rec.finish("completed", "stop")  # the generation saw a normal stop on its way out
    assert tracker.get("r1")["status"] == "cancelled"
    assert tracker.cancel("r1") is False
    assert tracker.cancel("unknown") is False


def test_a_cancel_before_the_callback_is_set_runs_it_when_set() -> None:
    tracker = Tracker()
    rec = opened(tracker)
    assert tracker.cancel("r1") is True
    calls = []
    rec.on_cancel(lambda: calls.append("stop"))
    assert calls == ["stop"]


def test_tokens_from_many_threads_add_up() -> None:
    tracker = Tracker()
    records = [opened(tracker, f"r{i}") for i in range(8)]
    for rec in records:
        rec.started(1, 0, None)

    def work(rec) -> None:
        for _ in range(500):
            rec.tokens()

    threads = [threading.Thread(target=work, args=(rec,)) for rec in records]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [tracker.get(f"r{i}")["tokens_generated"] for i in range(8)] == [500] * 8
    assert sum(count for _, count in tracker.throughput_since(0)) == 4000


def test_throughput_counts_tokens_per_second(clock: FakeClock) -> None:
    tracker = Tracker()
    rec = opened(tracker)
    rec.started(1, 0, None)
    rec.tokens(3)
    clock.advance(0.5)
    rec.tokens(2)
    clock.advance(1.0)
    rec.tokens(4)
    assert tracker.throughput_since(0) == [[int(EPOCH), 5], [int(EPOCH) + 1, 4]]
    assert tracker.throughput_since(int(EPOCH) + 1) == [[int(EPOCH) + 1, 4]]
    clock.advance(1000)
    assert tracker.throughput_since(0) == []


def test_watchers_hear_of_status_and_phase_changes_not_of_every_token() -> None:
    tracker = Tracker()
    sub = tracker.subscribe()
    rec = opened(tracker)
    rec.loading()
    rec.started(4, 0, 10)
    for _ in range(5):
        rec.tokens()
    rec.finish("completed", "stop")
    events = []
    while (event := sub.get(timeout=0)) is not None:
        events.append(event)
    assert [(name, data["status"], data["phase"]) for name, data in events] == [
        ("request", "queued", "queued"), ("request", "queued", "loading"), ("request", "running", "prompt"),
        ("request", "running", "generating"), ("request", "completed", "done")]
    sub.close()
    opened(tracker, "r2")
    assert sub.get(timeout=0) is None


def test_a_watcher_that_falls_behind_is_told_to_resync() -> None:
    tracker = Tracker()
    sub = tracker.subscribe()
    for i in range(SUBSCRIBER_QUEUE + 5):
        opened(tracker, f"r{i}")
    assert sub.get(timeout=0) == ("resync", None)
    assert sub.get(timeout=0) is None
    opened(tracker, "next")
    assert sub.get(timeout=0)[1]["id"] == "next"


class Recorder:
    """A listener that notes what it is told. It reads each record through `to_json`, which takes the tracker's
    lock: a call made while the lock is held would hang the test."""

    def __init__(self) -> None:
        self.heard: list[tuple] = []

    def started(self, record) -> None:
        self.heard.append(("started", record.to_json()["status"]))

    def tokens(self, record, count: int, gap: float | None) -> None:
        self.heard.append(("tokens", count, gap))

    def finished(self, record) -> None:
        self.heard.append(("finished", record.to_json()["status"]))


def test_the_listener_hears_the_start_each_token_report_with_its_gap_and_the_end(clock: FakeClock) -> None:
    tracker = Tracker()
    listener = Recorder()
    tracker.listen(listener)
    rec = opened(tracker)
    rec.loading()
    rec.started(4, 0, 10)
    clock.advance(1.0)
    rec.tokens()
    clock.advance(0.25)
    rec.tokens(2)
    rec.finish("completed", "stop")
    rec.tokens()
    rec.finish("failed")
    assert listener.heard == [("started", "running"), ("tokens", 1, None), ("tokens", 2, 0.25),
                              ("finished", "completed")]


def test_a_tracker_takes_one_listener() -> None:
    tracker = Tracker()
    tracker.listen(Recorder())
    with pytest.raises(RuntimeError, match="already has a listener"):
        tracker.listen(Recorder())


def test_a_record_keeps_bounded_strings() -> None:
    tracker = Tracker()
    record = tracker.open("r1", "openai", "/v1/chat/completions", "m" * 1_000_000, False)
    record.finish("failed", error="e" * 1_000_000)
    kept = tracker.get("r1")
    assert len(kept["model"]) <= 256 and len(kept["error"]) <= 1025
