"""Embeddings for one model, taken one input at a time between decode steps.

The executor's loop thread owns every context of its model, so embeddings run there too; but a request with
hundreds of inputs must not stall every stream of that model until it is done. The embedder queues requests
and embeds one input at a time (an input cannot be split: pooling needs it whole in one batch). While streams
run, it waits after each input for as long as that input took, so the streams keep at least half of the time
and a stream waits at most one input's decode between two of its tokens.
"""

from __future__ import annotations

import ctypes
import math
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import llama_cpp

from gateway.engine.llama import LlamaModel, new_context
from gateway.types import ErrorKind, GatewayError


@dataclass
class _Work:
    inputs: list[list[int]]
    reply: Any  # anything with put(): the vectors, or the exception
    vectors: list[list[float]] = field(default_factory=list)


class Embedder:
    def __init__(self, model: LlamaModel, window: int, n_threads: int):
        self.model = model
        self.window = window  # tokens one input may have
        self.n_threads = n_threads
        self._queue: deque[_Work] = deque()
        self._ctx = None
        self._batch = None
        self._next_at = 0.0  # monotonic: while streams run, no input starts before this

    @property
    def pending(self) -> bool:
        return bool(self._queue)

    def ready(self, streams_running: bool) -> bool:
        return bool(self._queue) and (not streams_running or time.monotonic() >= self._next_at)

    def add(self, inputs: list[list[int]], reply: Any) -> None:
        self._queue.append(_Work(inputs, reply))

    def step(self) -> None:
        """Embed the next input of the oldest request; answer the request when its last input is done."""
        work = self._queue[0]
        started = time.monotonic()
        try:
            work.vectors.append(self._embed(work.inputs[len(work.vectors)]))
        except Exception as exc:
            self._queue.popleft()
            work.reply.put(exc)
            return
        finally:
            now = time.monotonic()
            self._next_at = now + (now - started)
        if len(work.vectors) == len(work.inputs):
            self._queue.popleft()
            work.reply.put(work.vectors)

    def fail_all(self, err: GatewayError) -> None:
        while self._queue:
            self._queue.popleft().reply.put(err)

    def free(self) -> None:
        if self._ctx is not None:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            self._ctx = None

    def _context(self):
        if self._ctx is None:
            pooling = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            declared = self.model.meta(f"{self.model.meta('general.architecture')}.pooling_type")
            if declared and declared.isdigit() and int(declared) > 0:
                pooling = int(declared)
            self._ctx = new_context(self.model, self.window, self.window, 1, self.n_threads, embeddings=True,
                                    pooling=pooling)
            self._batch = llama_cpp.llama_batch_init(self.window, 0, 1)
        return self._ctx, self._batch

    def _embed(self, tokens: list[int]) -> list[float]:
        if not tokens:
            raise GatewayError(ErrorKind.INVALID_REQUEST, "An input is empty after tokenization.", "input")
        if len(tokens) > self.window:
            raise GatewayError(ErrorKind.CONTEXT_OVERFLOW,
                               f"An input has {len(tokens)} tokens; the embedding context holds {self.window}.",
                               "input", details={"limit": self.window, "prompt_tokens": len(tokens)})
        ctx, batch = self._context()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        for i, token in enumerate(tokens):
            batch.token[i] = token
            batch.pos[i] = i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = True
        batch.n_tokens = len(tokens)
        rc = llama_cpp.llama_decode(ctx, batch)
        if rc != 0:
            raise GatewayError(ErrorKind.INTERNAL, f"llama_decode failed with status {rc} while embedding.")
        ptr = llama_cpp.llama_get_embeddings_seq(ctx, 0)
        vector = ctypes.cast(ptr, ctypes.POINTER(ctypes.c_float))[: self.model.n_embd]
        norm = math.sqrt(sum(v * v for v in vector)) or 1.0
        return [v / norm for v in vector]
