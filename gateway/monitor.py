"""The operator's side: progress endpoints, the live event feed, Prometheus metrics and the `/dashboard` page.

    GET  /api/progress/<id>          one request's record (404 for an id never seen or dropped from history)
    GET  /api/requests               {"requests": [...]}: active, then recent; ?status= and ?model= filter
    POST /api/requests/<id>/cancel   stop a request; its client's stream ends as after a normal stop
    POST /api/models/<name>/unload   unload a model (at once if idle, else when its last request ends)
    GET  /api/events                 Server-Sent Events: snapshot, request, progress, models, tick
    GET  /metrics                    Prometheus text format (when metrics are on)
    GET  /dashboard                  the page; it holds no data and reads everything from /api/events

With API keys on, everything but the page and its static files needs a key (Bearer or x-api-key). The page asks
for one and sends it as a header: it reads the feed with `fetch`, not `EventSource`, so a key never travels in a
URL (where logs and browser history would keep it).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator

from flask import Blueprint, Flask, Response, current_app, render_template, request

from adapters.base import SSE_KEEPALIVE, Frame, compact_json, sse
from gateway import __version__
from gateway.auth import Access
from gateway.config import Settings
from gateway.metrics import Metrics, PoolView
from gateway.polling import KEEPALIVE, TICK, KeepAlive, poll
from gateway.routes import LongRequests, add_view, client_gone_probe, flask_response, stream_answer, stream_frames
from gateway.tracker import STATUSES, Event, Tracker
from gateway.types import ErrorKind, GatewayError
from gateway.wsgi_answers import Answer, request_headers

TICK_SECONDS = 0.5  # how often a watcher is sent token counts, model changes and throughput
RECENT_IN_SNAPSHOT = 100  # finished records a new watcher is sent (the dashboard shows fewer)
KEEP_ALIVE_SLACK = 2.0  # seconds a model's keep-alive countdown may drift before watchers are told again


def register_monitor(app: Flask, tracker: Tracker, metrics: Metrics | None, pool_view: PoolView,
                     access: Access, settings: Settings, long_requests: LongRequests | None = None) -> None:
    """Add the monitor's views to `app`; `metrics` None leaves `/metrics` out. The unload button uses the
    pool on `app.extensions["gateway"]`."""
    views = Blueprint("monitor", __name__, template_folder="dashboard/templates", static_folder="dashboard/static",
                      static_url_path="/dashboard/static")
    keepalive = settings.keepalive_seconds
    long_requests = long_requests or LongRequests(settings.http_threads)

    def refusal(environ: dict) -> Answer | None:
        """The answer for a caller the access rules refuse; None lets it in. The monitor's POSTs take no body."""
        try:
            access.check(request_headers(environ))
        except GatewayError as err:
            return _error(401 if err.kind == ErrorKind.UNAUTHORIZED else 403, err.message)
        return None

    def guarded(view: Callable[..., Answer]) -> Callable[..., Response]:
        def checked(**params: str) -> Response:
            return flask_response(refusal(request.environ) or view(**params))

        checked.__name__ = view.__name__
        return checked

    @views.get("/api/progress/<request_id>")
    @guarded
    def progress(request_id: str) -> Answer:
        record = tracker.get(request_id)
        return _json(record) if record is not None else _error(404, f"No request with id `{request_id}`.")

    @views.get("/api/requests")
    @guarded
    def requests_list() -> Answer:
        status = request.args.get("status") or None
        if status is not None and status not in STATUSES:
            return _error(400, f"`status` must be one of {', '.join(STATUSES)}, got {status!r}.")
        return _json({"requests": tracker.list(status, request.args.get("model") or None)})

    @views.post("/api/requests/<request_id>/cancel")
    @guarded
    def cancel(request_id: str) -> Answer:
        if tracker.cancel(request_id):
            return _json({"id": request_id, "cancelled": True})
        if tracker.get(request_id) is None:
            return _error(404, f"No request with id `{request_id}`.")
        return _error(409, f"The request `{request_id}` has already finished.")

    @views.post("/api/models/<path:name>/unload")
    @guarded
    def unload(name: str) -> Answer:
        if not current_app.extensions["gateway"].pool.unload(name):
            return _error(404, f"The model `{name}` is not loaded.")
        return _json({"model": name, "unloaded": True})

    @views.get("/api/events")
    @guarded
    def events() -> Answer:
        try:
            give_back = long_requests.take()
        except GatewayError as err:
            return _error(503, err.message)
        feed = EventFeed(tracker, pool_view, keepalive, client_gone_probe(request.environ))

        def close() -> None:
            try:
                feed.close()
            finally:
                give_back()

        return stream_answer(stream_frames(feed, EventRenderer(), close), "text/event-stream")

    @views.get("/dashboard")
    def dashboard() -> str:
        return render_template("dashboard.html", version=__version__, auth=bool(access.api_keys),
                               root=request.script_root, keepalive=keepalive,
                               compute=current_app.extensions["gateway"].pool.compute_summary())

    app.register_blueprint(views)
    if metrics is not None:
        metrics.watch(tracker.counts, pool_view)

        def prometheus(environ: dict) -> Answer:  # scraped every few seconds: served ahead of Flask
            refused = refusal(environ)
            return refused or Answer(200, *metrics.render())

        add_view(app, "GET", "/metrics", prometheus)


def _json(body: Any, status: int = 200) -> Answer:
    return Answer(status, compact_json(body).encode())


def _error(status: int, message: str) -> Answer:
    return _json({"error": message}, status)


class EventRenderer:
    """SSE frames for the event feed: `event: <name>` with a JSON `data` line."""

    def start(self) -> list[Frame]:
        return [b"retry: 2000\n\n"]

    def feed(self, event: Event) -> list[Frame]:
        name, data = event
        return [sse(data, event=name)]

    def error(self, err: GatewayError) -> list[Frame]:
        return [sse({"error": err.message}, event="error")]

    def keepalive(self) -> list[Frame]:
        return [SSE_KEEPALIVE]


class EventFeed:
    """What one watcher of `/api/events` is sent, as an iterator for `stream_frames`:

    - `snapshot` first (and again after the watcher fell behind): active and recent records, models,
      throughput of the last minutes, counts, and the server's clock;
    - `request`: a record whose status or phase changed, at once;
    - every `TICK_SECONDS` at most: `progress` (the active records that changed since they were last sent),
      `models` (when the loaded models changed), `tick` (counts, and tokens per second since the last tick);
    - `KEEPALIVE` after `keepalive` seconds with nothing to send.

    It ends when `client_gone()` says the watcher hung up (checked every tick), so an idle feed does not hold its
    HTTP thread, or a graceful shutdown, until the next write fails.
    """

    def __init__(self, tracker: Tracker, pool_view: PoolView, keepalive: float,
                 client_gone: Callable[[], bool] = lambda: False):
        self._tracker = tracker
        self._client_gone = client_gone
        self._pool_view = pool_view
        self._keepalive = keepalive
        self._subscription = tracker.subscribe()  # before the snapshot: no change can fall between the two
        self._sent_records: dict[str, dict[str, Any]] = {}
        self._sent_models: list[dict[str, Any]] = []
        self._sent_models_at = 0.0
        self._sent_counts: dict[str, int] = {}
        self._sent_bucket: list[int] = [0, 0]

    def __iter__(self) -> Iterator[Event | KeepAlive]:
        yield self._sent(self._snapshot())
        for item in poll(self._subscription.get, self._client_gone, self._keepalive, probe=TICK_SECONDS):
            if item is KEEPALIVE:
                yield KEEPALIVE
                continue
            events = self._tick() if item is TICK else [self._snapshot() if item[0] == "resync" else item]
            for event in events:
                yield self._sent(event)

    def close(self) -> None:
        self._subscription.close()

    def _sent(self, event: Event) -> Event:
        name, data = event
        if name == "request":
            if data["status"] in STATUSES[2:]:
                self._sent_records.pop(data["id"], None)
            else:
                self._sent_records[data["id"]] = data
        return event

    def _snapshot(self) -> Event:
        active = [r.to_json() for r in self._tracker.active()]
        self._sent_records = {r["id"]: r for r in active}
        self._sent_models = self._models()
        self._sent_models_at = time.time()
        self._sent_counts = self._tracker.counts()
        throughput = self._tracker.throughput_since(0)
        self._sent_bucket = throughput[-1] if throughput else [0, 0]
        recent = [r.to_json() for r in self._tracker.recent(RECENT_IN_SNAPSHOT)]
        return ("snapshot", {"time": time.time(), "requests": active + recent, "models": self._sent_models,
                             "throughput": throughput, **self._sent_counts})

    def _tick(self) -> list[Event]:
        events: list[Event] = []
        changed = self._changed_records()
        if changed:
            events.append(("progress", {"requests": changed}))
        models = self._models()
        if _models_changed(self._sent_models, self._sent_models_at, models):
            self._sent_models, self._sent_models_at = models, time.time()
            events.append(("models", {"models": models}))
        counts = self._tracker.counts()
        buckets = [b for b in self._tracker.throughput_since(self._sent_bucket[0]) if b != self._sent_bucket]
        if buckets or counts != self._sent_counts:
            self._sent_counts = counts
            self._sent_bucket = buckets[-1] if buckets else self._sent_bucket
            events.append(("tick", {"time": time.time(), "throughput": buckets, **counts}))
        return events

    def _models(self) -> list[dict[str, Any]]:
        return sorted(self._pool_view(), key=lambda m: m["name"])

    def _changed_records(self) -> list[dict[str, Any]]:
        current = {r.id: r.to_json() for r in self._tracker.active()}
        changed = [data for rid, data in current.items() if self._sent_records.get(rid) != data]
        self._sent_records = {rid: data for rid, data in current.items()}
        return changed


def _models_changed(before: list[dict[str, Any]], before_at: float, after: list[dict[str, Any]]) -> bool:
    """Changed beyond the keep-alive countdown running down (watchers count that down themselves)."""
    if [_fixed_part(m) for m in before] != [_fixed_part(m) for m in after]:
        return True
    elapsed = time.time() - before_at
    for old, new in zip(before, after, strict=True):
        left_old, left_new = old.get("keep_alive_left"), new.get("keep_alive_left")
        if (left_old is None) != (left_new is None):
            return True
        if left_old is not None and abs((left_old - elapsed) - left_new) > KEEP_ALIVE_SLACK:
            return True
    return False


def _fixed_part(model: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in model.items() if k != "keep_alive_left"}
