"""The runner's messages to the API process: each pickled behind an 8-byte length and written whole.

multiprocessing's `Connection` frames messages the same way, but its receiving side costs two reads and several
layers of Python per message. At one stream a message is a token, and its reader runs once per token on a
thread that has slept through a decode step, with the caches that step has just filled with weights: every
line of code and object it touches is a memory access. `MessageReader` takes whatever the pipe holds in one read
and unpickles each complete message in it. (The API process's messages to the runner, a few per request, stay on
the `Connection`.)

A step's events travel as `(job_id, event)` pairs, and the commonest event, a plain token's `Piece`, travels
as its bare text (`compact_event` and `expand_event`): unpickling a class instance looks its module and class up
and builds the object field by field, which costs more than all the rest of the message.
"""

from __future__ import annotations

import os
import pickle
import struct

from gateway.engine.jobs import EngineEvent, Piece

HEADER = struct.Struct("<Q")
READ_SIZE = 65536  # a step's message is ~50 bytes a sequence
LONG_READ_SIZE = 1 << 20  # while a long message (an embedding reply may be megabytes) is arriving


def compact_event(event: EngineEvent) -> EngineEvent | str:
    """A plain token's `Piece` as its text; any other event as it is."""
    if type(event) is Piece and event.token and event.logprobs is None:
        return event.text
    return event


def expand_event(event: EngineEvent | str) -> EngineEvent:
    return Piece(event) if type(event) is str else event


def write_message(fd: int, message: object) -> None:
    """Write one message; raises OSError (BrokenPipeError) once the reader is gone."""
    data = pickle.dumps(message, pickle.HIGHEST_PROTOCOL)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view):]


class MessageReader:
    """Call `read` when the file descriptor is readable. Not thread-safe: one reader at a time (the runner's
    `SharedReader` turn)."""

    def __init__(self, fd: int):
        self._fd = fd
        self._parts: list[bytes] = []  # the start of a message still arriving
        self._missing = 0  # bytes it needs before it can be parsed further

    def read(self) -> list:
        """The messages completed by one read (none while a long one is still arriving); EOFError once the
        writer has closed its end. In the common case, whole messages in one read, nothing is copied."""
        chunk = os.read(self._fd, LONG_READ_SIZE if self._missing > READ_SIZE else READ_SIZE)
        if not chunk:
            raise EOFError
        if self._parts:
            self._parts.append(chunk)
            self._missing -= len(chunk)
            if self._missing > 0:
                return []
            chunk, self._parts = b"".join(self._parts), []
        messages = []
        at, size, view = 0, len(chunk), memoryview(chunk)
        while size - at >= HEADER.size:
            end = at + HEADER.size + HEADER.unpack_from(chunk, at)[0]
            if end > size:
                break
            messages.append(pickle.loads(view[at + HEADER.size:end]))
            at = end
        if at < size:
            self._parts = [chunk[at:]]
            whole = end - at if size - at >= HEADER.size else HEADER.size
            self._missing = whole - (size - at)
        return messages
