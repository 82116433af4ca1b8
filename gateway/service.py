"""The only place that knows both sides: resolve the model, admit the request on a model's `Backend`, follow it
in its tracker record, and turn the backend's token events into `OutputEvent`s (or a finished result) for any
adapter. Nothing here knows which engine serves a model.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from gateway import __version__
from gateway.backends.base import GenerationRun, SplitPiece
from gateway.backends.pool import Lease, ModelPool
from gateway.engine.jobs import Finished, Piece, Prefilled, Started
from gateway.limits import check_limits
from gateway.model_changes import ChangeRun, ModelChanges
from gateway.models.registry import ModelRegistry, ModelSpec
from gateway.output import ChoiceOutput, gather
from gateway.polling import KEEPALIVE, TICK, ClientGone, KeepAlive, poll
from gateway.response_store import Conversations, MemoryStore
from gateway.tracker import Record, Tracker
from gateway.types import (
    Choice,
    ChoiceDone,
    DetokenizeResult,
    Done,
    EmbeddingResult,
    ErrorKind,
    GatewayError,
    GenerationResult,
    HealthResult,
    InternalRequest,
    LoadResult,
    ModelInfo,
    ModelList,
    OutputEvent,
    PromptStarted,
    Result,
    RunningList,
    RunningModel,
    TextDelta,
    ThinkingDelta,
    Timings,
    ToolCallDelta,
    Usage,
    VersionResult,
    WarmResult,
)

log = logging.getLogger("gateway.service")

QUERY_KINDS = ("list_models", "show_model", "list_running", "health", "version", "tokenize", "detokenize",
               "load_model", "unload_model", "get_response", "delete_response")
CHANGE_KINDS = ("copy_model", "delete_model", "create_model", "pull_model")
PROGRESS_EVERY = 1.0  # seconds between progress notes while generating
PLACEHOLDER_MODELS = ("dummy", "tgi")


@dataclass
class ProgressNote:
    """The request's record, yielded at each phase change (and each second while generating) to a stream that
    asked for progress; SSE streams carry it as a comment line, which every SSE client skips."""

    record: dict


@dataclass
class Call:
    """What the service needs of the HTTP call a request came in on: who to record it as, whether the route can
    stream, whether the client asked for progress notes, and how to tell that the client hung up."""

    request_id: str
    family: str
    endpoint: str
    client_gone: ClientGone
    can_stream: bool = False
    progress: bool = False
    key: str | None = None  # the name of the API key it came with (never the key itself)


@dataclass
class Streamed:
    """A request answered as a stream: the routes' one streaming loop renders `events`; `close` ends the work
    (the client left, or the stream is over)."""

    events: Iterable[Any]
    close: Callable[[], None]


@dataclass(eq=False)  # kept in a set: identity is what matters
class Generation:
    """The running choices of one request; iterate for events, `close()` cancels whatever is still running
    and lets go of the model (with the request's keep_alive)."""

    run: GenerationRun
    lease: Lease
    keep_alive: float | None
    echo: bool
    record: Record
    started: float = field(default_factory=time.monotonic)
    progress: bool = False  # yield ProgressNotes (a client opted in)
    failure: GatewayError | None = None  # why the server ended it (shutting down); its client gets this error
    on_close: Callable[[Generation], None] = lambda gen: None

    @property
    def load_seconds(self) -> float:
        return self.lease.load_seconds

    def fail(self, err: GatewayError) -> None:
        """End it from the server's side: its choices are cancelled and its client gets `err`."""
        self.failure = err
        self.run.close()

    def close(self) -> None:
        self.run.close()
        self.lease.release(self.keep_alive)
        self.record.finish("cancelled")  # ignored if the generation already ended
        self.on_close(self)


class Service:
    def __init__(self, registry: ModelRegistry, pool: ModelPool, keepalive_seconds: float = 10.0,
                 changes: ModelChanges | None = None, tracker: Tracker | None = None,
                 conversations: Conversations | None = None, request_timeout: float = 0.0):
        self.tracker = tracker or Tracker()
        self.request_timeout = request_timeout  # seconds a generation may run; 0: no limit
        self.conversations = conversations or Conversations(MemoryStore())  # the Responses API's stored answers
        self.registry = registry
        self.pool = pool
        self.keepalive_seconds = keepalive_seconds
        self._live: set[Generation] = set()  # running generations, for `shutdown`
        self._live_lock = threading.Lock()
        self.changes = changes or ModelChanges(registry, pool, None)

    def run(self, req: InternalRequest, call: Call) -> Result | Streamed:
        """A request's whole life: queries answer at once; model changes run on a thread; generations and
        embeddings get the one tracker record this method opens, and close on failure."""
        check_limits(req)
        if req.kind in QUERY_KINDS:
            return self.query(req)
        streaming = req.stream and call.can_stream
        if req.kind in CHANGE_KINDS:
            if not self.changes.enabled:
                raise GatewayError(ErrorKind.FORBIDDEN, "Changes to the model store are turned off on this server "
                                                        "(`store_changes: false`).")
            change = ChangeRun(self.changes, req.change, call.client_gone)
            return Streamed(change, change.close) if streaming else change.last()
        self.conversations.expand(req)
        record = self.tracker.open(call.request_id, call.family, call.endpoint, req.model, req.stream, call.key)
        try:
            if req.kind == "embedding":
                return self.embed(req, record)
            gen = self.start(req, record)
            if req.warm:
                return self.warm(gen, call.client_gone)
            gen.progress = call.progress
            if streaming:
                return Streamed(self.conversations.follow(req, self.events(gen, call.client_gone)), gen.close)
            return self.conversations.keep(req, self.complete(gen, call.client_gone))
        except GatewayError as err:
            record.finish("failed", error=err.message)
            raise
        except Exception:
            record.finish("failed", error="internal error")
            raise

    def resolve(self, name: str) -> ModelSpec:
        """An empty name (TGI, vLLM's optional `model`) is the default model, and so are the placeholders
        huggingface_hub sends to a server given by URL (TGI ignores the model), unless a model is named so."""
        if not name:
            return self.registry.default()
        try:
            return self.registry.resolve(name)
        except GatewayError:
            if name in PLACEHOLDER_MODELS:
                return self.registry.default()
            raise

    # -- queries ---------------------------------------------------------------------------------------------

    def query(self, req: InternalRequest) -> Result:
        kind = req.kind
        if kind in ("get_response", "delete_response"):
            return self.conversations.answer(req)
        if kind == "health":
            return HealthResult("ok", sorted(self.pool.loaded()), self.pool.gpu_offload(), self.pool.devices())
        if kind == "version":
            return VersionResult(__version__)
        if kind == "list_models":
            loaded = self.pool.loaded()
            return ModelList([self._info(s, s.name in loaded) for s in self.registry.specs()])
        if kind == "list_running":
            return RunningList([self._running(entry) for entry in self.pool.running()])
        spec = self.resolve(req.model)
        if kind == "show_model":
            return self._info(spec, spec.name in self.pool.loaded(), full=True)
        if kind == "unload_model":
            self.pool.unload(spec.name)
            return LoadResult(spec.name, "unload")
        lease = self.pool.acquire(spec, req.load_options)
        try:
            if kind == "load_model":
                return LoadResult(spec.name, "load")
            if kind == "tokenize":
                return lease.backend.tokenize(req, spec)
            if kind == "detokenize":
                tokens = req.prompts[0] if req.prompts and isinstance(req.prompts[0], list) else []
                return DetokenizeResult(lease.backend.detokenize(tokens))
        finally:
            lease.release(req.keep_alive)
        raise GatewayError(ErrorKind.INTERNAL, f"Unknown query kind {kind}.")

    def _info(self, spec: ModelSpec, loaded: bool, full: bool = False) -> ModelInfo:
        """A model's listing facts with the context it has (loaded) or would get, and why."""
        info = self.registry.info(spec, loaded, full=full)
        info.max_model_len, info.context_reason = self.pool.context_for(spec)
        return info

    def _running(self, entry) -> RunningModel:
        status = entry.backend.describe()
        info = self.registry.info(entry.spec, True, status.n_ctx)
        info.context_reason = entry.context_reason
        return RunningModel(info, entry.size, entry.size_vram, entry.expires_at_epoch(), status.n_ctx,
                            runner={**_runner_facts(status), "context_reason": entry.context_reason})

    def embed(self, req: InternalRequest, record: Record) -> EmbeddingResult:
        started = time.monotonic()
        spec = self.resolve(req.model)
        record.set_model(spec.name)
        lease = self.pool.acquire(spec, req.load_options, on_loading=record.loading)
        try:
            vectors, n = lease.backend.embed(req, spec, on_started=lambda n: record.started(n, 0, None))
        finally:
            lease.release(req.keep_alive)
        record.finish("completed", "stop")
        timings = Timings(load=lease.load_seconds, total=time.monotonic() - started)
        return EmbeddingResult(vectors, Usage(prompt_tokens=n), timings)

    # -- generation ------------------------------------------------------------------------------------------

    def start(self, req: InternalRequest, record: Record) -> Generation:
        """Submit every choice to the model's backend; errors that can be known before decoding are raised here.
        The record follows the request through loading, queueing, prompt and generation."""
        spec = self.resolve(req.model)
        record.set_model(spec.name)
        lease = self.pool.acquire(spec, req.load_options, on_loading=record.loading)
        try:
            if req.warm and not lease.backend.can_warm:
                raise GatewayError(ErrorKind.INVALID_REQUEST, f"The model `{spec.name}` has no prompt cache to warm "
                                                              "(its engine is not local).", "model",
                                   details={"model": spec.name})
            run = lease.backend.generate(req, spec)
        except BaseException:
            lease.release(req.keep_alive)
            raise
        gen = Generation(run, lease, req.keep_alive, req.echo, record, on_close=self._forget)
        with self._live_lock:
            self._live.add(gen)
        record.queued(run.queue_position)
        record.on_cancel(gen.close)
        return gen

    def _forget(self, gen: Generation) -> None:
        with self._live_lock:
            self._live.discard(gen)

    def shutdown(self, err: GatewayError) -> int:
        """End every running generation with `err` (streams get their family's error frame): what is still
        running when the shutdown grace period is over. Returns how many were ended."""
        with self._live_lock:
            live = list(self._live)
        for gen in live:
            gen.fail(err)
        return len(live)

    def events(self, gen: Generation, client_gone: ClientGone | None = None
               ) -> Iterator[OutputEvent | KeepAlive | ProgressNote]:
        """Engine events → OutputEvents, ending with `Done`. Yields KEEPALIVE after `keepalive_seconds` of silence
        and cancels everything once `client_gone()` says the client hung up."""
        total = Usage()
        timings = Timings(load=gen.load_seconds)
        record, cancelled, last_reason = gen.record, False, None
        next_note = 0.0  # when a progress note is next due while generating; 0: at the first token
        if gen.progress:
            yield ProgressNote(record.to_json())
        running = len(gen.run.choices)
        by_index = {c.index: c for c in gen.run.choices}
        outputs = {c.index: ChoiceOutput(gen.run.output, c.index) for c in gen.run.choices}
        for item in poll(gen.run.next_event, client_gone, self.keepalive_seconds):
            if item is KEEPALIVE:
                yield KEEPALIVE
                continue
            if item is TICK:
                self._check_deadline(gen)
                continue
            index, event = item
            now = time.monotonic()
            if isinstance(event, (Piece, SplitPiece)):
                if event.token:
                    record.tokens(1)
                if gen.progress and now >= next_note:
                    next_note = now + PROGRESS_EVERY
                    yield ProgressNote(record.to_json())
                if isinstance(event, Piece):
                    yield from outputs[index].feed(event.text, event.logprobs)
                else:
                    yield from outputs[index].feed_split(event.text, event.thinking, event.calls, event.logprobs)
            elif isinstance(event, Prefilled):
                record.prompt_progress(event.done)
                if gen.progress:
                    yield ProgressNote(record.to_json())
            elif isinstance(event, Started):
                if by_index[index].count_prompt:
                    record.started(event.prompt_tokens, event.cached_tokens, gen.run.max_tokens)
                    if gen.progress:
                        yield ProgressNote(record.to_json())
                    yield PromptStarted(index, event.prompt_tokens, event.cached_tokens)
                if gen.echo:
                    yield TextDelta(index, by_index[index].prompt_text)
            elif isinstance(event, Finished):
                running -= 1
                if event.reason == "cancelled" and gen.failure is not None:
                    event.error = gen.failure
                if event.error is not None:
                    record.finish("failed", "timeout" if event.error.kind == ErrorKind.TIMEOUT else None,
                                  error=event.error.message)
                    gen.close()
                    raise event.error
                usage = Usage(event.prompt_tokens if by_index[index].count_prompt else 0,
                              event.completion_tokens, event.cached_tokens if by_index[index].count_prompt else 0,
                              outputs[index].reasoning_tokens)
                if by_index[index].count_prompt:  # an upstream server may report the prompt's size only at the end
                    record.prompt_counted(event.prompt_tokens, event.cached_tokens)
                total.add(usage)
                timings.queued = max(timings.queued, event.queued_seconds)
                timings.prompt = max(timings.prompt, event.prompt_seconds)
                timings.generation = max(timings.generation, event.generation_seconds)
                yield from outputs[index].close()
                cancelled = cancelled or event.reason == "cancelled"
                last_reason = "stop" if event.reason == "cancelled" else event.reason
                if last_reason == "stop" and outputs[index].calls_made:
                    last_reason = "tool_calls"
                yield ChoiceDone(index, last_reason, event.stop_sequence, usage)
                if not running:
                    break
        else:  # the client hung up
            gen.close()
            return
        timings.total = time.monotonic() - gen.started + gen.load_seconds
        record.finish("cancelled" if cancelled else "completed", last_reason)
        yield Done(total, timings)

    def warm(self, gen: Generation, client_gone: ClientGone | None = None) -> WarmResult:
        """Run a prefill-only generation (POST /api/cache/warm) to its end: what the cache now holds of the prompt,
        and how long it took."""
        record = gen.record
        try:
            for item in poll(gen.run.next_event, client_gone, self.keepalive_seconds):
                if item is KEEPALIVE or item is TICK:
                    continue
                _, event = item
                if isinstance(event, Started):
                    record.started(event.prompt_tokens, event.cached_tokens, None)
                elif isinstance(event, Prefilled):
                    record.prompt_progress(event.done)
                elif isinstance(event, Finished):
                    error = event.error or gen.failure
                    if error is None and event.reason == "cancelled":
                        error = GatewayError(ErrorKind.INVALID_REQUEST, "The cache warm was cancelled.")
                    if error is not None:
                        record.finish("failed", error=error.message)
                        raise error
                    record.finish("completed", "length")
                    return WarmResult(record.model, event.prompt_tokens, event.prompt_tokens, event.cached_tokens,
                                      time.monotonic() - gen.started, event.persisted)
        finally:
            gen.close()
        raise GatewayError(ErrorKind.INVALID_REQUEST, "The client closed the connection before the cache was warm, "
                                                      "so the warm was cancelled.")

    def _check_deadline(self, gen: Generation) -> None:
        """End a generation that has run past `request_timeout` (queueing and prompt included): its client gets
        the family's timeout error, in-band once streaming."""
        if self.request_timeout and gen.failure is None and time.monotonic() - gen.started > self.request_timeout:
            gen.fail(GatewayError(ErrorKind.TIMEOUT, f"The generation ran longer than this server's request_timeout "
                                                     f"({self.request_timeout:g} s) and was stopped.",
                                  details={"limit": self.request_timeout}))

    def complete(self, gen: Generation, client_gone: ClientGone | None = None) -> GenerationResult:
        """Run a generation to its end and gather it into one result (non-streaming responses)."""
        choices = {c.index: Choice(c.index) for c in gen.run.choices}
        done = None
        try:
            for event in self.events(gen, client_gone):
                if isinstance(event, Done):
                    done = event
                elif isinstance(event, (TextDelta, ThinkingDelta, ToolCallDelta, ChoiceDone)):
                    gather(choices[event.index], event)
        finally:
            gen.close()
        if done is None:  # the events stop early only when the client hung up (or closed its sending side)
            raise GatewayError(ErrorKind.INVALID_REQUEST, "The client closed the connection before the answer was "
                                                          "ready, so the generation was cancelled.")
        return GenerationResult([choices[i] for i in sorted(choices)], done.usage, done.timings)


def _runner_facts(status) -> dict:
    """The engine's health as `/api/ps` shows it beside Ollama's fields (clients ignore keys they do not know)."""
    facts = {"kind": status.kind, "health": status.health, "pid": status.pid, "weight_repacking": status.repack,
             "restarts": status.restarts, "crashes": len(status.crashes)}
    if status.huge_pages is not None:
        facts["huge_pages"] = status.huge_pages
        facts["huge_page_bytes"] = status.huge_page_bytes
    if status.crashes:
        facts["last_crash"] = status.crashes[-1]["reason"]
    if status.note:
        facts["note"] = status.note
    if status.endpoints:
        facts["endpoints"] = status.endpoints
    if status.parked is not None:
        facts["parked"] = status.parked
    return facts
