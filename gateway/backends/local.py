"""The local llama.cpp backend: prompts and tokens in the API process, decoding in a runner process.

The API process loads only the model's vocabulary (`vocab_only`, ~20 MB for SmolLM2) to render templates,
tokenize, count and detokenize; the weights, contexts and KV cache live in the runner. When the runner dies
the next request starts a fresh one, after a pause that doubles with each crash in a row (up to
`MAX_BACKOFF`). A runner that dies before its first token while weights are repacked for the CPU is restarted
once with repacking off (llama.cpp #20824 crashes exactly there), and the log and `describe()` say so.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from dataclasses import replace

from gateway.backends.base import Backend, BackendStatus, ChoicePlan, GenerationRun
from gateway.backends.context_size import fixed_bytes, kv_bytes
from gateway.backends.prompts import PromptBuilder, check_token_ids, with_model_defaults
from gateway.backends.runner_process import RunnerProcess, exit_reason
from gateway.backends.structured import ModelStyle, OutputSetup, output_setup, shape_chat
from gateway.engine.executor import ExecutorSettings
from gateway.engine.grammar import check_grammar
from gateway.engine.jobs import GenerationJob, JobHandle, check_fits
from gateway.engine.llama import LlamaModel, LoadParams, supports_gpu_offload
from gateway.engine.reasoning_budget import ReasoningBudget
from gateway.models.gguf import read_metadata
from gateway.models.registry import ModelSpec
from gateway.prompt_rules import PromptRule, PromptRules
from gateway.types import ErrorKind, GatewayError, InternalRequest, SamplingParams, TokenizeResult

log = logging.getLogger("gateway.backends")

MAX_BACKOFF = 30.0  # seconds between restarts of a runner that keeps crashing
CRASHES_KEPT = 10


def estimate_bytes(spec: ModelSpec, settings: ExecutorSettings) -> int:
    """Weights (the file), logits for a full batch, and the KV cache for the context it will get (chosen by the
    pool before this is asked)."""
    meta = read_metadata(spec.path)
    return fixed_bytes(spec, meta, settings) + kv_bytes(meta, settings.n_ctx or meta.context_length or 4096, settings)


def vram_bytes(spec: ModelSpec, settings: ExecutorSettings, size: int) -> int:
    """The share of `size` offloaded to GPUs: by offloaded layers (the output layer counts as one more)."""
    layers = settings.load.n_gpu_layers if settings.load else 0
    if layers == 0 or not supports_gpu_offload():
        return 0
    meta = read_metadata(spec.path)
    total = int(meta.kv.get(f"{meta.architecture}.block_count", 0)) + 1
    return size if layers < 0 or layers >= total else size * layers // total


class LocalRun(GenerationRun):
    """Its request thread reads the runner's pipe itself while it waits (`RunnerProcess.next_event`), from
    creation until `close`."""

    def __init__(self, runner: RunnerProcess):
        self.events = queue.SimpleQueue()
        self.choices: list[ChoicePlan] = []
        self.handles: list[JobHandle] = []
        self.max_tokens = 0
        self._runner = runner
        self._attached = True
        self._detach_lock = threading.Lock()  # close may come from the request thread and a monitor's cancel
        runner.attach()

    def next_event(self, timeout: float):
        return self._runner.next_event(self.events, timeout)

    def queue_position(self) -> int:
        return self._runner.queue_position(self.handles[0]) if self.handles else 0

    def close(self) -> None:
        for handle in self.handles:
            handle.cancel()
        with self._detach_lock:
            attached, self._attached = self._attached, False
        if attached:
            self._runner.detach()


class LocalBackend(Backend):
    can_warm = True
    def __init__(self, spec: ModelSpec, settings: ExecutorSettings, context_overflow: str = "truncate",
                 log_level: str = "info", load_timeout: float = 600.0, rules: list[PromptRule] | None = None):
        self.name = spec.name
        self.rules = PromptRules(rules or [])  # agent noise stripped from system prompts, counted for this model
        self.warms = 0  # prefill-only requests (POST /api/cache/warm)
        self._spec = spec
        self._settings = settings
        self._prompts = PromptBuilder(context_overflow)  # its templates die with this load of the model
        self._log_level = log_level
        self._load_timeout = load_timeout
        self._lock = threading.Lock()  # one restart at a time
        self.restarts = 0
        self.crashes: deque[dict] = deque(maxlen=CRASHES_KEPT)
        self._crashes_in_a_row = 0
        self.note: str | None = None
        self.model = LlamaModel(spec.path, LoadParams(vocab_only=True))
        self.style = ModelStyle.of(self.model.chat_template() or "", spec.chat_format)
        try:
            self._runner = self._start_runner()
        except BaseException:
            self.model.free()
            raise
        self.n_ctx = self._runner.facts["n_ctx"]
        self.parallel = self._runner.facts["parallel"]
        self.n_threads = self._runner.facts["n_threads"]
        self.embedding_window = self._runner.facts["embedding_window"]

    # -- the runner's life -----------------------------------------------------------------------------------

    def _start_runner(self) -> RunnerProcess:
        return RunnerProcess(self.name, self._spec.path, self._settings, self._log_level, self._load_timeout,
                             on_exit=self._runner_died)

    def _runner_died(self, runner: RunnerProcess) -> None:
        """Called by the thread that saw the dead runner's pipe close; the restart waits for the next request. A
        runner that ended cleanly (status 0: stopped from outside) is no crash."""
        if runner.exitcode == 0:
            return
        reason = exit_reason(runner.exitcode)
        self.crashes.append({"at": time.time(), "reason": reason, "pid": runner.pid})
        load = self._settings.load or LoadParams()
        if not runner.decoded and load.repack:  # the next runner differs: this is no repeat of the same crash
            self._settings = replace(self._settings, load=replace(load, repack=False))
            self.note = (f"weight repacking turned off: the runner crashed ({reason}) before its first token with "
                         "repacking on (llama.cpp #20824)")
            log.warning("model %s: %s; the next runner loads without repacking", self.name, self.note)
        elif runner.decoded:  # it served: a new run of crashes starts here
            self._crashes_in_a_row = 1
        else:
            self._crashes_in_a_row += 1

    def _live_runner(self) -> RunnerProcess:
        runner = self._runner
        if runner.alive:
            return runner
        with self._lock:
            if self._runner.alive:
                return self._runner
            delay = self._backoff()
            if delay > 0:
                log.info("model %s: waiting %.1fs before starting a new runner (%d crashes in a row)", self.name,
                         delay, self._crashes_in_a_row)
                time.sleep(delay)
            try:
                self._runner = self._start_runner()
            except RuntimeError as exc:
                raise GatewayError(ErrorKind.UNAVAILABLE, f"The model `{self.name}` could not be restarted: {exc}",
                                   details={"model": self.name}) from exc
            self.restarts += 1
            log.warning("model %s: started a new runner (pid %d, restart %d)", self.name, self._runner.pid,
                        self.restarts)
            return self._runner

    def _backoff(self) -> float:
        last = self.crashes[-1]["at"] if self.crashes else 0.0
        return restart_delay(self._crashes_in_a_row, last, time.time())

    # -- Backend -----------------------------------------------------------------------------------------------

    def generate(self, req: InternalRequest, spec: ModelSpec) -> GenerationRun:
        runner = self._live_runner()
        if req.think_required and self.style.reasoning is None:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f'"{spec.name}" does not support thinking', "think",
                               details={"model": spec.name})
        if req.kind == "chat":
            if req.tools and req.tool_choice == "auto":  # a model too small to call tools unasked can be told to
                req = replace(req, tool_choice=spec.tool_choice)
            req = shape_chat(self._without_noise(req), self.style)
        if req.warm:
            return self._warm(req, spec, runner)
        prepared = self._prompts.prepare(req, spec, self.model, self.n_ctx)
        setup = output_setup(req, self.style, prepared.prompts[0].text if prepared.prompts else "")
        if req.constraint is not None and req.constraint.kind == "gbnf":
            check_grammar(self.model.vocab, setup.grammar, req.constraint.param)
        sampling = with_model_defaults(req.sampling, spec)
        # vLLM echoes a chat's last message, not the rendered template
        echo_text = (req.messages[-1].content or "") if req.kind == "chat" and req.messages else ""
        run = LocalRun(runner)
        run.output = setup.plan
        try:
            for p_index, prompt in enumerate(prepared.prompts):
                for j in range(req.n):
                    job = make_job(req, sampling, prompt.tokens, prepared.window, j)
                    job.grammar, job.grammar_triggers = setup.grammar, setup.triggers
                    job.reasoning = self._reasoning_budget(req, setup)
                    job.cache_prefix = self._cache_prefix(req, spec, prompt.tokens) if j == 0 else 0
                    check_fits(len(job.prompt), job.max_tokens, self.n_ctx)
                    index = p_index * req.n + j
                    run.handles.append(runner.submit(job, run.events, index))
                    run.choices.append(ChoicePlan(index, echo_text or prompt.text, count_prompt=(j == 0)))
        except BaseException:
            run.close()
            raise
        run.max_tokens = run.handles[0].job.max_tokens
        return run

    def _warm(self, req: InternalRequest, spec: ModelSpec, runner: RunnerProcess) -> GenerationRun:
        """Prefill a prompt and keep it, generating nothing: a chat is rendered without the generation prompt (the
        assistant's turn header), so that the requests that follow it, which add their own turn, start with all of
        it. The whole prompt is offered to the persistent prompt cache."""
        if req.kind == "chat":
            req = replace(req, add_generation_prompt=False, continue_final_message=False)
        elif len(req.prompts) != 1:
            raise GatewayError(ErrorKind.INVALID_REQUEST, f"A cache warm takes one prompt, got {len(req.prompts)}.",
                               "prompt")
        tokens = self._prompts.prepare(req, spec, self.model, self.n_ctx).prompts[0].tokens
        check_fits(len(tokens), 0, self.n_ctx)
        job = GenerationJob(prompt=tokens, sampling=SamplingParams(temperature=0), max_tokens=0,
                            cache_prefix=len(tokens))
        run = LocalRun(runner)
        run.handles.append(runner.submit(job, run.events, 0))
        run.choices.append(ChoicePlan(0, "", count_prompt=True))
        self.warms += 1
        return run

    def _cache_prefix(self, req: InternalRequest, spec: ModelSpec, tokens: list[int]) -> int:
        """How much of a prompt the persistent prompt cache should save: a chat's tokens up to the end of its first
        message, which is its system prompt (with the tools the template puts there) wherever it has one. That is
        the part agents and applications send unchanged with every conversation, so it is what pays to survive a
        restart, and it is saved once, not again with every turn; a conversation's later turns are reused from
        the KV cache while it runs. Prompts without a chat's structure are saved only when warmed."""
        cache = self._settings.prompt_cache
        if cache is None or not cache.dir or req.kind != "chat" or len(tokens) <= cache.min_tokens:
            return 0
        first = self._prompts.first_message(req, spec, self.model)
        n = len(first) if first else 0
        return n if n >= cache.min_tokens and tokens[:n] == first else 0

    def _reasoning_budget(self, req: InternalRequest, setup: OutputSetup) -> ReasoningBudget | None:
        markers = self.style.reasoning
        if req.reasoning_budget is None or markers is None or req.think is False:
            return None
        close_tokens = self.model.tokenize(markers.close, False, True)
        return ReasoningBudget(req.reasoning_budget, markers.open, markers.close, close_tokens, setup.in_reasoning)

    def embed(self, req: InternalRequest, spec: ModelSpec, on_started=None) -> tuple[list[list[float]], int]:
        runner = self._live_runner()
        model = self.model
        inputs = [p if isinstance(p, list) else model.tokenize(p, model.add_bos, False) for p in req.prompts]
        check_token_ids(inputs, model.n_vocab, "input")
        keep = req.truncate_tokens or (self.embedding_window if req.truncate == "drop_turns" else None)
        if keep:  # TGI/vLLM: a given length; Ollama's `truncate`: the window (the input's start is kept)
            inputs = [tokens[:keep] for tokens in inputs]
        n = sum(len(t) for t in inputs)
        if on_started is not None:
            on_started(n)
        return runner.embed(inputs), n

    def _without_noise(self, req: InternalRequest) -> InternalRequest:
        """The request with the agent-noise rules applied to its system prompt; the same object where they changed
        nothing, since copying a request of some forty fields is a tenth of a short count_tokens' CPU."""
        messages = self.rules.apply(req.messages)
        return req if messages is req.messages else replace(req, messages=messages)

    def tokenize(self, req: InternalRequest, spec: ModelSpec) -> TokenizeResult:
        model = self.model
        if req.messages:
            tokens = self._prompts.render_chat(shape_chat(self._without_noise(req), self.style), spec, model).tokens
        else:
            text = req.prompts[0] if req.prompts else ""
            tokens = model.tokenize(text, model.add_bos and req.add_special_tokens, True)
        return TokenizeResult(tokens, model.token_texts(tokens), self.n_ctx, spec.name)

    def detokenize(self, tokens: list[int]) -> str:
        check_token_ids([tokens], self.model.n_vocab, "tokens")
        return self.model.detokenize(tokens)

    def describe(self) -> BackendStatus:
        runner = self._runner
        stats = runner.stats()
        load = self._settings.load or LoadParams()
        return BackendStatus(
            kind="local", n_ctx=self.n_ctx, parallel=self.parallel, n_threads=self.n_threads,
            health="ok" if runner.alive else "crashed", pid=runner.pid,
            repack=load.repack, huge_pages=load.huge_pages, huge_page_bytes=runner.facts.get("huge_page_bytes", 0),
            busy=stats["busy"], waiting=stats["waiting"],
            kv_used=min(stats["kv_used"], self.n_ctx), restarts=self.restarts, crashes=list(self.crashes),
            note=self.note, prompt_cache=self._cache_stats(runner), parked=runner.engine_stats.get("parked"),
            prompt_rules=self.rules.counts())

    def _cache_stats(self, runner: RunnerProcess) -> dict | None:
        """The runner's persistent prompt cache numbers with the warms counted here (None: the cache is off)."""
        stats = runner.engine_stats.get("prompt_cache")
        return None if stats is None else {**stats, "warms": self.warms}

    def close(self) -> None:
        self._runner.close()
        self.model.free()


def restart_delay(crashes_in_a_row: int, last_crash_at: float, now: float) -> float:
    """Seconds to wait before starting a runner: none after one crash, then 1, 2, 4 ... after the last crash, up
    to MAX_BACKOFF, while runners keep dying before their first token."""
    if crashes_in_a_row <= 1:
        return 0.0
    pause = min(MAX_BACKOFF, 2.0 ** (crashes_in_a_row - 2))
    return max(0.0, last_crash_at + pause - now)


def make_job(req: InternalRequest, sampling, tokens: list[int], window: int, choice: int) -> GenerationJob:
    """One choice's engine job: its seed, and max_tokens within the window (a cap for families that clip)."""
    if choice and sampling.seed is not None:  # n > 1 with a seed: distinct yet reproducible choices
        sampling = replace(sampling, seed=sampling.seed + choice)
    room = window - len(tokens)
    if room <= 0:
        raise GatewayError(ErrorKind.CONTEXT_OVERFLOW,
                           f"The prompt ({len(tokens)} tokens) fills the context of {window} tokens.", "messages",
                           details={"limit": window, "prompt_tokens": len(tokens)})
    max_tokens = sampling.max_tokens
    clip = req.clip_max_tokens or req.truncate == "drop_turns"
    if max_tokens is None or (clip and max_tokens > room):
        max_tokens = room  # Ollama's num_predict and Anthropic's max_tokens are caps, never reasons to refuse
    logprobs = sampling.top_logprobs if sampling.logprobs else None
    return GenerationJob(prompt=tokens, sampling=sampling, max_tokens=max_tokens, stop=sampling.stop,
                         logprobs=logprobs)
