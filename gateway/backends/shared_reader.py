"""Who reads a runner's pipe: the request thread that waits for events, not a reader thread of its own.

With a reader thread, every token crossed two threads of the API process: the reader woke for the runner's
message and put each event on its request's queue, then the request thread woke to render it. Each wake on 2
busy cores takes a core from one of llama.cpp's threads, and the other then spins at its barrier, so at one
stream the extra wake cost the decode loop a few percent (bench/README.md, "Per-token work").

Here the waiting threads take turns. The first one to wait takes the turn (it "leads"): it reads messages and
routes their events to everyone's queue until its own queue has something, then hands the turn to a waiter
that is still blocked (one whose queue is empty, so it would not wake otherwise). At one stream the request
thread reads the pipe itself and a token costs one wake. At eight, one leader reads each step's message and
wakes the others, as the reader thread did. A background thread reads only while no generation is attached
(an idle runner still reports its death and its cache stats), so it never takes a turn from a request thread.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

IDLE_POLL_SECONDS = 1.0  # how long the background thread waits for a message before checking again

_TURN = object()  # put on a blocked waiter's queue: the turn to read is now yours


class SharedReader:
    """`poll(timeout)` says whether a message is waiting; `receive()` reads one and routes it to the queues,
    returning False once the pipe is closed (after which nobody leads again)."""

    def __init__(self, poll: Callable[[float], bool], receive: Callable[[], bool]):
        self._poll = poll
        self._receive = receive
        self._cond = threading.Condition()  # guards the fields below
        self._leading = False
        self._waiting: list[queue.SimpleQueue] = []  # queues of threads blocked until their queue gets an item
        self._attached = 0  # consumers that will come back to read (while 0, the background thread reads)
        self._closed = False

    def attach(self) -> None:
        with self._cond:
            self._attached += 1

    def detach(self) -> None:
        with self._cond:
            self._attached -= 1
            if self._attached == 0:
                self._cond.notify_all()

    def close(self) -> bool:
        """The pipe is closed: nobody leads any more. True for the one caller that closed it."""
        with self._cond:
            if self._closed:
                return False
            self._closed = True
            self._cond.notify_all()
            return True

    def get(self, sink: queue.SimpleQueue, timeout: float) -> Any:
        """The next item on `sink`, reading the pipe meanwhile if nobody else does; `queue.Empty` after
        `timeout` seconds without one."""
        deadline = time.monotonic() + timeout
        while True:
            if not sink.empty():  # (no get_nowait: its queue.Empty, raised on every token, costs more)
                item = sink.get_nowait()
                if item is not _TURN:
                    return item
            with self._cond:
                lead = not self._leading and not self._closed
                if lead:
                    self._leading = True
                else:
                    self._waiting.append(sink)
            if lead:
                try:
                    self._read_until(sink, deadline)
                finally:
                    self._pass_turn()
                if sink.empty() and time.monotonic() >= deadline:
                    raise queue.Empty
                continue
            try:
                item = sink.get(timeout=max(0.0, deadline - time.monotonic()))
            finally:
                self._stop_waiting(sink)
            if item is not _TURN:
                return item

    def run_background(self) -> None:
        """The background thread's loop: read while no consumer is attached, until the pipe closes."""
        while True:
            with self._cond:
                while not self._closed and (self._leading or self._attached):
                    self._cond.wait()
                if self._closed:
                    return
                self._leading = True
            try:
                if self._poll(IDLE_POLL_SECONDS):
                    self._receive()
            finally:
                self._pass_turn()

    def _read_until(self, sink: queue.SimpleQueue, deadline: float) -> None:
        while sink.empty():
            if not self._poll(max(0.0, deadline - time.monotonic())) or not self._receive():
                return

    def _pass_turn(self) -> None:
        with self._cond:
            self._leading = False
            for waiter in self._waiting:
                if waiter.empty():  # blocked with nothing to wake it: it takes the turn
                    self._waiting.remove(waiter)
                    waiter.put(_TURN)
                    return
            if self._attached == 0:
                self._cond.notify_all()

    def _stop_waiting(self, sink: queue.SimpleQueue) -> None:
        with self._cond:
            if sink in self._waiting:
                self._waiting.remove(sink)
