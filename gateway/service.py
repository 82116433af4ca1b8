"""The only place that knows both sides: resolve the model, render and tokenize the prompt, submit one engine
job per choice, and turn engine events into `OutputEvent`s (or a finished result) for any adapter.

Every request runs on its HTTP thread; this code does the light per-request work (templating, tokenizing) there,
and the engine thread only decodes.
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

from gateway.engine.executor import Executor
from gateway.engine.jobs import Finished, GenerationJob, JobHandle, Piece, Started
from gateway.engine.pool import ModelPool
from gateway.engine.template import DEFAULT_TEMPLATE, ChatTemplate
from gateway.models.registry import ModelRegistry, ModelSpec
from gateway.types import (
    Choice,
    ChoiceDone,
    Done,
    EmbeddingResult,
    ErrorKind,
    GatewayError,
    GenerationResult,
    HealthResult,
    InternalRequest,
    ModelList,
    OutputEvent,
    Result,
    TextDelta,
    Timings,
    Usage,
)


class KeepAlive:
    """Yielded by a generation when nothing happened for a while, so the stream can prove the client is there."""


KEEPALIVE = KeepAlive()
PROBE_SECONDS = 0.5  # how often a request checks that its client is still connected

ClientGone = Callable[[], bool]


@dataclass
class _Choice:
    index: int
    prompt_text: str
    count_prompt: bool


@dataclass
class Generation:
    """The running choices of one request; iterate for events, `close()` cancels whatever is still running."""

    handles: list[JobHandle]
    sink: queue.SimpleQueue
    choices: list[_Choice]
    load_seconds: float
    echo: bool
    started: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        for handle in self.handles:
            handle.cancel()


class Service:
    def __init__(self, registry: ModelRegistry, pool: ModelPool, keepalive_seconds: float = 10.0):
        self.registry = registry
        self.pool = pool
        self.keepalive_seconds = keepalive_seconds
        self._templates: dict[str, ChatTemplate] = {}

    # -- queries ---------------------------------------------------------------------------------------------

    def query(self, req: InternalRequest) -> Result:
        loaded = self.pool.loaded()
        if req.kind == "health":
            return HealthResult("ok", sorted(loaded))
        if req.kind == "list_models":
            return ModelList([self.registry.info(s, s.name in loaded) for s in self.registry.specs()])
        if req.kind == "show_model":
            spec = self.registry.resolve(req.model)
            return self.registry.info(spec, spec.name in loaded)
        raise GatewayError(ErrorKind.INTERNAL, f"Unknown query kind {req.kind}.")

    def embed(self, req: InternalRequest) -> EmbeddingResult:
        executor, _ = self.pool.get(self.registry.resolve(req.model))
        model = executor.model
        inputs = [p if isinstance(p, list) else model.tokenize(p, model.add_bos, False) for p in req.prompts]
        _check_token_ids(inputs, model.n_vocab, "input")
        vectors = executor.embed(inputs)
        n = sum(len(t) for t in inputs)
        return EmbeddingResult(vectors, Usage(prompt_tokens=n))

    # -- generation ------------------------------------------------------------------------------------------

    def start(self, req: InternalRequest) -> Generation:
        """Tokenize and submit every choice; errors that can be known before decoding are raised here."""
        spec = self.registry.resolve(req.model)
        executor, load_seconds = self.pool.get(spec)
        prompts = self._prompts(req, spec, executor)
        sink: queue.SimpleQueue = queue.SimpleQueue()
        handles: list[JobHandle] = []
        choices: list[_Choice] = []
        try:
            for p_index, (text, tokens) in enumerate(prompts):
                for j in range(req.n):
                    job = self._job(req, tokens, executor, j)
                    index = p_index * req.n + j
                    handles.append(executor.submit(job, sink, tag=index))
                    choices.append(_Choice(index, text, count_prompt=(j == 0)))
        except GatewayError:
            for handle in handles:
                handle.cancel()
            raise
        return Generation(handles, sink, choices, load_seconds, req.echo)

    def _prompts(self, req: InternalRequest, spec: ModelSpec, executor: Executor) -> list[tuple[str, list[int]]]:
        model = executor.model
        if req.kind == "chat":
            if any(m.images for m in req.messages):
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f"The model `{spec.name}` does not accept images.", "messages")
            text = self._template(spec, executor).render(req.messages, req.tools or None,
                                                         req.add_generation_prompt)
            add_bos = model.add_bos and not (model.bos_text and text.startswith(model.bos_text))
            return [(text, model.tokenize(text, add_bos, True))]
        result = []
        for prompt in req.prompts:
            if isinstance(prompt, list):
                _check_token_ids([prompt], model.n_vocab, "prompt")
                result.append((model.detokenize(prompt), prompt))
            else:
                result.append((prompt, model.tokenize(prompt, model.add_bos, True)))
        return result

    def _template(self, spec: ModelSpec, executor: Executor) -> ChatTemplate:
        template = self._templates.get(spec.name)
        if template is None:
            source = executor.model.chat_template() or DEFAULT_TEMPLATE
            template = ChatTemplate(source, executor.model.bos_text, executor.model.eos_text)
            self._templates[spec.name] = template
        return template

    def _job(self, req: InternalRequest, tokens: list[int], executor: Executor, choice: int) -> GenerationJob:
        sampling = req.sampling
        if choice and sampling.seed is not None:  # n > 1 with a seed: distinct yet reproducible choices
            sampling = replace(sampling, seed=sampling.seed + choice)
        max_tokens = sampling.max_tokens
        if max_tokens is None:
            max_tokens = max(1, executor.n_ctx - len(tokens))
        logprobs = sampling.top_logprobs if sampling.logprobs else None
        return GenerationJob(prompt=tokens, sampling=sampling, max_tokens=max_tokens, stop=sampling.stop,
                             logprobs=logprobs)

    def events(self, gen: Generation, client_gone: ClientGone | None = None) -> Iterator[OutputEvent | KeepAlive]:
        """Engine events → OutputEvents, ending with `Done`. Yields KEEPALIVE after `keepalive_seconds` of silence
        and cancels everything once `client_gone()` says the client hung up."""
        total = Usage()
        timings = Timings(load=gen.load_seconds)
        running = len(gen.handles)
        by_index = {c.index: c for c in gen.choices}
        quiet_since = next_probe = time.monotonic()
        while running:
            try:
                index, event = gen.sink.get(timeout=PROBE_SECONDS)
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
                yield TextDelta(index, event.text, event.logprobs)
            elif isinstance(event, Started):
                if gen.echo:
                    yield TextDelta(index, by_index[index].prompt_text)
            elif isinstance(event, Finished):
                running -= 1
                if event.error is not None:
                    gen.close()
                    raise event.error
                usage = Usage(event.prompt_tokens if by_index[index].count_prompt else 0,
                              event.completion_tokens, event.cached_tokens if by_index[index].count_prompt else 0)
                total.add(usage)
                timings.queued = max(timings.queued, event.queued_seconds)
                timings.prompt = max(timings.prompt, event.prompt_seconds)
                timings.generation = max(timings.generation, event.generation_seconds)
                reason = "stop" if event.reason == "cancelled" else event.reason
                yield ChoiceDone(index, reason, event.stop_sequence, usage)
        timings.total = time.monotonic() - gen.started + gen.load_seconds
        yield Done(total, timings)

    def complete(self, gen: Generation, client_gone: ClientGone | None = None) -> GenerationResult:
        """Run a generation to its end and gather it into one result (non-streaming responses)."""
        choices = {c.index: Choice(c.index) for c in gen.choices}
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


def _check_token_ids(prompts: list[list[int]], n_vocab: int, param: str) -> None:
    for tokens in prompts:
        for token in tokens:
            if not 0 <= token < n_vocab:
                raise GatewayError(ErrorKind.INVALID_REQUEST,
                                   f"Invalid token id {token} in `{param}`: expected 0 to {n_vocab - 1}.", param)
