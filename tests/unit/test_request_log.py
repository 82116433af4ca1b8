"""One log line per finished request, plain or as JSON, from the tracker's record."""

from __future__ import annotations

import json
import logging

from gateway.request_log import JsonFormatter, log_request
from gateway.tracker import Tracker


def finished_record(caplog):
    tracker = Tracker(10, on_finished=log_request)
    record = tracker.open("abc123", "openai", "/v1/chat/completions", "gpt-4o-mini", stream=True)
    record.set_model("smollm2")
    record.started(12, 4, 32)
    record.tokens(3)
    with caplog.at_level(logging.INFO, logger="gateway.requests"):
        record.finish("failed", "stop", error='bad "thing" = broken')
        record.finish("completed", "stop")  # a second finish is ignored: one line per request
    return [r for r in caplog.records if r.name == "gateway.requests"]


def test_a_finished_request_logs_one_line_with_its_facts(caplog):
    [line] = finished_record(caplog)
    text = line.getMessage()
    for part in ("id=abc123", "api=openai", "model=smollm2", "status=failed", "finish_reason=stop",
                 "prompt_tokens=12", "cached_tokens=4", "completion_tokens=3", 'error="bad \\"thing\\" = broken"'):
        assert part in text, text
    assert "ttft_ms=" in text and "total_ms=" in text


def test_the_json_format_is_one_object_with_the_same_fields(caplog):
    [line] = finished_record(caplog)
    data = json.loads(JsonFormatter().format(line))
    assert data["logger"] == "gateway.requests" and data["level"] == "INFO"
    assert (data["id"], data["status"], data["completion_tokens"], data["error"]) == (
        "abc123", "failed", 3, 'bad "thing" = broken')
