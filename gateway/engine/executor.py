"""One loaded model served with continuous batching by a single thread that alone owns its llama context.

Each step is one `llama_decode` of one batch: the next token of every generating sequence plus prompt chunks of
sequences still in prefill, within `n_batch`. Jobs join and leave between steps; cancels are messages too, so
the decode loop never waits on a lock that a request thread holds.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Callable

import llama_cpp

from gateway.engine.embedder import Embedder
from gateway.engine.jobs import (
    Finished,
    GenerationJob,
    JobHandle,
    Piece,
    Prefilled,
    Started,
    check_fits,
    check_queue,
)
from gateway.engine.llama import (
    ContextParams,
    LlamaModel,
    LoadParams,
    new_context,
    physical_cores,
    supports_gpu_offload,
)
from gateway.engine.logprobs import token_logprobs
from gateway.engine.parked_states import MIN_GAIN as PARK_MIN_GAIN
from gateway.engine.parked_states import ParkedStates
from gateway.engine.prefix_cache import common_prefix, find_leader, held_prefixes, reuse_prefix
from gateway.engine.prompt_store import PromptCacheSettings, PromptStore
from gateway.engine.sampling import GrammarCache, SamplerChain, SamplingDefaults
from gateway.engine.sequence import Sequence
from gateway.types import ErrorKind, GatewayError, SamplingParams

log = logging.getLogger("gateway.engine")

RESTORE_MIN_GAIN = 64  # a saved prefix is read from disk only if it covers this many tokens more than memory does
# On a CPU a step's cost grows with its tokens from a few tokens on: the weights are read once per step (a Q4
# model's bytes over the memory bandwidth) while the arithmetic is per token (twice the parameters over the
# FLOPS), and the two meet at about 3-5 tokens for 2 to 16 cores. So prefilling two prompts in one step saves
# nothing and makes the first wait for the second; a step takes a second prompt only while its prompt tokens are
# below this floor (a follower's last token, a few-token continuation).
PROMPTS_SHARE_BELOW = 8


@dataclass
class ExecutorSettings:
    parallel: int = 4
    n_ctx: int | None = None  # None: the model's trained context, capped at 8192
    n_batch: int = 512
    prefill_chunk: int = 128  # prompt tokens a step may take while other sequences generate
    n_threads: int | None = None
    max_queue: int = 64
    load: LoadParams | None = None
    context: ContextParams = field(default_factory=ContextParams)  # attention, KV types, LoRA (generation only)
    n_ctx_reason: str = ""  # why n_ctx has its size (the pool's choice), for the log and monitors
    prompt_cache: PromptCacheSettings | None = None  # the persistent prompt cache (gateway/engine/prompt_store.py)
    parked_max_bytes: int = -1  # idle sequences' KV state out of the window (parked_states.py); -1: as much as
    # the KV cache holds, 0: idle sequences keep their cells


class Executor:
    """Runs one model. `submit` and `cancel` may be called from any thread; everything else runs in `_loop`."""

    def __init__(self, name: str, path: str, settings: ExecutorSettings,
                 after_step: Callable[[], None] | None = None):
        self.name = name
        self.settings = settings
        self._after_step = after_step or (lambda: None)  # a runner sends a step's events in one message
        self.model = LlamaModel(path, settings.load or LoadParams())
        self.n_ctx = settings.n_ctx or min(self.model.n_ctx_train or 4096, 8192)
        self.parallel = max(1, min(settings.parallel, 256))
        self.n_threads = settings.n_threads or physical_cores()
        self.n_batch = max(settings.n_batch, self.parallel)
        # with layers on a GPU a step costs about the same for a few tokens as for hundreds: prompts share steps
        on_gpu = (settings.load or LoadParams()).n_gpu_layers != 0 and supports_gpu_offload()
        self._prompts_share_below = self.n_batch if on_gpu else PROMPTS_SHARE_BELOW
        self.defaults = SamplingDefaults()
        self.embedding_window = min(self.model.n_ctx_train or 2048, 2048)  # tokens one embedding input may have
        self._ctx = new_context(self.model, self.n_ctx, self.n_batch, self.parallel, self.n_threads,
                                extra=settings.context)
        self._mem = llama_cpp.llama_get_memory(self._ctx)
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self._embedder = Embedder(self.model, self.embedding_window, self.n_threads)
        self._grammars = GrammarCache(self.model.vocab)
        self._slots = [Sequence(i) for i in range(self.parallel)]
        self._waiting: deque[JobHandle] = deque()
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._store = self._open_store(settings.prompt_cache)
        parked = settings.parked_max_bytes
        if parked < 0:
            parked = self.n_ctx * self._kv_bytes_per_token()
        self._parked = ParkedStates(parked) if parked > 0 else None
        self._stats_sent: dict[str, int] = {}  # each stats source's version last reported by `stats`
        self._submit_lock = threading.Lock()  # taken by request threads only, never by the loop
        self._submitted = 0
        self._ended = 0  # jobs that have left (finished, cancelled, failed); written by the loop thread only
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name=f"executor-{name}", daemon=True)
        self._thread.start()

    # -- called from request threads -----------------------------------------------------------------------

    def submit(self, job: GenerationJob, sink: queue.SimpleQueue | None = None, tag: int = 0) -> JobHandle:
        """Queue a job; refuse at once if it cannot fit the context or the wait queue is full."""
        self._check_fits(job)
        handle = JobHandle(job, self.request_cancel, sink, tag)
        self._prepare(handle)
        if handle.refused is not None:
            raise handle.refused
        with self._submit_lock:
            check_queue(self.name, self._submitted - self._ended - self.parallel, self.settings.max_queue)
            self._submitted += 1
        self._inbox.put(("job", handle))
        return handle

    def enqueue(self, handle: JobHandle) -> None:
        """Queue a job its submitter has already checked (a runner's parent counts the queue itself)."""
        self._prepare(handle)
        with self._submit_lock:
            self._submitted += 1
        self._inbox.put(("job", handle))

    def _prepare(self, handle: JobHandle) -> None:
        """Parse the job's grammar here, on the submitting thread, so the decode loop only clones a parse; a
        grammar that does not parse fails the job when it would have been admitted."""
        job = handle.job
        if job.grammar:
            try:
                handle.grammar = self._grammars.new(job.grammar, job.grammar_triggers)
            except GatewayError as err:
                handle.refused = err

    def _check_fits(self, job: GenerationJob) -> None:
        check_fits(len(job.prompt), job.max_tokens, self.n_ctx)

    def request_cancel(self, handle: JobHandle) -> None:
        self._inbox.put(("cancel", handle))

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """Embed token lists on the loop thread (it owns every context of this model); blocks the caller."""
        reply: queue.SimpleQueue = queue.SimpleQueue()
        self.embed_into(inputs, reply)
        result = reply.get()
        if isinstance(result, BaseException):
            raise result
        return result

    def embed_into(self, inputs: list[list[int]], reply) -> None:
        """Queue an embedding; the loop thread later calls `reply.put` with the vectors or the exception."""
        self._inbox.put(("embed", (inputs, reply)))

    def _open_store(self, settings: PromptCacheSettings | None) -> PromptStore | None:
        if settings is None or not settings.dir:
            return None
        try:
            return PromptStore(settings, self.model.path, self._kv_bytes_per_token(),
                               wake=lambda: self._inbox.put(("wake", None)))
        except OSError as exc:  # a folder that cannot be created or read: serve without it
            log.warning("prompt cache off for %s: %s", self.name, exc)
            return None

    def _kv_bytes_per_token(self) -> int:
        """A token's bytes in a sequence's saved state: f16 K and V of every layer, and the cell's facts."""
        model = self.model.ptr
        n_head = max(1, llama_cpp.llama_model_n_head(model))
        n_embd_kv = self.model.n_embd * llama_cpp.llama_model_n_head_kv(model) // n_head
        return 4 * llama_cpp.llama_model_n_layer(model) * n_embd_kv + 16

    def stats(self, changed_only: bool = True) -> dict[str, dict | None]:
        """The numbers of the persistent prompt cache (`prompt_cache`) and of the park (`parked`), None for one
        that is off; with `changed_only`, only those whose version moved since the last call."""
        out: dict[str, dict | None] = {}
        for name, source in (("prompt_cache", self._store), ("parked", self._parked)):
            version = -1 if source is None else source.version
            if not changed_only or self._stats_sent.get(name) != version:
                self._stats_sent[name] = version
                out[name] = None if source is None else source.stats()
        return out

    def kv_used(self) -> int:
        """KV cells the sequences hold; a runner sends it with every step's events."""
        return min(sum(len(s.tokens) for s in self._slots), self.n_ctx)

    @property
    def running(self) -> bool:
        """False once the loop thread has ended (closed, or stopped by a bug)."""
        return self._thread.is_alive()

    def close(self) -> None:
        self._inbox.put(("stop", None))
        self._thread.join(timeout=30)

    # -- the loop thread -------------------------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while not self._stopping:
                idle = not self._waiting and all(s.handle is None for s in self._slots)
                self._drain_inbox(block=idle and not self._embedder.pending)
                self._admit()
                streams = any(s.handle is not None for s in self._slots)
                if streams:
                    self._step()
                if self._embedder.ready(streams):  # one input at a time, in turns with the streams
                    self._embedder.step()
                self._after_step()
        except Exception as exc:  # a bug here must not leave request threads waiting forever
            log.exception("executor %s stopped", self.name)
            self._fail_everything(GatewayError(ErrorKind.INTERNAL, f"The model executor failed: {exc}"))
            self._after_step()
        finally:
            self._free()

    def _drain_inbox(self, block: bool) -> None:
        try:
            message = self._inbox.get() if block else self._inbox.get_nowait()
            while True:
                self._handle_message(*message)
                message = self._inbox.get_nowait()
        except queue.Empty:
            return

    def _handle_message(self, kind: str, payload) -> None:
        if kind == "job":
            self._waiting.append(payload)
        elif kind == "cancel":
            self._cancel(payload)
        elif kind == "embed":
            self._embedder.add(*payload)
        elif kind == "stop":
            self._stopping = True
        # "wake" (the prompt cache's writer changed its stats) needs nothing more: the loop goes round, and the
        # runner sends the stats at the end of it

    def _cancel(self, handle: JobHandle) -> None:
        if handle in self._waiting:
            self._waiting.remove(handle)
            self._end(handle, Finished("cancelled", len(handle.job.prompt), 0, 0))
            return
        for slot in self._slots:
            if slot.handle is handle:
                self._finish(slot, "cancelled")

    def _admit(self) -> None:
        """Give free sequences to waiting jobs, first come first served, reusing cached prefixes. A job whose
        prompt shares a long prefix with one being prefilled follows it and copies that prefix when ready. Once
        jobs have started, the sequences still idle are parked."""
        admitted = False
        while self._waiting:
            free = [s for s in self._slots if s.handle is None]
            if not free:
                break
            handle = self._waiting.popleft()
            prompt = handle.job.prompt
            held = held_prefixes(self._slots, prompt)
            seq = max(free, key=lambda s: (held[s], -s.last_used))
            try:
                sampler, early = self._samplers(handle)
            except GatewayError as err:
                self._end(handle, Finished("error", len(prompt), 0, 0, error=err))
                continue
            seq.begin(handle, sampler, early)
            admitted = True
            leader, shared = find_leader(held, prompt)
            if leader is not None:
                seq.follow(leader, shared)
            else:
                self._start_prefill(seq, held)
        if admitted and self._parked is not None:
            self._park_idle()

    def _park_idle(self) -> None:
        """Idle sequences' cells leave the KV cache, their state kept in memory (parked_states.py): every cell
        up to the highest one in use costs every running stream's attention."""
        for seq in self._slots:
            if seq.handle is None and seq.tokens and self._parked.park(self._ctx, seq.seq_id, seq.tokens):
                llama_cpp.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
                seq.tokens = []

    def _samplers(self, handle: JobHandle) -> tuple[SamplerChain, SamplerChain | None]:
        """The job's chain, and for `min_tokens` a second one that bans every token that would end it early
        (both share the job's grammar; the first owns it)."""
        if handle.refused is not None:
            raise handle.refused
        sampling = handle.job.sampling
        grammar, handle.grammar = handle.grammar, None

        def make(params: SamplingParams, owner: bool) -> SamplerChain:
            return SamplerChain(self.model.vocab, self.model.n_vocab, params, self.defaults, grammar, owner)

        try:
            sampler = make(sampling, True)
        except BaseException:
            if grammar is not None:
                grammar.free()
            raise
        if sampling.min_tokens <= 0 or sampling.ignore_eos and not sampling.stop_token_ids:
            return sampler, None
        banned = self._ending_tokens(sampling)
        bias = {**sampling.logit_bias, **{t: -math.inf for t in banned}}
        try:
            return sampler, make(replace(sampling, logit_bias=bias), False)
        except BaseException:
            sampler.free()
            raise

    def _ending_tokens(self, sampling: SamplingParams) -> set[int]:
        ids = {t for t in sampling.stop_token_ids if 0 <= t < self.model.n_vocab}
        return ids if sampling.ignore_eos else ids | self.model.eog

    def _start_prefill(self, seq: Sequence, held: dict[Sequence, int] | None = None) -> None:
        """Take what the cache holds of the prompt and queue the rest; `held` is recomputed for a follower,
        whose leader's cache has grown since admission."""
        prompt = seq.handle.job.prompt
        seq.leader = seq.leader_handle = None
        if held is None:
            held = held_prefixes(self._slots, prompt)
        if self._parked is not None:
            self._swap_parked(seq, prompt, held)
        if self._store is not None:
            held[seq] = self._restore(seq, prompt, max(held.values(), default=0))
        seq.cached = reuse_prefix(self._mem, seq, held, prompt)
        seq.pending = prompt[seq.cached:]
        self._plan_save(seq)
        seq.handle.emit(Started(len(prompt), seq.cached))

    def _swap_parked(self, seq: Sequence, prompt: list[int], held: dict[Sequence, int]) -> None:
        """Before `seq` serves `prompt`: where it holds much beyond their shared prefix (a quarter of its tokens,
        `PARK_MIN_GAIN` at least), its state is parked first, since the conversation it served may come back; a
        short tail after a long shared prefix (a repeated system prompt's last question) is not worth the copy.
        Then a parked state holding more of the prompt than the cache does comes back."""
        beyond = len(seq.tokens) - held[seq]
        if beyond >= PARK_MIN_GAIN and 4 * beyond >= len(seq.tokens):
            self._parked.park(self._ctx, seq.seq_id, seq.tokens)
        tokens = self._parked.restore(self._ctx, seq.seq_id, prompt, max(held.values(), default=0))
        if tokens is not None:
            seq.tokens = tokens
            held[seq] = common_prefix(tokens, prompt)

    def _restore(self, seq: Sequence, prompt: list[int], have: int) -> int:
        """Load a saved prefix of `prompt` into `seq` when it covers more than the KV cache holds; returns what
        `seq` now holds of the prompt."""
        n = self._store.restore(self._ctx, seq.seq_id, prompt, have, RESTORE_MIN_GAIN)
        if n:
            seq.tokens = prompt[:n]
        elif llama_cpp.llama_memory_seq_pos_max(self._mem, seq.seq_id) < 0:  # llama.cpp refused a state
            seq.tokens = []
        return common_prefix(seq.tokens, prompt)

    def _plan_save(self, seq: Sequence) -> None:
        """Decide whether the prefill will save the job's `cache_prefix` to disk (it stops a chunk exactly there
        and copies the state after that step)."""
        job = seq.handle.job
        n = min(job.cache_prefix, len(job.prompt))
        if self._store is None or n <= 0:
            return
        prefix = job.prompt[:n]
        if not self._store.wanted(prefix):
            seq.persisted = self._store.has(prefix)
        elif seq.cached < n:
            seq.save_at = n
            self._store.plan(n)

    def _step(self) -> None:
        """Build one batch (a token per generating sequence, then prompt chunks), decode it, sample, emit."""
        for seq in self._slots:
            if seq.handle is not None and seq.leader is not None and seq.leader_ready():
                self._start_prefill(seq)
        n = 0
        outputs: list[tuple[Sequence, int]] = []
        prefilled: list[Sequence] = []
        active = [s for s in self._slots if s.handle is not None]
        followed = {s.leader for s in active if s.leader is not None}
        for slot in active:
            slot.mark = (len(slot.tokens), slot.pending)
            if slot.next_token is not None:
                self._put(n, slot.next_token, len(slot.tokens), slot.seq_id, True)
                slot.tokens.append(slot.next_token)
                outputs.append((slot, n))
                n += 1
        # While others generate, a step takes at most `prefill_chunk` prompt tokens: that bounds how much a
        # newcomer's prefill slows every running stream (see bench/README.md for the trade).
        budget = self.n_batch - n if n == 0 else min(self.n_batch - n, self.settings.prefill_chunk)
        prompt_tokens = 0
        for slot in sorted((s for s in active if s.pending), key=lambda s: s.started_at):
            if prompt_tokens >= self._prompts_share_below:  # the oldest prompt first, one at a time
                break
            # A followed leader holds back its last prompt token, so that it and its followers compute their
            # first tokens in the same step, from the same shared cells.
            take = min(budget, len(slot.pending) - 1) if slot in followed else budget
            if slot.save_at > len(slot.tokens):  # end a chunk where the prefix to save ends
                take = min(take, slot.save_at - len(slot.tokens))
            if take <= 0:
                continue
            chunk, slot.pending = slot.pending[:take], slot.pending[take:]
            budget -= len(chunk)
            prompt_tokens += len(chunk)
            prefilled.append(slot)
            for i, token in enumerate(chunk):
                last = not slot.pending and i == len(chunk) - 1
                self._put(n, token, len(slot.tokens), slot.seq_id, last)
                slot.tokens.append(token)
                if last:
                    outputs.append((slot, n))
                n += 1
        self._batch.n_tokens = n
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc != 0:
            self._decode_failed(rc, active)
            return
        for slot in prefilled:
            if slot.save_at and slot.save_at == len(slot.tokens):
                slot.save_at = 0
                slot.persisted = self._store.save(self._ctx, slot.seq_id, slot.tokens)
            if slot.pending:
                slot.handle.emit(Prefilled(len(slot.tokens)))
        for slot, row in outputs:
            self._sample(slot, row)

    def _put(self, i: int, token: int, pos: int, seq_id: int, logits: bool) -> None:
        batch = self._batch
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq_id
        batch.logits[i] = logits

    def _decode_failed(self, rc: int, active: list[Sequence]) -> None:
        """No KV room (1; llama.cpp has restored the cache): drop idle sequences' caches and retry next step,
        or, with none left to drop, end the longest sequence with `length`. Other codes fail the batch."""
        for slot in active:
            n_before, pending = slot.mark
            slot.tokens, slot.pending = slot.tokens[:n_before], pending
        if rc == 1:
            idle = [s for s in self._slots if s.handle is None and s.tokens]
            for slot in idle:
                llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
                slot.tokens = []
            if not idle:
                self._finish(max(active, key=lambda s: len(s.tokens)), "length")
            return
        err = GatewayError(ErrorKind.INTERNAL, f"llama_decode failed with status {rc}.")
        for slot in active:
            llama_cpp.llama_memory_seq_rm(self._mem, slot.seq_id, -1, -1)
            slot.tokens = []
            self._finish(slot, "error", err)

    def _sample(self, slot: Sequence, row: int) -> None:
        if slot.handle.job.max_tokens == 0:  # a prefill-only job (warming the prompt cache) ends here
            self._finish(slot, "length")
            return
        sampler = slot.current_sampler()
        forced = slot.budget.next_forced() if slot.budget is not None else None
        try:
            token = forced if forced is not None and sampler.take(forced) else sampler.sample(self._ctx, row)
        except GatewayError as err:  # a grammar that allows nothing the sampling settings allow
            self._finish(slot, "error", err)
            return
        now = time.monotonic()
        if slot.first_token_at is None:
            slot.first_token_at = now
        job = slot.handle.job
        sampling = job.sampling
        if token in sampling.stop_token_ids or token in self.model.eog and not sampling.ignore_eos:
            self._finish(slot, "stop")
            return
        slot.generated += 1
        logprobs = None
        if job.logprobs is not None:
            logits = llama_cpp.llama_get_logits_ith(self._ctx, row)
            entry = token_logprobs(logits, self.model.n_vocab, token, job.logprobs, self.model.pieces)
            entry.special = token in self.model.control
            logprobs = [entry]
        piece = self.model.pieces[token]
        if slot.budget is not None:  # markers may be control tokens, which `pieces` shows as nothing
            slot.budget.observe(self.model.control.get(token, piece).decode("utf-8", errors="ignore"))
        if not sampling.skip_special_tokens:
            piece = self.model.control.get(token, piece)
        text = slot.text.push(piece)
        slot.handle.emit(Piece(text, logprobs))  # one per token, even with text held back: progress counts them
        if slot.text.matched_stop is not None:
            self._finish(slot, "stop")
        elif slot.generated >= job.max_tokens or len(slot.tokens) >= self.n_ctx:
            self._finish(slot, "length")
        else:
            slot.next_token = token

    def _finish(self, slot: Sequence, reason: str, error: GatewayError | None = None) -> None:
        handle = slot.handle
        tail = slot.text.flush()
        if tail and reason in ("stop", "length"):
            handle.emit(Piece(tail, token=False))
        now = time.monotonic()
        first = slot.first_token_at or now
        self._end(handle, Finished(
            reason=reason, prompt_tokens=len(handle.job.prompt), cached_tokens=slot.cached,
            completion_tokens=slot.generated, stop_sequence=slot.text.matched_stop,
            queued_seconds=slot.started_at - handle.submitted_at, prompt_seconds=first - slot.started_at,
            generation_seconds=now - first, error=error, persisted=slot.persisted))
        slot.release(now)

    def _end(self, handle: JobHandle, finished: Finished) -> None:
        self._ended += 1
        handle.emit(finished)

    def _fail_everything(self, err: GatewayError) -> None:
        for slot in self._slots:
            if slot.handle is not None:
                self._finish(slot, "error", err)
        while self._waiting:
            handle = self._waiting.popleft()
            self._end(handle, Finished("error", len(handle.job.prompt), 0, 0, error=err))
        self._embedder.fail_all(err)
        self._drain_pending_messages(err)

    def _drain_pending_messages(self, err: GatewayError) -> None:
        try:
            while True:
                kind, payload = self._inbox.get_nowait()
                if kind == "job":
                    self._end(payload, Finished("error", len(payload.job.prompt), 0, 0, error=err))
                elif kind == "embed":
                    payload[1].put(err)
        except queue.Empty:
            return

    def _free(self) -> None:
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        self._embedder.free()
        self._grammars.free()
        if self._store is not None:
            self._store.close()
        self.model.free()
