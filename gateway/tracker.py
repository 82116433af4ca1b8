"""Every generation request's record, from arrival to end, for the progress endpoints, the dashboard and metrics.

The service opens a `Record` when a request reaches it and reports each phase on it: waiting for the model to
load, queued for a sequence, prompt processing, generating, done. Records of running requests stay in `active`;
finished ones move to a bounded history. Every `Record` method is a few assignments under one lock (the hot path
calls `tokens` once per token).

One `Listener` may `listen` to the tracker: it is told of every start, every token report and every end as it
happens, outside the lock, for counters and latencies that a read at its own pace would miss. The tracker knows
no more of it than that.

Watchers (`/api/events`) `subscribe` and get an event for every change of status or phase; token counts are not
pushed per token but read by the watcher at its own pace (`Tracker.active`).
"""

from __future__ import annotations

import collections
import queue
import threading
import time
from datetime import datetime, timezone
from typing import Any, Callable, Protocol

STATUSES = ("queued", "running", "completed", "cancelled", "failed")
FINAL_STATUSES = ("completed", "cancelled", "failed")
THROUGHPUT_WINDOW = 300  # seconds of per-second generated-token counts kept for the dashboard's chart
SUBSCRIBER_QUEUE = 1000  # events a slow watcher may fall behind before it is sent a fresh snapshot instead
ABANDONED_SECONDS = 60.0  # a watcher that overflowed and has not read for this long is dropped

Event = tuple[str, Any]


MAX_MODEL_NAME = 256  # characters of a client's model name a record keeps (the name may be anything sent)
MAX_ERROR = 1024  # characters of an error message a record keeps (messages may quote what the client sent)

class Listener(Protocol):
    """Told of a record's transitions, on the reporting thread, after the tracker's lock is released."""

    def started(self, record: Record) -> None: ...

    def tokens(self, record: Record, count: int, gap: float | None) -> None:
        """`gap`: seconds since the record's previous token report; None on the first report."""

    def finished(self, record: Record) -> None: ...


def rfc3339(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Record:
    """One request. Times are monotonic internally and turned into wall-clock RFC 3339 when read. Calls after
    `finish` are ignored, so a late report from a cancelled request cannot reopen it."""

    def __init__(self, tracker: Tracker, request_id: str, api: str, endpoint: str, model: str, stream: bool):
        self._tracker = tracker
        self.id = request_id
        self.api = api
        self.endpoint = endpoint
        self.model = model
        self.model_resolved = False  # until set_model, `model` is whatever the client sent (not a metric label)
        self.stream = stream
        self.key: str | None = None  # the name of the API key the request came with
        self.status = "queued"
        self.phase = "queued"
        self._position: Callable[[], int] | None = None
        self.prompt_tokens: int | None = None
        self.cached_tokens: int | None = None
        self.prompt_tokens_done = 0
        self.tokens_generated = 0
        self.max_tokens: int | None = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._wall = time.time()
        self.opened = time.monotonic()
        self.started_at: float | None = None
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.finished_at: float | None = None
        self._first_count = 0
        self._cancel: Callable[[], None] | None = None
        self._cancel_requested = False

    # -- reports from the request's thread ---------------------------------------------------------------------

    def set_model(self, name: str) -> None:
        with self._tracker.lock:
            self.model = name
            self.model_resolved = True

    def loading(self) -> None:
        self._phase("loading")

    def queued(self, position: Callable[[], int]) -> None:
        """Waiting for a free sequence; `position` (1-based) is asked only when someone reads the record."""
        with self._tracker.lock:
            if self.finished_at is not None:
                return
            self._position = position
            self.phase = "queued"
        self._tracker.publish_change(self)

    def started(self, prompt_tokens: int, cached_tokens: int, max_tokens: int | None) -> None:
        with self._tracker.lock:
            if self.finished_at is not None:
                return
            self.status, self.phase = "running", "prompt"
            self.started_at = time.monotonic()
            self.prompt_tokens, self.cached_tokens = prompt_tokens, cached_tokens
            self.prompt_tokens_done = cached_tokens
            self.max_tokens = max_tokens
            self._position = None
        self._tracker.publish_change(self)
        if self._tracker.listener is not None:
            self._tracker.listener.started(self)

    def prompt_counted(self, prompt_tokens: int, cached_tokens: int) -> None:
        """The prompt's size as the engine reported it at the end of a choice: an upstream server that sends usage
        only with its last chunk was started with what it knew then."""
        with self._tracker.lock:
            if self.finished_at is None:
                self.prompt_tokens, self.cached_tokens = prompt_tokens, cached_tokens

    def prompt_progress(self, done: int) -> None:
        with self._tracker.lock:
            if self.finished_at is None:
                self.prompt_tokens_done = done

    def tokens(self, count: int = 1) -> None:
        """`count` more generated tokens; the first call ends prompt processing."""
        now = time.monotonic()
        with self._tracker.lock:
            if self.finished_at is not None:
                return
            first = self.first_token_at is None
            gap = None if first else now - (self.last_token_at or now)
            if first:
                self.first_token_at = now
                self._first_count = count
                self.status, self.phase = "running", "generating"
                self.prompt_tokens_done = self.prompt_tokens or 0
            self.last_token_at = now
            self.tokens_generated += count
            self._tracker.throughput.add(count)
        if first:
            self._tracker.publish_change(self)
        if self._tracker.listener is not None:
            self._tracker.listener.tokens(self, count, gap)

    def finish(self, status: str, finish_reason: str | None = None, error: str | None = None) -> None:
        """The end, once. A request cancelled through `Tracker.cancel` is recorded as cancelled even if its
        generation reported a normal stop on the way out."""
        if status not in FINAL_STATUSES:
            raise ValueError(f"finish status must be one of {FINAL_STATUSES}, got {status!r}")
        with self._tracker.lock:
            if self.finished_at is not None:
                return
            if self._cancel_requested and status == "completed":
                status = "cancelled"
            self.status, self.phase = status, "done"
            self.finish_reason = finish_reason
            self.error = error if error is None or len(error) <= MAX_ERROR else error[:MAX_ERROR] + "…"
            self.finished_at = time.monotonic()
            self._position = None
            self._cancel = None
            self._tracker.retire(self)
        self._tracker.publish_change(self)
        if self._tracker.listener is not None:
            self._tracker.listener.finished(self)
        if self._tracker.on_finished is not None:
            self._tracker.on_finished(self)

    def on_cancel(self, callback: Callable[[], None]) -> None:
        """How to stop this request; called at once if a cancel was asked for before it was set."""
        with self._tracker.lock:
            if self.finished_at is not None:
                return
            self._cancel = callback
            call_now = self._cancel_requested
        if call_now:
            callback()

    # -- reads ---------------------------------------------------------------------------------------------------

    def request_cancel(self) -> bool:
        """False if it has already finished; the callback runs outside the lock (it may wait on the engine)."""
        with self._tracker.lock:
            if self.finished_at is not None:
                return False
            self._cancel_requested = True
            callback = self._cancel
        if callback is not None:
            callback()
        return True

    def _phase(self, phase: str) -> None:
        with self._tracker.lock:
            if self.finished_at is not None or self.phase == phase:
                return
            self.phase = phase
        self._tracker.publish_change(self)

    def _epoch(self, mono: float | None) -> str | None:
        return None if mono is None else rfc3339(self._wall + (mono - self.opened))

    def tokens_per_second(self) -> float | None:
        """Decoding speed: tokens after the first over the time since the first (prompt time excluded)."""
        if self.first_token_at is None or self.last_token_at is None or self.last_token_at <= self.first_token_at:
            return None
        rate = (self.tokens_generated - self._first_count) / (self.last_token_at - self.first_token_at)
        return round(rate, 2)

    def to_json(self) -> dict[str, Any]:
        with self._tracker.lock:
            position = self._position
            record = {
                "id": self.id, "api": self.api, "endpoint": self.endpoint, "model": self.model,
                "stream": self.stream, "status": self.status, "phase": self.phase, "queue_position": None,
                "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
                "prompt_tokens_done": self.prompt_tokens_done, "tokens_generated": self.tokens_generated,
                "max_tokens": self.max_tokens, "tokens_per_second": self.tokens_per_second(),
                "finish_reason": self.finish_reason, "error": self.error,
                "queued_at": rfc3339(self._wall), "started_at": self._epoch(self.started_at),
                "first_token_at": self._epoch(self.first_token_at), "finished_at": self._epoch(self.finished_at),
            }
        if position is not None and record["phase"] == "queued":
            record["queue_position"] = _ask(position)
        return record


def _ask(position: Callable[[], int]) -> int | None:
    """The engine's answer, outside the tracker's lock; a racing engine may have dropped the job meanwhile."""
    try:
        return position() or None
    except Exception:
        return None


class Throughput:
    """Generated tokens per wall-clock second over the last `THROUGHPUT_WINDOW` seconds (only seconds with
    tokens are stored). Guarded by the tracker's lock."""

    def __init__(self) -> None:
        self._buckets: collections.deque[list[int]] = collections.deque(maxlen=THROUGHPUT_WINDOW)

    def add(self, count: int) -> None:
        second = int(time.time())
        if self._buckets and self._buckets[-1][0] == second:
            self._buckets[-1][1] += count
        else:
            self._buckets.append([second, count])

    def since(self, second: int) -> list[list[int]]:
        oldest = max(second, int(time.time()) - THROUGHPUT_WINDOW)
        return [list(b) for b in self._buckets if b[0] >= oldest]


class Subscription:
    """One watcher's queue of ("request", record) events. A watcher that falls `SUBSCRIBER_QUEUE` events behind
    is not blocked on: its queue is dropped and its next `get` says "resync" (send a fresh snapshot)."""

    def __init__(self, tracker: Tracker):
        self._tracker = tracker
        self._queue: queue.Queue[Event] = queue.Queue(maxsize=SUBSCRIBER_QUEUE)
        self.overflowed_at: float | None = None

    def put(self, event: Event) -> None:
        if self.overflowed_at is not None:
            return
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.overflowed_at = time.monotonic()

    def get(self, timeout: float) -> Event | None:
        """The next event, ("resync", None) after an overflow, or None when nothing came within `timeout`."""
        if self.overflowed_at is not None:
            self._queue = queue.Queue(maxsize=SUBSCRIBER_QUEUE)
            self.overflowed_at = None
            return ("resync", None)
        try:
            return self._queue.get(timeout=max(timeout, 0.0))
        except queue.Empty:
            return None

    def close(self) -> None:
        self._tracker.unsubscribe(self)


class Tracker:
    def __init__(self, history: int = 1000, on_finished: Callable[[Record], None] | None = None):
        self.lock = threading.Lock()
        self.listener: Listener | None = None
        self.on_finished = on_finished  # e.g. the request log's one line per request
        self.throughput = Throughput()
        self._history_size = max(history, 0)
        self._active: dict[str, Record] = {}
        self._history: collections.OrderedDict[str, Record] = collections.OrderedDict()
        self._subscribers: list[Subscription] = []

    def open(self, request_id: str, api: str, endpoint: str, model: str, stream: bool,
             key: str | None = None) -> Record:
        """A new record, status queued. `endpoint` should be the route's path pattern and `model` the name as
        sent; `set_model` later replaces it with the resolved name. `key` names the caller's API key."""
        record = Record(self, request_id, api, endpoint, model[:MAX_MODEL_NAME], stream)
        record.key = key
        with self.lock:
            self._active[request_id] = record
        self.publish_change(record)
        return record

    def retire(self, record: Record) -> None:
        """Active → history; called by `Record.finish` with the lock held."""
        if self._active.get(record.id) is record:
            del self._active[record.id]
        if self._history_size:
            self._history[record.id] = record
            self._history.move_to_end(record.id)
            while len(self._history) > self._history_size:
                self._history.popitem(last=False)

    # -- reads ---------------------------------------------------------------------------------------------------

    def get(self, request_id: str) -> dict[str, Any] | None:
        with self.lock:
            record = self._active.get(request_id) or self._history.get(request_id)
        return None if record is None else record.to_json()

    def list(self, status: str | None = None, model: str | None = None) -> list[dict[str, Any]]:
        """Active requests (oldest first), then finished ones (newest first), filtered by status and model."""
        with self.lock:
            records = [*self._active.values(), *reversed(self._history.values())]
        return [r.to_json() for r in records
                if (status is None or r.status == status) and (model is None or r.model == model)]

    def active(self) -> list[Record]:
        with self.lock:
            return list(self._active.values())

    def recent(self, limit: int) -> list[Record]:
        """The last `limit` finished records, newest first."""
        with self.lock:
            return list(reversed(self._history.values()))[:limit]

    def counts(self) -> dict[str, int]:
        """Active requests by status: running (holding a sequence) and queued (everything before that)."""
        with self.lock:
            running = sum(1 for r in self._active.values() if r.status == "running")
            return {"running": running, "queued": len(self._active) - running}

    def throughput_since(self, second: int) -> list[list[int]]:
        """[epoch second, generated tokens] for each second from `second` on that had tokens."""
        with self.lock:
            return self.throughput.since(second)

    def cancel(self, request_id: str) -> bool:
        """Ask a running request to stop; False if it is unknown or already finished."""
        with self.lock:
            record = self._active.get(request_id)
        return record is not None and record.request_cancel()

    # -- watchers ------------------------------------------------------------------------------------------------

    def listen(self, listener: Listener) -> None:
        """Tell `listener` of every record's start, token reports and end from now on. One listener only: the
        hot path calls it directly, where looping over several would cost an iterator per generated token."""
        with self.lock:
            if self.listener is not None:
                raise RuntimeError("the tracker already has a listener")
            self.listener = listener

    def subscribe(self) -> Subscription:
        """A queue of request events for one watcher; `close()` it when the watcher leaves."""
        sub = Subscription(self)
        with self.lock:
            self._subscribers.append(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        with self.lock:
            if sub in self._subscribers:
                self._subscribers.remove(sub)

    def publish_change(self, record: Record) -> None:
        """Tell every watcher about a change of status or phase (not about every token)."""
        with self.lock:
            subscribers = list(self._subscribers)
        if not subscribers:
            return
        event = ("request", record.to_json())
        now = time.monotonic()
        for sub in subscribers:
            if sub.overflowed_at is not None and now - sub.overflowed_at > ABANDONED_SECONDS:
                self.unsubscribe(sub)  # a response that was never read to its end never closed its feed
            else:
                sub.put(event)
