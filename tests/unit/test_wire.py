"""The runner's message framing: whatever one read brings, every message comes out whole and in order."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from gateway.engine.jobs import Finished, Piece, Started
from gateway.engine.wire import HEADER, MessageReader, compact_event, expand_event, write_message
from gateway.types import TokenLogprob


@pytest.fixture
def pipe():
    reader, writer = socket.socketpair()
    yield reader, writer
    reader.close()
    writer.close()


def read_all(reader: MessageReader, count: int) -> list:
    messages = []
    while len(messages) < count:
        messages += reader.read()
    return messages


def test_messages_written_together_come_out_of_one_read_in_order(pipe):
    a, b = pipe
    for i in range(3):
        write_message(b.fileno(), ("events", [(i, Piece(f"t{i}"))], i))
    messages = MessageReader(a.fileno()).read()
    assert [m[2] for m in messages] == [0, 1, 2]
    assert messages[1][1][0][1] == Piece("t1")


def test_a_message_split_across_reads_waits_for_its_last_byte(pipe):
    a, b = pipe
    reader = MessageReader(a.fileno())
    write_message(b.fileno(), ("cache", {"x": 1}))
    whole = a.recv(4096)  # the framed bytes, to send again a few at a time
    for at in range(0, len(whole) - 1, 5):
        b.sendall(whole[at:at + 5] if at + 5 < len(whole) else whole[at:-1])
        assert reader.read() == []
    b.sendall(whole[-1:])
    assert reader.read() == [("cache", {"x": 1})]


def test_a_message_larger_than_the_pipe_holds_arrives_whole(pipe):
    a, b = pipe
    vectors = [[float(i)] * 512 for i in range(2000)]  # megabytes, as an embedding reply can be
    writer = threading.Thread(target=write_message, args=(b.fileno(), ("embedded", 7, vectors)))
    writer.start()
    message = read_all(MessageReader(a.fileno()), 1)[0]
    writer.join()
    assert message == ("embedded", 7, vectors)


def test_the_writer_closing_is_end_of_file(pipe):
    a, b = pipe
    write_message(b.fileno(), ("ready", {}))
    b.close()
    reader = MessageReader(a.fileno())
    assert reader.read() == [("ready", {})]
    with pytest.raises(EOFError):
        reader.read()


def test_the_header_is_the_payload_length(pipe):
    a, b = pipe
    write_message(b.fileno(), "x")
    data = os.read(a.fileno(), 4096)
    assert HEADER.unpack_from(data)[0] == len(data) - HEADER.size


def test_a_plain_token_travels_as_its_text_and_every_event_comes_back_equal():
    plain = Piece(" word")
    assert compact_event(plain) == " word"
    events = [plain, Piece("", token=False), Piece("x", logprobs=[TokenLogprob("x", -0.5, [120], [])]),
              Started(10, 4), Finished("stop", 10, 3, 4)]
    assert [expand_event(compact_event(e)) for e in events] == events
