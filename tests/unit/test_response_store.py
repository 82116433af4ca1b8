"""Stored Responses API answers: both stores forget the least recently used first, the SQLite one survives a
reopen, and `Conversations` puts the stored conversation before new input, keeps finished answers (streamed or
not) and answers get and delete."""

from __future__ import annotations

import pytest
from flask import Flask

from adapters import openai_responses
from adapters.openai_responses_render import ECHOED
from gateway.auth import Access
from gateway.response_store import Conversations, MemoryStore, SqliteStore, decode, encode, open_store
from gateway.routes import register_routes
from gateway.service import Service
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
    ResponseThread,
    StoredResponse,
    TextDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
)

RENDER = {"response": {"created_at": 1700000000, "model": "m"}}


def stored(ident: str, text: str = "a") -> StoredResponse:
    return StoredResponse(ident, [Message("user", "q"), Message("assistant", text)],
                          GenerationResult([Choice(0, text)], Usage(3, 1)), RENDER)


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    return MemoryStore(limit=2) if request.param == "memory" else SqliteStore(str(tmp_path / "r.db"), limit=2)


def test_the_least_recently_used_answer_goes_first(store):
    store.put(stored("a"))
    store.put(stored("b"))
    assert store.get("a").id == "a"  # a is now newer than b
    store.put(stored("c"))
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None


def test_delete_says_whether_there_was_one(store):
    store.put(stored("a"))
    assert store.delete("a") and not store.delete("a") and store.get("a") is None


def test_a_sqlite_store_survives_a_reopen(tmp_path):
    path = str(tmp_path / "r.db")
    open_store(path).put(stored("a", "kept"))
    assert open_store(path).get("a") == stored("a", "kept")
    assert isinstance(open_store("memory"), MemoryStore)


def test_encoding_round_trips_every_field_but_logprobs():
    full = StoredResponse(
        "a", [Message("user", "q", images=[ImagePart("data:x")]),
              Message("assistant", None, tool_calls=[ToolCall("c", "f", "{}")], thinking="t"),
              Message("tool", "1", tool_call_id="c")],
        GenerationResult([Choice(0, "x", "t", [ToolCall("c", "f", "{}")], "tool_calls")], Usage(3, 1, 2, 1)), RENDER)
    assert decode(encode(full)) == full
    with_logprobs = stored("b")
    with_logprobs.result.choices[0].logprobs = [TokenLogprob("a", -0.1, [97])]
    assert decode(encode(with_logprobs)).result.choices[0].logprobs is None


# ---------------------------------------------------------------------------------------------------------------
# Conversations


def request(messages: list[Message], previous: str | None = None, store: bool = True,
            instructions: bool = False) -> InternalRequest:
    return InternalRequest(kind="chat", messages=messages, render=RENDER,
                           response=ResponseThread("resp_new", previous, store, instructions))


def test_the_previous_conversation_goes_after_the_instructions_only():
    conversations = Conversations(MemoryStore())
    conversations.store.put(stored("resp_old"))
    req = request([Message("system", "new rules"), Message("user", "more")], "resp_old", instructions=True)
    conversations.expand(req)
    assert req.messages == [Message("system", "new rules"), Message("user", "q"), Message("assistant", "a"),
                            Message("user", "more")]


def test_an_unknown_previous_id_is_a_404_naming_the_field():
    with pytest.raises(GatewayError) as caught:
        Conversations(MemoryStore()).expand(request([Message("user", "x")], "resp_gone"))
    assert caught.value.kind is ErrorKind.NOT_FOUND and caught.value.param == "previous_response_id"


def test_a_kept_answer_holds_its_conversation_and_its_own_turn_without_the_instructions():
    conversations = Conversations(MemoryStore())
    req = request([Message("system", "rules"), Message("user", "weather?")], instructions=True)
    result = GenerationResult([Choice(0, "", "t", [ToolCall("call_1", "f", "{}")], "tool_calls")], Usage(5, 2))
    assert conversations.keep(req, result) is result
    kept = conversations.answer(InternalRequest(kind="get_response", response=ResponseThread("resp_new")))
    assert kept.messages == [Message("user", "weather?"),
                             Message("assistant", None, tool_calls=[ToolCall("call_1", "f", "{}")], thinking="t")]
    assert kept.result == result and kept.render == RENDER


def test_store_false_and_other_families_keep_nothing():
    conversations = Conversations(MemoryStore())
    result = GenerationResult([Choice(0, "a")], Usage())
    conversations.keep(request([Message("user", "q")], store=False), result)
    conversations.keep(InternalRequest(kind="chat", messages=[Message("user", "q")]), result)
    assert conversations.store.get("resp_new") is None


def test_a_stream_is_kept_at_its_end_and_not_when_the_client_left():
    conversations = Conversations(MemoryStore())
    events = [TextDelta(0, "He"), TextDelta(0, "y"), ToolCallDelta(0, 0, "call_1", "f", ""),
              ToolCallDelta(0, 0, arguments="{}"), ChoiceDone(0, "tool_calls"), Done(Usage(4, 3))]
    left = list(conversations.follow(request([Message("user", "q")]), events[:3]))
    assert left == events[:3] and conversations.store.get("resp_new") is None
    assert list(conversations.follow(request([Message("user", "q")]), events)) == events
    kept = conversations.store.get("resp_new")
    assert kept.messages[-1] == Message("assistant", "Hey", tool_calls=[ToolCall("call_1", "f", "{}")])
    assert kept.result.usage == Usage(4, 3) and kept.result.choices[0].finish_reason == "tool_calls"


def test_get_and_delete():
    conversations = Conversations(MemoryStore())
    conversations.store.put(stored("resp_a"))

    def ask(kind: str):
        return conversations.answer(InternalRequest(kind=kind, response=ResponseThread("resp_a")))

    assert ask("get_response").id == "resp_a"
    assert ask("delete_response") == Deleted("resp_a")
    for kind in ("get_response", "delete_response"):
        with pytest.raises(GatewayError) as caught:
            ask(kind)
        assert caught.value.kind is ErrorKind.NOT_FOUND and caught.value.param is None


def test_get_and_delete_over_http():
    """The routes, the service and the store together: OpenAI's shapes, 404s included (no model needed)."""
    conversations = Conversations(MemoryStore())
    conversations.store.put(StoredResponse("resp_a", [], GenerationResult([Choice(0, "hi")], Usage(3, 1)), {
        "response": {"created_at": 1, **dict.fromkeys(ECHOED)}}))
    app = Flask("gateway")
    register_routes(app, openai_responses.ROUTES, Service(None, None, conversations=conversations), Access([]))
    client = app.test_client()
    got = client.get("/v1/responses/resp_a")
    assert got.status_code == 200 and got.json["output"][0]["content"][0]["text"] == "hi"
    assert client.delete("/v1/responses/resp_a").json == {"id": "resp_a", "object": "response", "deleted": True}
    for method in ("GET", "DELETE"):
        gone = client.open("/v1/responses/resp_a", method=method)
        assert gone.status_code == 404 and gone.json["error"] == {
            "message": "Response with id 'resp_a' not found.", "type": "invalid_request_error", "param": None,
            "code": "not_found"}
