"""The runner: one loaded model's executor in a process of its own, driven over a pipe.

A fault in llama.cpp (llama.cpp #20824's SIGSEGV, an abort in a kernel) ends this process, not the API
server; the parent sees the pipe close and the exit signal, fails that model's requests with a clear error and
starts a fresh runner for the next one. The runner knows no HTTP and no API family: it takes token-level jobs
and sends back the engine's events, gathered per decode step into one message so that IPC costs one
send per step, not one per token.

Messages, parent → runner (a `multiprocessing` Connection): ("submit", job_id, GenerationJob), ("cancel",
job_id), ("embed", reply_id, token lists), ("stop",). Runner → parent, on the same pipe in the framing of
`gateway/engine/wire.py`: ("ready", facts), ("load_failed", text), ("events", [(job_id, event)...], kv_used),
("embedded", reply_id, vectors or GatewayError), ("stats", {"prompt_cache" | "parked": numbers or None}) after a
step that changed them.
"""

from __future__ import annotations

import logging
import os
import signal
from multiprocessing.connection import Connection
from typing import Callable

from gateway.engine.executor import Executor, ExecutorSettings
from gateway.engine.huge_pages import huge_page_bytes
from gateway.engine.jobs import EngineEvent, Finished, JobHandle
from gateway.engine.llama import LoadParams
from gateway.engine.wire import compact_event, write_message
from gateway.types import ErrorKind, GatewayError

log = logging.getLogger("gateway.runner")

EXECUTOR_CHECK_SECONDS = 1.0  # how often an idle runner checks that its executor is still running
EX_SOFTWARE = 70  # the exit status of a runner whose executor died (sysexits.h)


class Outbox:
    """Events of the current step, sent as one message when the executor's step ends. `put` is the sink every
    job handle writes to. Only the executor's loop thread emits events and sends, so nothing here needs a lock;
    `jobs` (job id → handle, for cancels) is added to by the main thread and emptied here, one dict operation
    at a time."""

    def __init__(self, conn: Connection):
        self._fd = conn.fileno()
        self._items: list[tuple[int, EngineEvent]] = []
        self.kv_used = lambda: 0
        self.stats: Callable[[], dict] = dict  # the executor's numbers that changed since last sent
        self.jobs: dict[int, JobHandle] = {}

    def put(self, item: tuple[int, EngineEvent]) -> None:
        self._items.append(item)

    def flush(self) -> None:
        items, self._items = self._items, []
        if items:
            for job_id, event in items:
                if isinstance(event, Finished):
                    self.jobs.pop(job_id, None)
            self.send(("events", [(job_id, compact_event(event)) for job_id, event in items], self.kv_used()))
        stats = self.stats()
        if stats:
            self.send(("stats", stats))

    def send(self, message: tuple) -> None:
        write_message(self._fd, message)


class EmbedReply:
    """What the executor's loop thread puts an embedding result into: it goes straight to the parent."""

    def __init__(self, outbox: Outbox, reply_id: int):
        self._outbox = outbox
        self._reply_id = reply_id

    def put(self, result) -> None:
        if isinstance(result, BaseException) and not isinstance(result, GatewayError):
            result = GatewayError(ErrorKind.INTERNAL, f"Embedding failed: {result}")
        self._outbox.send(("embedded", self._reply_id, result))


def run(conn: Connection, name: str, path: str, settings: ExecutorSettings, log_level: str) -> None:
    """The runner process's entry point (multiprocessing `spawn`). When the API server dies, even by SIGKILL,
    the pipe closes and `serve` returns, so no runner is left holding a model's memory."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the API server decides when runners stop
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    logging.basicConfig(level=log_level.upper(), format=f"%(asctime)s %(levelname)s runner[{name}]: %(message)s")
    outbox = Outbox(conn)
    try:
        executor = Executor(name, path, settings, after_step=outbox.flush)
    except Exception as exc:  # a file llama.cpp refuses, a context it cannot allocate
        outbox.send(("load_failed", str(exc)))
        return
    outbox.kv_used = executor.kv_used
    outbox.stats = executor.stats
    outbox.send(("ready", {"pid": os.getpid(), "n_ctx": executor.n_ctx, "parallel": executor.parallel,
                           "n_threads": executor.n_threads, "embedding_window": executor.embedding_window,
                           "repack": (settings.load or LoadParams()).repack,
                           "huge_page_bytes": huge_page_bytes(),
                           "stats": executor.stats(changed_only=False)}))
    status = 0
    try:
        status = serve(conn, executor, outbox)
    finally:
        executor.close()
        os._exit(status)  # skip interpreter teardown: the parent is waiting for this process to end


def serve(conn: Connection, executor: Executor, outbox: Outbox) -> int:
    """Hand the parent's messages to the executor until told to stop (0) or the parent is gone (0). If the
    executor's loop has died (a bug, not a crash), end with EX_SOFTWARE so that the parent starts a new runner
    instead of queueing jobs that nothing would ever run."""
    while True:
        try:
            if not conn.poll(EXECUTOR_CHECK_SECONDS):
                if not executor.running:
                    log.error("the executor of %s stopped; ending this runner", executor.name)
                    return EX_SOFTWARE
                continue
            message = conn.recv()
        except (EOFError, OSError):  # the API server is gone
            return 0
        kind = message[0]
        if kind == "submit":
            _, job_id, job = message
            handle = JobHandle(job, executor.request_cancel, outbox, job_id)
            outbox.jobs[job_id] = handle
            executor.enqueue(handle)
        elif kind == "cancel":
            handle = outbox.jobs.get(message[1])
            if handle is not None:
                handle.cancel()
        elif kind == "embed":
            executor.embed_into(message[2], EmbedReply(outbox, message[1]))
        elif kind == "stop":
            return 0
