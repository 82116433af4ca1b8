"""Stored Responses API answers: what `previous_response_id` continues and what `GET`/`DELETE /v1/responses/<id>`
find.

Two stores with one interface: `MemoryStore` (the default, gone with the process) and `SqliteStore` (a file, so
conversations survive a restart). Both keep at most `limit` answers and forget the least recently used first:
an agent that walks a long tool loop touches its newest answer every round, so it is the abandoned threads that
go. `Conversations` is the service's collaborator: it puts the stored conversation before a request's input,
answers get and delete, and keeps a finished answer, streamed or not, so the adapter stays pure and the service
gains only a few calls.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import OrderedDict
from dataclasses import asdict, replace
from typing import Any, Iterable, Iterator, Protocol

from gateway.output import gather
from gateway.types import (
    Choice,
    ChoiceDone,
    Deleted,
    Done,
    ErrorKind,
    GatewayError,
    GenerationResult,
    ImagePart,
    InternalRequest,
    Message,
    StoredResponse,
    TextDelta,
    ThinkingDelta,
    Timings,
    ToolCall,
    ToolCallDelta,
    Usage,
)

STORE_LIMIT = 1000  # answers kept; the least recently used goes first


class ResponseStore(Protocol):
    def get(self, response_id: str) -> StoredResponse | None: ...

    def put(self, stored: StoredResponse) -> None: ...

    def delete(self, response_id: str) -> bool: ...


class MemoryStore:
    """An LRU map; a lock, because every HTTP thread may read and write it."""

    def __init__(self, limit: int = STORE_LIMIT):
        self.limit = limit
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            stored = self._items.get(response_id)
            if stored is not None:
                self._items.move_to_end(response_id)
            return stored

    def put(self, stored: StoredResponse) -> None:
        with self._lock:
            self._items[stored.id] = stored
            self._items.move_to_end(stored.id)
            while len(self._items) > self.limit:
                self._items.popitem(last=False)

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._items.pop(response_id, None) is not None


class SqliteStore:
    """One row per answer, its facts as JSON; `used` orders the rows for LRU. One connection behind a lock:
    the writes are small and few next to a generation, and sqlite3 objects must not be used by two threads at
    once."""

    def __init__(self, path: str, limit: int = STORE_LIMIT):
        self.limit = limit
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("CREATE TABLE IF NOT EXISTS responses "
                         "(id TEXT PRIMARY KEY, body TEXT NOT NULL, used INTEGER NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS responses_used ON responses (used)")

    def get(self, response_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM responses WHERE id = ?", (response_id,)).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE responses SET used = (SELECT COALESCE(MAX(used), 0) + 1 FROM responses) "
                             "WHERE id = ?", (response_id,))
        return decode(row[0])

    def put(self, stored: StoredResponse) -> None:
        body = encode(stored)
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO responses (id, body, used) "
                             "VALUES (?, ?, (SELECT COALESCE(MAX(used), 0) + 1 FROM responses))", (stored.id, body))
            self._db.execute("DELETE FROM responses WHERE id NOT IN "
                             "(SELECT id FROM responses ORDER BY used DESC LIMIT ?)", (self.limit,))

    def delete(self, response_id: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM responses WHERE id = ?", (response_id,)).rowcount > 0


def open_store(setting: str, limit: int = STORE_LIMIT) -> ResponseStore:
    """The `responses_store` setting: "memory", or the path of a SQLite file (created if missing)."""
    return MemoryStore(limit) if setting == "memory" else SqliteStore(setting, limit)


def encode(stored: StoredResponse) -> str:
    return json.dumps(asdict(stored), ensure_ascii=False, separators=(",", ":"))


def decode(text: str) -> StoredResponse:
    data = json.loads(text)
    result = data["result"]
    return StoredResponse(
        id=data["id"],
        messages=[_message(m) for m in data["messages"]],
        result=GenerationResult([_choice(c) for c in result["choices"]], Usage(**result["usage"]),
                                Timings(**result["timings"])),
        render=data["render"],
    )


def _message(data: dict[str, Any]) -> Message:
    return Message(**{**data, "images": [ImagePart(**i) for i in data["images"]],
                      "tool_calls": [ToolCall(**c) for c in data["tool_calls"]]})


def _choice(data: dict[str, Any]) -> Choice:
    """Logprobs are not kept: an answer read back renders its text, not its token statistics."""
    return Choice(**{**data, "tool_calls": [ToolCall(**c) for c in data["tool_calls"]], "logprobs": None})


class Conversations:
    """The service's side of stored responses. Requests without `req.response` pass through untouched."""

    def __init__(self, store: ResponseStore):
        self.store = store

    def answer(self, req: InternalRequest) -> StoredResponse | Deleted:
        """get_response / delete_response; an unknown id is a 404."""
        response_id = req.response.id
        if req.kind == "delete_response":
            if not self.store.delete(response_id):
                raise _not_found(response_id, None)
            return Deleted(response_id)
        return self._get(response_id, None)

    def expand(self, req: InternalRequest) -> None:
        """The conversation `previous_id` ended with goes before the new input, after this request's own
        instructions (the previous request's instructions are not carried over)."""
        thread = req.response
        if thread is None or thread.previous_id is None:
            return
        previous = self._get(thread.previous_id, "previous_response_id")
        head = 1 if thread.instructions else 0
        req.messages = [*req.messages[:head], *previous.messages, *req.messages[head:]]

    def keep(self, req: InternalRequest, result: GenerationResult) -> GenerationResult:
        """Keep a finished answer (when the request asked to be stored) and pass it on."""
        thread = req.response
        if thread is None or not thread.store or not result.choices:
            return result
        history = req.messages[1:] if thread.instructions else req.messages
        choice = result.choices[0]
        said = Message("assistant", choice.text or None, tool_calls=list(choice.tool_calls),
                       thinking=choice.thinking or None)
        self.store.put(StoredResponse(thread.id, [*history, said], _without_logprobs(result), dict(req.render)))
        return result

    def follow(self, req: InternalRequest, events: Iterable[Any]) -> Iterable[Any]:
        """Pass a stream's events on, gathering its answer as they go by, and keep it at `Done`: a stream the
        client left early is not kept. A stream that is not kept passes as it is, without a generator layer that
        would cost every token a call."""
        if req.response is None or not req.response.store:
            return events
        return self._gathering(req, events)

    def _gathering(self, req: InternalRequest, events: Iterable[Any]) -> Iterator[Any]:
        choice = Choice(0)
        for event in events:
            if isinstance(event, (TextDelta, ThinkingDelta, ToolCallDelta, ChoiceDone)) and event.index == 0:
                gather(choice, event)
            elif isinstance(event, Done):
                self.keep(req, GenerationResult([choice], event.usage, event.timings))
            yield event

    def _get(self, response_id: str, param: str | None) -> StoredResponse:
        stored = self.store.get(response_id)
        if stored is None:
            raise _not_found(response_id, param)
        return stored


def _without_logprobs(result: GenerationResult) -> GenerationResult:
    return replace(result, choices=[replace(c, logprobs=None) for c in result.choices])


def _not_found(response_id: str, param: str | None) -> GatewayError:
    """OpenAI's wording; `param` is set where the id came from a field (previous_response_id), not the path."""
    which = "Previous response" if param else "Response"
    return GatewayError(ErrorKind.NOT_FOUND, f"{which} with id '{response_id}' not found.", param, code="not_found")
