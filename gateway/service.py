"""The only place that knows both sides: resolve the model, admit the request on a model's `Backend`, follow it
in its tracker record, and turn the backend's token events into `OutputEvent`s (or a finished result) for any
adapter. Nothing here knows which engine serves a model.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from gateway import __version__
from gateway.backends.base import GenerationRun
from gateway.backends.pool import Lease, ModelPool
from gateway.engine.jobs import Finished, Piece, Prefilled, Started
from gateway.model_changes import ModelChanges
from gateway.models.registry import ModelRegistry, ModelSpec
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
    ModelList,
    OutputEvent,
    Progress,
    PromptStarted,
    Result,
    RunningList,
    RunningModel,
    TextDelta,
    Timings,
    Usage,
    VersionResult,
)

_END = object()


class ChangeRun:
    """A model change running on its own thread: iterate for its Progress, or `last()` for the final one.
    `close()` (the client left) asks it to stop between chunks."""

    def __init__(self, events: queue.SimpleQueue, stop: threading.Event, client_gone: ClientGone):
        self._events = events
        self._stop = stop
        self._client_gone = client_gone

    def __iter__(self) -> Iterator[Progress]:
        while True:
            try:
                item = self._events.get(timeout=PROBE_SECONDS)
            except queue.Empty:
                if self._client_gone():
                    self.close()
                    return
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def last(self) -> Progress:
        final = Progress("success")
        for progress in self:
            final = progress
        return final

    def close(self) -> None:
        self._stop.set()


log = logging.getLogger("gateway.service")


class KeepAlive:
    """Yielded by a generation when nothing happened for a while, so the stream can prove the client is there."""


KEEPALIVE = KeepAlive()


@dataclass
class ProgressNote:
    """The request's record, yielded at each phase change (and each second while generating) to a stream that
    asked for progress; SSE streams carry it as a comment line, which every SSE client skips."""

    record: dict


PROGRESS_EVERY = 1.0  # seconds between progress notes while generating
PLACEHOLDER_MODELS = ("dummy", "tgi")
PROBE_SECONDS = 0.5  # how often a request checks that its client is still connected

ClientGone = Callable[[], bool]


@dataclass
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

    @property
    def load_seconds(self) -> float:
        return self.lease.load_seconds

    def close(self) -> None:
        self.run.close()
        self.lease.release(self.keep_alive)
        self.record.finish("cancelled")  # ignored if the generation already ended


class Service:
    def __init__(self, registry: ModelRegistry, pool: ModelPool, keepalive_seconds: float = 10.0,
                 changes: ModelChanges | None = None, tracker: Tracker | None = None):
        self.tracker = tracker or Tracker()
        self.registry = registry
        self.pool = pool
        self.keepalive_seconds = keepalive_seconds
        self.changes = changes or ModelChanges(registry, pool, None)

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
        if kind == "health":
            return HealthResult("ok", sorted(self.pool.loaded()))
        if kind == "version":
            return VersionResult(__version__)
        if kind == "list_models":
            loaded = self.pool.loaded()
            return ModelList([self.registry.info(s, s.name in loaded, _n_ctx(loaded, s.name))
                              for s in self.registry.specs()])
        if kind == "list_running":
            return RunningList([self._running(entry) for entry in self.pool.running()])
        spec = self.resolve(req.model)
        if kind == "show_model":
            loaded = self.pool.loaded()
            return self.registry.info(spec, spec.name in loaded, _n_ctx(loaded, spec.name), full=True)
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

    def _running(self, entry) -> RunningModel:
        status = entry.backend.describe()
        info = self.registry.info(entry.spec, True, status.n_ctx)
        return RunningModel(info, entry.size, entry.size_vram, entry.expires_at_epoch(), status.n_ctx,
                            runner=_runner_facts(status))

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

    def change(self, req: InternalRequest, client_gone: ClientGone) -> ChangeRun:
        """Start a model change (pull, create, copy, delete) on a worker thread."""
        events: queue.SimpleQueue = queue.SimpleQueue()
        stop = threading.Event()

        def work() -> None:
            try:
                self.changes.run(req.change, events.put, stop.is_set)
                events.put(_END)
            except GatewayError as err:
                events.put(err)
            except Exception as exc:
                log.exception("model change failed")
                events.put(GatewayError(ErrorKind.INTERNAL, f"The model change failed: {exc}"))

        threading.Thread(target=work, name=f"model-{req.change.op}", daemon=True).start()
        return ChangeRun(events, stop, client_gone)

    # -- generation ------------------------------------------------------------------------------------------

    def start(self, req: InternalRequest, record: Record) -> Generation:
        """Submit every choice to the model's backend; errors that can be known before decoding are raised here.
        The record follows the request through loading, queueing, prompt and generation."""
        spec = self.resolve(req.model)
        record.set_model(spec.name)
        lease = self.pool.acquire(spec, req.load_options, on_loading=record.loading)
        try:
            run = lease.backend.generate(req, spec)
        except BaseException:
            lease.release(req.keep_alive)
            raise
        gen = Generation(run, lease, req.keep_alive, req.echo, record)
        record.queued(run.queue_position)
        record.on_cancel(gen.close)
        return gen

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
        quiet_since = next_probe = time.monotonic()
        while running:
            try:
                index, event = gen.run.events.get(timeout=PROBE_SECONDS)
            except queue.Empty:
                index, event = -1, None
            now = time.monotonic()
            if client_gone is not None and now >= next_probe:  # also while tokens flow: a request that writes
                next_probe = now + PROBE_SECONDS                # nothing until the end must still notice
                if client_gone():
                    gen.close()
                    return
            if event is None:
                if now - quiet_since >= self.keepalive_seconds:
                    quiet_since = now
                    yield KEEPALIVE
                continue
            quiet_since = now
            if isinstance(event, Piece):
                record.tokens(1)
                if gen.progress and now >= next_note:
                    next_note = now + PROGRESS_EVERY
                    yield ProgressNote(record.to_json())
                if event.text or event.logprobs:
                    yield TextDelta(index, event.text, event.logprobs)
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
                if event.error is not None:
                    record.finish("failed", error=event.error.message)
                    gen.close()
                    raise event.error
                usage = Usage(event.prompt_tokens if by_index[index].count_prompt else 0,
                              event.completion_tokens, event.cached_tokens if by_index[index].count_prompt else 0)
                total.add(usage)
                timings.queued = max(timings.queued, event.queued_seconds)
                timings.prompt = max(timings.prompt, event.prompt_seconds)
                timings.generation = max(timings.generation, event.generation_seconds)
                cancelled = cancelled or event.reason == "cancelled"
                last_reason = "stop" if event.reason == "cancelled" else event.reason
                yield ChoiceDone(index, last_reason, event.stop_sequence, usage)
        timings.total = time.monotonic() - gen.started + gen.load_seconds
        record.finish("cancelled" if cancelled else "completed", last_reason)
        yield Done(total, timings)

    def complete(self, gen: Generation, client_gone: ClientGone | None = None) -> GenerationResult:
        """Run a generation to its end and gather it into one result (non-streaming responses)."""
        choices = {c.index: Choice(c.index) for c in gen.run.choices}
        done = None
        try:
            for event in self.events(gen, client_gone):
                if isinstance(event, TextDelta):
                    choice = choices[event.index]
                    choice.text += event.text
                    if event.logprobs is not None:
                        choice.logprobs = (choice.logprobs or []) + event.logprobs
                elif isinstance(event, ChoiceDone):
                    choices[event.index].finish_reason = event.finish_reason
                    choices[event.index].stop_sequence = event.stop_sequence
                elif isinstance(event, Done):
                    done = event
        finally:
            gen.close()
        if done is None:
            raise GatewayError(ErrorKind.INTERNAL, "The generation was cancelled.")
        return GenerationResult([choices[i] for i in sorted(choices)], done.usage, done.timings)


def _n_ctx(loaded: dict, name: str) -> int:
    backend = loaded.get(name)
    return backend.n_ctx if backend is not None else 0


def _runner_facts(status) -> dict:
    """The engine's health as `/api/ps` shows it beside Ollama's fields (clients ignore keys they do not know)."""
    facts = {"kind": status.kind, "health": status.health, "pid": status.pid, "weight_repacking": status.repack,
             "restarts": status.restarts, "crashes": len(status.crashes)}
    if status.crashes:
        facts["last_crash"] = status.crashes[-1]["reason"]
    if status.note:
        facts["note"] = status.note
    return facts
