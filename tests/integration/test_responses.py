"""The Responses API through the official `openai` SDK against the real server and model: text, a JSON schema,
a forced function call, the `responses.stream()` helper against the non-streamed answer, a function-call loop
carried by `previous_response_id`, stored answers read back and deleted, and a SQLite store across a restart.

SmolLM2-135M calls tools reliably only when forced, so every call here is forced (`tool_choice: required`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import openai
import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer

WEATHER_SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
                  "additionalProperties": False}
WEATHER = [{"type": "function", "name": "get_weather", "description": "Current weather in a city.",
            "parameters": WEATHER_SCHEMA, "strict": True}]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
          "required": ["name", "age"], "additionalProperties": False}
SKY = {"type": "object", "properties": {"sky": {"enum": ["sunny", "rainy", "cloudy"]}}, "required": ["sky"],
       "additionalProperties": False}
GREEDY: dict[str, Any] = {"model": MODEL, "temperature": 0, "max_output_tokens": 40}
ASK_WEATHER = "What is the weather in Paris?"


def calls_of(response) -> list[Any]:
    return [item for item in response.output if item.type == "function_call"]


def test_text(client: openai.OpenAI) -> None:
    r = client.responses.create(input="Say hello.", instructions="You are friendly.", **GREEDY)
    assert r.id.startswith("resp_") and r.object == "response" and r.model == MODEL
    assert r.status in ("completed", "incomplete") and r.output_text.strip()
    assert r.output[0].type == "message" and r.output[0].id.startswith("msg_")
    assert r.usage.input_tokens > 0 and 0 < r.usage.output_tokens <= 40
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.output_tokens_details.reasoning_tokens == 0 and r.instructions == "You are friendly."


def test_max_output_tokens_makes_it_incomplete(client: openai.OpenAI) -> None:
    r = client.responses.create(input="Write a long story about a dragon.", **{**GREEDY, "max_output_tokens": 3})
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.usage.output_tokens == 3


def test_json_schema(client: openai.OpenAI) -> None:
    r = client.responses.create(input="Invent a person with a name and an age.", **{**GREEDY, "max_output_tokens": 80},
                                text={"format": {"type": "json_schema", "name": "person", "schema": PERSON,
                                                 "strict": True}})
    jsonschema.validate(json.loads(r.output_text), PERSON)


def test_a_forced_function_call(client: openai.OpenAI) -> None:
    r = client.responses.create(input=ASK_WEATHER, tools=WEATHER, tool_choice="required", **GREEDY)
    (call,) = calls_of(r)
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id.startswith("fc_")
    jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)


@pytest.mark.parametrize("extra", [{"text": {"format": {"type": "json_schema", "name": "sky", "schema": SKY}}},
                                   {"tools": WEATHER, "tool_choice": "required"}], ids=["text", "call"])
def test_the_stream_helper_ends_with_the_non_streamed_answer(client: openai.OpenAI, extra: dict[str, Any]) -> None:
    """Both answers end by themselves (a short schema, a call): `get_final_response()` needs `response.completed`,
    and an answer cut by max_output_tokens ends with `response.incomplete`, as OpenAI's does."""
    plain = client.responses.create(input=ASK_WEATHER, **GREEDY, **extra)
    assert plain.status == "completed"
    with client.responses.stream(input=ASK_WEATHER, **GREEDY, **extra) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == plain.output_text
    assert [(c.name, c.arguments) for c in calls_of(final)] == [(c.name, c.arguments) for c in calls_of(plain)]
    assert final.status == plain.status and final.usage.output_tokens == plain.usage.output_tokens


def test_a_function_call_loop_carried_by_previous_response_id(client: openai.OpenAI) -> None:
    """Each round sends only the call's output and the previous id: the conversation grows on the server."""
    forced = {"tools": WEATHER, "tool_choice": "required", **GREEDY}
    r = client.responses.create(input=ASK_WEATHER, **forced)
    sizes = [r.usage.input_tokens]
    for degrees in (21, 22):
        (call,) = calls_of(r)
        r = client.responses.create(previous_response_id=r.id, **forced, input=[
            {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps({"celsius": degrees})}])
        assert r.previous_response_id is not None and calls_of(r)[0].name == "get_weather"
        sizes.append(r.usage.input_tokens)
    assert sizes[0] < sizes[1] < sizes[2]  # each round's prompt holds the rounds before it


def test_retrieve_then_delete(client: openai.OpenAI) -> None:
    r = client.responses.create(input="Say hi.", metadata={"run": "1"}, **GREEDY)
    got = client.responses.retrieve(r.id)
    assert got.model_dump() == r.model_dump()
    deleted = client.responses.with_raw_response.delete(r.id)
    assert deleted.http_response.json() == {"id": r.id, "object": "response", "deleted": True}
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.delete(r.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    r = client.responses.create(input="Say hi.", store=False, **GREEDY)
    assert r.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(input="again", previous_response_id=r.id, **GREEDY)
    assert caught.value.body["param"] == "previous_response_id"


def test_a_sqlite_store_survives_a_restart(tmp_path: Path) -> None:
    config = {**DEFAULT_CONFIG, "responses_store": str(tmp_path / "responses.db")}
    with GatewayServer(tmp_path / "first", config) as server:
        r = server.client().responses.create(input="Say hi.", **{**GREEDY, "max_output_tokens": 5})
    with GatewayServer(tmp_path / "second", config) as server:
        assert server.client().responses.retrieve(r.id).output_text == r.output_text


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"input": 3}, "input"),
    ({"metadata": {"k": 1}}, "metadata.k"),
    ({"text": {"format": {"type": "json_schema", "name": "x"}}}, "text.format.schema"),
])
def test_bad_fields_are_400s_in_openais_shape(server: GatewayServer, extra: dict[str, Any], param: str) -> None:
    r = requests.post(server.url + "/v1/responses", json={"model": MODEL, "input": "hi", **extra}, timeout=30)
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == param and error["type"] == "invalid_request_error"


def test_the_stream_on_the_wire(server: GatewayServer) -> None:
    """Named events whose name is their `type`, numbered from 0, ending with the lifecycle event, no `[DONE]`."""
    r = requests.post(server.url + "/v1/responses", json={"model": MODEL, "input": "Tell me a story.", "stream": True,
                                                         "max_output_tokens": 4}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    assert r.text.endswith("\n\n") and "[DONE]" not in r.text
    events = []
    for block in r.text.strip().split("\n\n"):
        name, data = block.split("\n")
        events.append((name.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    assert all(name == payload["type"] for name, payload in events)
    assert [payload["sequence_number"] for _, payload in events] == list(range(len(events)))
    assert events[-1][0] == "response.incomplete" and events[-1][1]["response"]["usage"]["output_tokens"] == 4
