"""SharedReader: the threads that wait for a runner's events read its pipe in turns; a background thread reads
only while nobody is attached. A fake pipe (a queue of messages, each addressed to one sink) records which
thread read each message."""

from __future__ import annotations

import collections
import queue
import threading

import pytest

from gateway.backends.shared_reader import SharedReader
from tests.waiting import CEILING

END = "end"


class FakePipe:
    def __init__(self) -> None:
        self.messages: collections.deque = collections.deque()
        self.arrived = threading.Condition()
        self.sinks: dict[str, queue.SimpleQueue] = {}
        self.readers: list[str] = []  # the name of the thread that read each message
        self.reader = SharedReader(self.poll, self.receive)

    def sink(self, name: str) -> queue.SimpleQueue:
        self.sinks[name] = queue.SimpleQueue()
        return self.sinks[name]

    def send(self, to: str, item: object) -> None:
        with self.arrived:
            self.messages.append((to, item))
            self.arrived.notify_all()

    def poll(self, timeout: float) -> bool:
        with self.arrived:
            return self.arrived.wait_for(lambda: self.messages, timeout)

    def receive(self) -> bool:
        to, item = self.messages.popleft()
        self.readers.append(threading.current_thread().name)
        if to == "closed":
            if self.reader.close():
                for sink in self.sinks.values():
                    sink.put(END)
            return False
        self.sinks[to].put(item)
        return True


def start(target, name: str) -> threading.Thread:
    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    return thread


def consume(pipe: FakePipe, name: str, count: int, got: list) -> None:
    sink = pipe.sinks[name]
    while len(got) < count:
        item = pipe.reader.get(sink, CEILING)
        got.append(item)
        if item == END:
            return


def test_a_lone_consumer_reads_the_pipe_itself():
    pipe = FakePipe()
    pipe.sink("a")
    pipe.reader.attach()  # before the background thread starts, which would otherwise read the first message
    start(pipe.reader.run_background, "background")
    got: list = []
    thread = start(lambda: consume(pipe, "a", 20, got), "consumer-a")
    for i in range(20):
        pipe.send("a", i)
    thread.join(CEILING)
    assert got == list(range(20))
    assert set(pipe.readers) == {"consumer-a"}  # no second thread woke for any of them


def test_several_consumers_each_get_their_own_events_in_order():
    pipe = FakePipe()
    names = ["a", "b", "c", "d"]
    results: dict[str, list] = {name: [] for name in names}
    for name in names:
        pipe.sink(name)
        pipe.reader.attach()
    start(pipe.reader.run_background, "background")
    threads = []
    for name in names:
        threads.append(start(lambda name=name: consume(pipe, name, 200, results[name]), f"consumer-{name}"))
    for i in range(200):
        for name in names:
            pipe.send(name, i)
    for thread in threads:
        thread.join(CEILING)
    assert all(results[name] == list(range(200)) for name in names)
    assert "background" not in pipe.readers  # attached consumers were always there to read


def test_a_blocked_consumer_takes_the_turn_when_the_leader_leaves():
    """The leader gets its item and leaves for good; the other consumer, blocked as a follower with nothing on
    its queue, must be handed the turn and read its own message (or it would wait out its whole timeout)."""
    pipe = FakePipe()
    a, b = pipe.sink("a"), pipe.sink("b")
    pipe.reader.attach()
    pipe.reader.attach()
    got_a: list = []
    leader = start(lambda: got_a.append(pipe.reader.get(a, CEILING)), "consumer-a")
    got_b: list = []
    follower = start(lambda: got_b.append(pipe.reader.get(b, CEILING)), "consumer-b")
    pipe.send("a", 1)
    leader.join(CEILING)
    pipe.send("b", 2)
    follower.join(CEILING)
    assert got_a == [1] and got_b == [2]
    assert pipe.readers[-1] in ("consumer-a", "consumer-b") and "background" not in pipe.readers


def test_the_background_thread_reads_while_nobody_is_attached():
    pipe = FakePipe()
    start(pipe.reader.run_background, "background")
    sink = pipe.sink("idle")
    pipe.send("idle", "cache stats")
    assert sink.get(timeout=CEILING) == "cache stats"
    assert pipe.readers == ["background"]


def test_a_timeout_raises_empty_and_leaves_the_turn_free():
    pipe = FakePipe()
    sink = pipe.sink("a")
    pipe.reader.attach()
    with pytest.raises(queue.Empty):
        pipe.reader.get(sink, 0.0)
    pipe.send("a", "late")
    assert pipe.reader.get(sink, CEILING) == "late"


def test_when_the_pipe_closes_every_waiter_wakes_and_the_background_thread_ends():
    pipe = FakePipe()
    background = start(pipe.reader.run_background, "background")
    results: dict[str, list] = {"a": [], "b": []}
    threads = []
    for name in results:
        pipe.sink(name)
        pipe.reader.attach()
        threads.append(start(lambda name=name: consume(pipe, name, 10, results[name]), f"consumer-{name}"))
    pipe.send("closed", None)
    for thread in threads:
        thread.join(CEILING)
    assert results == {"a": [END], "b": [END]}
    pipe.reader.detach()
    pipe.reader.detach()
    background.join(CEILING)
    assert not background.is_alive()
    assert not pipe.reader.close()  # closed once, by the reader that saw it
