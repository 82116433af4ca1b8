"""Prometheus metrics at `/metrics`: fed by listening to the tracker, and read from the tracker's request counts
and the model pool at scrape time.

Names start with `llm_gateway_` and carry their unit; labels take only bounded values: the family, the route's
path pattern, the resolved model name (empty while a request's model is unknown, so a client cannot mint label
values) and the final status. Prompt text never reaches a metric. Each app has its own `CollectorRegistry`, so
several apps can live in one process (the tests build many).
"""

from __future__ import annotations

import collections
import itertools
import threading
from typing import Any, Callable, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from gateway.prometheus_text import TextExposition

PoolView = Callable[[], "list[dict[str, Any]]"]
Counts = Callable[[], "dict[str, int]"]

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0)
ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 640.0)
QUEUE_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
PENDING_MAX = 1024  # queued token reports of one (api, model) that are applied without waiting for a scrape


class Record(Protocol):
    """What the metrics read of a tracker's record; the tracker's `Record` has these among its fields. Times are
    `time.monotonic()` seconds."""

    api: str
    endpoint: str
    model: str
    model_resolved: bool
    status: str
    prompt_tokens: int | None
    cached_tokens: int | None
    opened: float
    started_at: float | None
    first_token_at: float | None
    finished_at: float | None


class Source(Protocol):
    """A tracker, as far as the metrics need one: it tells one listener of its records' transitions."""

    def listen(self, listener: Metrics) -> None: ...


def model_label(record: Record) -> str:
    return record.model if record.model_resolved else ""


class Metrics:
    """The request metrics (told of each record's start, tokens and end by the tracker they listen to) plus,
    once `watch` is called, the live gauges."""

    def __init__(self, tracker: Source) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("llm_gateway_requests", "Finished generation requests by family, endpoint, model "
                                "and final status.", ["api", "endpoint", "model", "status"], registry=r)
        self.ttft = Histogram("llm_gateway_time_to_first_token_seconds", "Time from arrival to the first "
                              "generated token.", ["model"], buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("llm_gateway_inter_token_latency_seconds", "Time between two generated tokens.",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("llm_gateway_e2e_request_latency_seconds", "Time from arrival to the end, for "
                             "requests that got a sequence.", ["model"], buckets=E2E_BUCKETS, registry=r)
        self.queue_wait = Histogram("llm_gateway_queue_wait_seconds", "Time from arrival until a sequence "
                                    "started on the request (model loading included).", ["model"],
                                    buckets=QUEUE_BUCKETS, registry=r)
        self.prompt_tokens = Counter("llm_gateway_prompt_tokens", "Prompt tokens of started requests.",
                                     ["api", "model"], registry=r)
        self.cached_tokens = Counter("llm_gateway_prompt_cached_tokens", "Prompt tokens reused from the KV cache "
                                     "(prefix cache hits).", ["api", "model"], registry=r)
        self.generated_tokens = Counter("llm_gateway_generated_tokens", "Generated tokens.", ["api", "model"],
                                        registry=r)
        self.key_requests = Counter("llm_gateway_key_requests", "Finished requests by API key name (never the "
                                    "key) and final status.", ["key", "status"], registry=r)
        self.key_tokens = Counter("llm_gateway_key_tokens", "Prompt and generated tokens by API key name.",
                                  ["key", "kind"], registry=r)
        self._text = TextExposition()
        # The request metrics in the order they were made (and registered), each with a number raised after every
        # change to it, so a scrape formats again only those that changed; the live gauges (`watch`) are read
        # every time.
        self._collectors: list[Any] = [m for m in vars(self).values() if isinstance(m, (Counter, Histogram))]
        self._versions = {id(c): 0 for c in self._collectors}
        self._numbers = itertools.count(1)  # each version is a number never given before (see `_changed`)
        self._lock = threading.Lock()
        self._prefix: dict[str, list[int]] = {}  # model → [prompt tokens, cached prompt tokens] since start
        self._token_children: dict[tuple[str, str], tuple] = {}  # (api, model) → children; models are few
        self._pending: dict[tuple[str, str], collections.deque] = {}  # (api, model) → (count, gap) not yet applied
        tracker.listen(self)

    # -- told by the tracker, outside its lock ---------------------------------------------------------------

    def started(self, record: Record) -> None:
        model = model_label(record)
        prompt, cached = record.prompt_tokens or 0, record.cached_tokens or 0
        if record.started_at is not None:
            self.queue_wait.labels(model).observe(record.started_at - record.opened)
        self.prompt_tokens.labels(record.api, model).inc(prompt)
        self.cached_tokens.labels(record.api, model).inc(cached)
        self._changed(self.queue_wait, self.prompt_tokens, self.cached_tokens)
        with self._lock:
            tally = self._prefix.setdefault(model, [0, 0])
            tally[0] += prompt
            tally[1] += cached

    def tokens(self, record: Record, count: int, gap: float | None) -> None:
        """`gap` is the time since the previous report (None for the first, which gives the TTFT); a report of
        several tokens at once counts as that many equal gaps. Later reports only queue their numbers (a deque
        append, no lock): the counter and the histogram get them at the next scrape, or every `PENDING_MAX`
        reports of an (api, model), so a token's report costs its request thread almost nothing."""
        model = model_label(record)
        if gap is None:
            self._per_token(record.api, model)[0].inc(count)
            if record.first_token_at is not None:
                self.ttft.labels(model).observe(record.first_token_at - record.opened)
            self._changed(self.generated_tokens, self.ttft)
            return
        pending = self._pending.get((record.api, model))
        if pending is None:
            pending = self._pending.setdefault((record.api, model), collections.deque())
        pending.append((count, gap))
        if len(pending) >= PENDING_MAX:
            self._apply(record.api, model, pending)

    def _apply(self, api: str, model: str, pending: collections.deque) -> None:
        """Move queued token reports into the metrics; any thread may, even several at once (each report is
        popped by one of them)."""
        generated, itl = self._per_token(api, model)
        total = 0
        while pending:
            try:
                count, gap = pending.popleft()
            except IndexError:  # another thread took the last one
                break
            total += count
            for _ in range(count):
                itl.observe(gap / count)
        if total:
            generated.inc(total)
            self._changed(self.generated_tokens, self.itl)

    def _per_token(self, api: str, model: str) -> tuple:
        """The generated-token counter and ITL histogram of (api, model), looked up once (a `labels()` call
        takes a lock and builds a key)."""
        children = self._token_children.get((api, model))
        if children is None:
            children = (self.generated_tokens.labels(api, model), self.itl.labels(model))
            self._token_children[(api, model)] = children
            self._changed(self.generated_tokens, self.itl)  # a new child is a change, at zero
        return children

    def _changed(self, *collectors: Any) -> None:
        """After a change to `collectors` (never before: a scrape between would keep the old text). Threads may
        race here; as no number is given twice, a collector changed since a scrape never shows that scrape's."""
        for collector in collectors:
            self._versions[id(collector)] = next(self._numbers)

    def finished(self, record: Record) -> None:
        model = model_label(record)
        self.requests.labels(record.api, record.endpoint, model, record.status).inc()
        if record.key is not None:
            self.key_requests.labels(record.key, record.status).inc()
            self.key_tokens.labels(record.key, "prompt").inc(record.prompt_tokens or 0)
            self.key_tokens.labels(record.key, "generated").inc(record.tokens_generated)
        if record.started_at is not None and record.finished_at is not None:
            self.e2e.labels(model).observe(record.finished_at - record.opened)
        self._changed(self.requests, self.key_requests, self.key_tokens, self.e2e)

    # -- read at scrape time ---------------------------------------------------------------------------------

    def watch(self, counts: Counts, pool_view: PoolView) -> None:
        """Add the gauges that are read when scraped: request counts from the tracker, models from the pool."""
        live = _LiveCollector(counts, pool_view, self.prefix_hit_ratios)
        self.registry.register(live)
        self._collectors.append(live)

    def prefix_hit_ratios(self) -> dict[str, float]:
        with self._lock:
            return {model: cached / prompt for model, (prompt, cached) in self._prefix.items() if prompt}

    def render(self) -> tuple[bytes, str]:
        for (api, model), pending in list(self._pending.items()):
            self._apply(api, model, pending)
        return self._text.render(self._collectors, self._versions), CONTENT_TYPE_LATEST


MODEL_GAUGES = (  # metric name, help, pool_view key
    ("llm_gateway_model_sequences_in_use", "Sequences decoding for requests now.", "busy"),
    ("llm_gateway_model_parallel_sequences", "Sequences the model decodes together at most.", "parallel"),
    ("llm_gateway_model_requests_waiting", "Requests waiting for a free sequence of the model.", "waiting"),
    ("llm_gateway_kv_cache_used_cells", "KV cache cells holding tokens of live sequences.", "kv_used"),
    ("llm_gateway_kv_cache_size_cells", "KV cache cells (the context size).", "n_ctx"),
    ("llm_gateway_model_memory_bytes", "Estimated memory of the loaded model: weights plus KV cache.", "size"),
    ("llm_gateway_model_load_seconds", "How long the model took to load.", "load_seconds"),
    ("llm_gateway_model_keep_alive_remaining_seconds", "Seconds until an idle model is unloaded (absent when "
     "kept forever).", "keep_alive_left"),
)


PROMPT_CACHE_METRICS = (  # metric name, help, key in a model's `prompt_cache`; counters end in _total
    ("llm_gateway_prompt_cache_hits_total", "Prompts whose prefix was restored from the persistent prompt cache.",
     "hits"),
    ("llm_gateway_prompt_cache_misses_total", "Long prompts with no long prefix in memory or on disk.", "misses"),
    ("llm_gateway_prompt_cache_restored_tokens_total", "Prompt tokens restored from the persistent prompt cache.",
     "restored_tokens"),
    ("llm_gateway_prompt_cache_saves_total", "Prefixes written to the persistent prompt cache.", "saves"),
    ("llm_gateway_prompt_cache_removed_total", "Cache files removed as corrupt, truncated or stale.", "removed"),
    ("llm_gateway_prompt_cache_warm_total", "Prompts prefilled by POST /api/cache/warm.", "warms"),
    ("llm_gateway_prompt_cache_entries", "Prefixes of the model in the persistent prompt cache.", "entries"),
    ("llm_gateway_prompt_cache_bytes", "Bytes of the model's files in the persistent prompt cache.", "bytes"),
)


class _LiveCollector:
    """A custom collector: its values are read from the tracker and the pool when Prometheus scrapes."""

    def __init__(self, counts: Counts, pool_view: PoolView, prefix: Callable[[], dict[str, float]]):
        self._counts = counts
        self._pool_view = pool_view
        self._prefix = prefix

    def collect(self) -> list[Metric]:
        counts = self._counts()
        models = self._pool_view()
        families = [
            GaugeMetricFamily("llm_gateway_requests_running", "Requests holding a sequence.",
                              value=counts.get("running", 0)),
            GaugeMetricFamily("llm_gateway_requests_queued", "Requests waiting for a model load or a sequence.",
                              value=counts.get("queued", 0)),
            GaugeMetricFamily("llm_gateway_models_loaded", "Models loaded now.", value=len(models)),
        ]
        for name, help_text, key in MODEL_GAUGES:
            gauge = GaugeMetricFamily(name, help_text, labels=["model"])
            for model in models:
                if model.get(key) is not None:
                    gauge.add_metric([model["name"]], model[key])
            families.append(gauge)
        usage = GaugeMetricFamily("llm_gateway_kv_cache_usage_ratio", "Share of the KV cache in use (0 to 1).",
                                  labels=["model"])
        for model in models:
            if model.get("n_ctx"):
                usage.add_metric([model["name"]], model.get("kv_used", 0) / model["n_ctx"])
        hits = GaugeMetricFamily("llm_gateway_prefix_cache_hit_ratio", "Share of prompt tokens reused from the KV "
                                 "cache since start (0 to 1).", labels=["model"])
        for model, ratio in sorted(self._prefix().items()):
            hits.add_metric([model], ratio)
        return [*families, usage, hits, *_prompt_cache(models)]


def _prompt_cache(models: list[dict[str, Any]]) -> list[Metric]:
    """The persistent prompt cache's numbers per model (runners count since they started), and what each agent
    noise rule did (gateway/prompt_rules.py)."""
    families: list[Metric] = []
    for name, help_text, key in PROMPT_CACHE_METRICS:
        kind = CounterMetricFamily if name.endswith("_total") else GaugeMetricFamily
        family = kind(name.removesuffix("_total"), help_text, labels=["model"])
        for model in models:
            if model.get("prompt_cache"):
                family.add_metric([model["name"]], model["prompt_cache"].get(key, 0))
        families.append(family)
    applied = CounterMetricFamily("llm_gateway_prompt_rule_applied", "System prompts an agent-noise rule changed.",
                                  labels=["model", "rule"])
    saved = CounterMetricFamily("llm_gateway_prompt_rule_saved_chars", "Characters of system prompt after a "
                                "rule's first match: what a changing line there would have kept out of the prefix "
                                "cache.", labels=["model", "rule"])
    for model in models:
        for rule, counts in (model.get("prompt_rules") or {}).items():
            applied.add_metric([model["name"], rule], counts["applied"])
            saved.add_metric([model["name"], rule], counts["saved_chars"])
    return [*families, applied, saved]
