"""One log line per finished request (logger `gateway.requests`): its id, family, endpoint, model, status,
tokens and timings, so a journal or a log shipper can follow traffic without the dashboard. `log_format: json`
makes every log line of the gateway one JSON object (`JsonFormatter`), for collectors that parse them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

log = logging.getLogger("gateway.requests")


def request_fields(record: Any) -> dict[str, Any]:
    """What the line says about a finished tracker record; durations in milliseconds."""
    def ms(start: float | None, end: float | None) -> int | None:
        return None if start is None or end is None else round((end - start) * 1000)

    return {
        "id": record.id, "api": record.api, "endpoint": record.endpoint, "model": record.model, "key": record.key,
        "status": record.status, "finish_reason": record.finish_reason, "prompt_tokens": record.prompt_tokens,
        "cached_tokens": record.cached_tokens, "completion_tokens": record.tokens_generated,
        "queued_ms": ms(record.opened, record.started_at), "ttft_ms": ms(record.opened, record.first_token_at),
        "total_ms": ms(record.opened, record.finished_at), "error": record.error,
    }


def log_request(record: Any) -> None:
    """The tracker calls this once per record, when it finishes."""
    if not log.isEnabledFor(logging.INFO):
        return
    fields = request_fields(record)
    text = " ".join(f"{k}={_plain(v)}" for k, v in fields.items() if v is not None)
    log.info("%s", text, extra={"fields": fields})


def _plain(value: Any) -> str:
    text = str(value)
    return json.dumps(text, ensure_ascii=False) if not text or any(c in text for c in ' "=') else text


class JsonFormatter(logging.Formatter):
    """Each log record as one JSON object: time, level, logger, message, and a request line's fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"time": self.formatTime(record), "level": record.levelname, "logger": record.name,
                               "message": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False, default=str)
