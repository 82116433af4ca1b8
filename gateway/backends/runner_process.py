"""The API server's side of one runner process: start it, send it jobs, route its events, notice its death.

The runner's per-step messages are read by the request threads waiting for them (`SharedReader`: one thread
wake per token, not two), and each event goes on the queue of the request it belongs to. When the pipe closes
(the runner exited, crashed or was killed) every job still in flight ends with a `Finished` carrying a
`GatewayError` that names the model and the signal, and every embedding waiting gets that error: nobody waits
forever.

The parent closes its copy of the runner's pipe end right after start; otherwise a dead runner would never
look dead (`../shared/ENGINE-NOTES.md`, "The trap").
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import queue
import select
import signal
import threading
import time
from multiprocessing.connection import wait

from gateway.backends.shared_reader import IDLE_POLL_SECONDS, SharedReader
from gateway.engine import huge_pages, runner
from gateway.engine.executor import ExecutorSettings
from gateway.engine.jobs import Finished, GenerationJob, JobHandle, Piece, Started, check_queue
from gateway.engine.llama import LoadParams
from gateway.engine.wire import MessageReader, expand_event
from gateway.time_slice import DefaultSlice
from gateway.types import ErrorKind, GatewayError

log = logging.getLogger("gateway.backends")

STOP_SECONDS = 10.0  # how long a stopping runner may take before it is killed
MAX_EMBEDDINGS_WAITING = 8192  # embedding inputs one runner may have queued before new ones get 429


def exit_reason(exitcode: int | None) -> str:
    """`signal SIGSEGV`, `exit status 1`: how a runner ended, in the words of a log line."""
    if exitcode is None:
        return "unknown exit"
    if exitcode < 0:
        try:
            return f"signal {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"signal {-exitcode}"
    return f"exit status {exitcode}"


class RunnerProcess:
    """A runner process for one model. `submit`, `embed` and the queries may be called from any thread."""

    def __init__(self, name: str, path: str, settings: ExecutorSettings, log_level: str, load_timeout: float,
                 on_exit=None):
        self.name = name
        self.max_queue = settings.max_queue
        self._on_exit = on_exit or (lambda _runner: None)
        self._jobs: dict[int, JobHandle] = {}  # in flight, in submission order
        self._started: set[int] = set()
        self._embeds: dict[int, queue.SimpleQueue] = {}
        self._embedding_inputs = 0  # inputs sent for embedding and not yet answered
        self._ids = itertools.count(1)
        self._lock = threading.Lock()  # guards the maps above and serialises sends
        self._stopping = False
        self.decoded = False  # a token came back: the runner survived its first decode
        self.kv_used = 0
        self.engine_stats: dict[str, dict | None] = {}  # `prompt_cache` and `parked`, as the runner last sent them
        self.exitcode: int | None = None
        context = multiprocessing.get_context("spawn")  # never fork a process that runs llama.cpp or gunicorn
        self._conn, child_end = context.Pipe()
        self.process = context.Process(target=runner.run, args=(child_end, name, path, settings, log_level),
                                       name=f"runner-{name}", daemon=True)
        # the runner's decode threads keep the kernel's default slice; its weights may go on huge pages
        with DefaultSlice(), huge_pages.SpawnEnvironment((settings.load or LoadParams()).huge_pages):
            self.process.start()
        child_end.close()
        self._messages = MessageReader(self._conn.fileno())
        self.facts, early = self._wait_ready(load_timeout)
        self.engine_stats = dict(self.facts.get("stats") or {})
        self.pid = self.process.pid
        self._gone = threading.Event()  # set once the process is reaped and everyone in flight was told
        readable = select.poll()  # one poll object for the runner's life: `Connection.poll` builds one per call
        readable.register(self._conn.fileno(), select.POLLIN)
        self._reading = SharedReader(lambda timeout: bool(readable.poll(timeout * 1000)), self._receive)
        for message in early:  # read together with "ready"
            self._deliver(message)
        threading.Thread(target=self._reading.run_background, name=f"runner-reader-{name}", daemon=True).start()

    def _wait_ready(self, timeout: float) -> tuple[dict, list]:
        """The runner's facts, and any messages that came in the same read after them."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self._kill()
                raise RuntimeError(f"the runner for {self.name} did not load within {timeout:.0f}s")
            ready = wait([self._conn, self.process.sentinel], remaining)
            closed = False
            if self._conn in ready:
                try:
                    messages = self._messages.read()
                except (EOFError, OSError):  # it died: its exit status says how
                    messages, closed = [], True
                if messages and messages[0][0] == "ready":
                    return messages[0][1], messages[1:]
                if messages:
                    self._kill()
                    raise RuntimeError(messages[0][1])
            if closed or self.process.sentinel in ready:
                self.process.join(STOP_SECONDS)
                reason = exit_reason(self.process.exitcode)
                raise RuntimeError(f"the runner for {self.name} died while loading ({reason})")

    # -- called from request threads -----------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self.exitcode is None and not self._stopping

    def attach(self) -> None:
        """A generation's request thread will read its events with `next_event` until it calls `detach`."""
        self._reading.attach()

    def detach(self) -> None:
        self._reading.detach()

    def next_event(self, sink: queue.SimpleQueue, timeout: float):
        """The next event on `sink` (raises `queue.Empty` after `timeout`), reading the pipe if nobody else is."""
        return self._reading.get(sink, timeout)

    def submit(self, job: GenerationJob, sink: queue.SimpleQueue, tag: int) -> JobHandle:
        with self._lock:
            self._check_alive()
            check_queue(self.name, len(self._jobs) - self.facts["parallel"], self.max_queue)
            job_id = next(self._ids)
            handle = JobHandle(job, lambda _handle: self._send(("cancel", job_id)), sink, tag)
            self._jobs[job_id] = handle
            self._send_locked(("submit", job_id, job))
        return handle

    def embed(self, inputs: list[list[int]]) -> list[list[float]]:
        """Blocks until the runner has embedded every input; the runner takes one input per decode round, and
        at most MAX_EMBEDDINGS_WAITING inputs may wait, so embeddings can neither stall nor swamp a model."""
        reply: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            self._check_alive()
            if self._embedding_inputs + len(inputs) > MAX_EMBEDDINGS_WAITING:
                raise GatewayError(ErrorKind.OVERLOADED, f"The server is busy: {self._embedding_inputs} embedding "
                                                         f"inputs are already waiting for `{self.name}`.",
                                   details={"model": self.name, "waiting": self._embedding_inputs})
            reply_id = next(self._ids)
            self._embeds[reply_id] = reply
            try:
                self._send_locked(("embed", reply_id, inputs))
            except GatewayError:
                del self._embeds[reply_id]
                raise
            self._embedding_inputs += len(inputs)
        self.attach()
        try:
            result = self._wait_reply(reply)
        finally:
            self.detach()
            with self._lock:
                self._embedding_inputs -= len(inputs)
        if isinstance(result, BaseException):
            raise result
        return result

    def _wait_reply(self, reply: queue.SimpleQueue):
        while True:
            try:
                return self.next_event(reply, IDLE_POLL_SECONDS)
            except queue.Empty:
                continue

    def queue_position(self, handle: JobHandle) -> int:
        with self._lock:
            waiting = [h for job_id, h in self._jobs.items() if job_id not in self._started]
            free = max(0, self.facts["parallel"] - len(self._started))
        try:
            return max(0, waiting.index(handle) + 1 - free)
        except ValueError:
            return 0

    def stats(self) -> dict:
        with self._lock:
            busy, in_flight = len(self._started), len(self._jobs)
        return {"busy": busy, "waiting": in_flight - busy, "kv_used": self.kv_used}

    def close(self) -> None:
        """Ask the runner to stop, then make sure it is gone: its memory returns to the system."""
        with self._lock:
            self._stopping = True
            with contextlib.suppress(OSError):
                self._conn.send(("stop",))
        # whoever reads the pipe next sees it close and reaps the process (only one thread may join it)
        if not self._gone.wait(STOP_SECONDS):
            log.warning("the runner for %s did not stop in %.0fs; killing it", self.name, STOP_SECONDS)
            self.process.kill()
            self._gone.wait(STOP_SECONDS)

    def _check_alive(self) -> None:
        if not self.alive:
            raise self._death_error()

    def _send(self, message: tuple) -> None:
        with self._lock:
            self._send_locked(message)

    def _send_locked(self, message: tuple) -> None:
        try:
            self._conn.send(message)
        except OSError:  # whoever reads the pipe next reports the death to everyone in flight
            if message[0] != "cancel":
                raise self._death_error() from None

    def _death_error(self) -> GatewayError:
        if self._stopping and self.exitcode is None:
            return GatewayError(ErrorKind.UNAVAILABLE, f"The model `{self.name}` is being unloaded.",
                                details={"model": self.name})
        reason = exit_reason(self.exitcode)
        return GatewayError(ErrorKind.UNAVAILABLE, f"The runner process of model `{self.name}` terminated "
                                                   f"({reason}); the next request starts a new one.",
                            code="runner_terminated", details={"model": self.name, "reason": reason})

    def _kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(STOP_SECONDS)

    # -- reading the pipe (whichever thread's turn it is) ------------------------------------------------------

    def _receive(self) -> bool:
        """Read what the pipe holds and deliver each message in it; False once the pipe is closed."""
        try:
            messages = self._messages.read()
        except (EOFError, OSError):
            self._pipe_closed()
            return False
        for message in messages:
            self._deliver(message)
        return True

    def _deliver(self, message: tuple) -> None:
        if message[0] == "events":
            self._route(message[1])
            self.kv_used = message[2]
        elif message[0] == "stats":
            self.engine_stats = {**self.engine_stats, **message[1]}  # a new dict: readers see one or the other
        elif message[0] == "embedded":
            with self._lock:
                reply = self._embeds.pop(message[1], None)
            if reply is not None:
                self.decoded = True
                reply.put(message[2])

    def _pipe_closed(self) -> None:
        if not self._reading.close():
            return  # another thread saw it first and is reaping the process
        self.process.join(STOP_SECONDS)
        self.exitcode = self.process.exitcode if self.process.exitcode is not None else -signal.SIGKILL
        self._fail_in_flight()
        self._gone.set()
        if not self._stopping:
            self._on_exit(self)

    def _route(self, items: list) -> None:
        for job_id, wired in items:
            event = expand_event(wired)
            with self._lock:
                handle = self._jobs.get(job_id)
                if isinstance(event, Started):
                    self._started.add(job_id)
                elif isinstance(event, Finished):
                    self._jobs.pop(job_id, None)
                    self._started.discard(job_id)
            if isinstance(event, Piece):
                self.decoded = True
            if handle is not None:
                handle.emit(event)

    def _fail_in_flight(self) -> None:
        err = self._death_error()
        if not self._stopping:
            log.log(logging.INFO if self.exitcode == 0 else logging.ERROR, "%s", err.message)
        with self._lock:
            jobs, self._jobs = self._jobs, {}
            embeds, self._embeds = self._embeds, {}
            self._started.clear()
        for handle in jobs.values():
            handle.emit(Finished("error", len(handle.job.prompt), 0, 0, error=err))
        for reply in embeds.values():
            reply.put(err)
