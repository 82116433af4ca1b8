"""The Anthropic Messages API through the official `anthropic` SDK against the real server and model, with raw
wire checks for the SSE event order and the error shapes."""

from __future__ import annotations

import json
from typing import Iterator

import anthropic
import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL, N_CTX, GatewayServer

pytestmark = pytest.mark.integration

CLAUDE = "claude-opus-4-6"
QUESTION = [{"role": "user", "content": "Name three colors."}]
GREEDY = {"temperature": 0}  # newer SDKs no longer type `temperature`; older ones and agents still send it


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    config = {**DEFAULT_CONFIG, "aliases": {**DEFAULT_CONFIG["aliases"], "claude-*": MODEL}}
    with GatewayServer(tmp_path_factory.mktemp("gateway-claude"), config) as gw:
        yield gw
        if not gw.alive():
            pytest.fail(f"the gateway died during the module's tests:\n{gw.log_tail()}")


@pytest.fixture(scope="module")
def client(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0, timeout=120)


def test_create_answers_with_a_message(client: anthropic.Anthropic) -> None:
    msg = client.messages.create(model=CLAUDE, max_tokens=24, messages=QUESTION, extra_body=GREEDY,
                                 system="You are brief.")
    assert msg.id.startswith("msg_") and msg.type == "message" and msg.role == "assistant"
    assert msg.model == CLAUDE
    assert msg.content[0].type == "text" and msg.content[0].text
    assert msg.stop_reason in ("end_turn", "max_tokens")
    assert msg.usage.output_tokens > 0 and msg.usage.input_tokens > 0


def test_stream_matches_create_and_follows_the_event_order(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(model=CLAUDE, max_tokens=24, messages=QUESTION, extra_body=GREEDY)
    with client.messages.stream(model=CLAUDE, max_tokens=24, messages=QUESTION, extra_body=GREEDY) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == whole.content[0].text == final.content[0].text
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert final.stop_reason == whole.stop_reason


def test_raw_event_order(server: GatewayServer) -> None:
    r = requests.post(server.url + "/v1/messages", stream=True, timeout=60,
                      headers={"anthropic-version": "2023-06-01", "x-api-key": "k"},
                      json={"model": CLAUDE, "max_tokens": 8, "messages": QUESTION, "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line.split(": ", 1)[1] for line in r.iter_lines(decode_unicode=True) if line.startswith("event:")]
    assert events[:3] == ["message_start", "content_block_start", "ping"]
    assert events[-3:] == ["content_block_stop", "message_delta", "message_stop"]
    assert set(events[3:-3]) <= {"content_block_delta", "ping"}


def test_stop_reasons(client: anthropic.Anthropic) -> None:
    capped = client.messages.create(model=CLAUDE, max_tokens=3, messages=QUESTION, extra_body=GREEDY)
    assert capped.stop_reason == "max_tokens" and capped.usage.output_tokens == 3
    full = client.messages.create(model=CLAUDE, max_tokens=200, messages=QUESTION, extra_body=GREEDY)
    text = full.content[0].text
    assert len(text) > 4
    stop = text[2:4]
    stopped = client.messages.create(model=CLAUDE, max_tokens=200, messages=QUESTION, extra_body=GREEDY,
                                     stop_sequences=[stop])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == stop


def test_count_tokens_equals_usage(client: anthropic.Anthropic) -> None:
    count = client.messages.count_tokens(model=CLAUDE, messages=QUESTION, system="You are brief.")
    msg = client.messages.create(model=CLAUDE, max_tokens=2, messages=QUESTION, system="You are brief.")
    assert count.input_tokens == msg.usage.input_tokens + (msg.usage.cache_read_input_tokens or 0)


def test_prefix_reuse_is_reported_as_cache_read(client: anthropic.Anthropic) -> None:
    long_system = "You answer questions about colors. " * 20
    client.messages.create(model=CLAUDE, max_tokens=2, system=long_system, messages=QUESTION, extra_body=GREEDY)
    again = client.messages.create(model=CLAUDE, max_tokens=2, system=long_system, messages=QUESTION, extra_body=GREEDY)
    assert (again.usage.cache_read_input_tokens or 0) > 0


def test_models_list_in_anthropics_shape(client: anthropic.Anthropic, server: GatewayServer) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    one = client.models.retrieve(MODEL)
    assert one.type == "model" and one.id == MODEL
    plain = requests.get(server.url + "/v1/models", timeout=10).json()
    assert plain["object"] == "list"  # without anthropic-version the same path answers as OpenAI


def test_agent_style_request_is_accepted(server: GatewayServer) -> None:
    body = {
        "model": "claude-opus-4-1-20250805", "max_tokens": 16, "stream": False,
        "system": [{"type": "text", "text": "You are an agent.", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hi",
                                                   "cache_control": {"type": "ephemeral"}}]}],
        "tools": [{"name": "Read", "description": "read a file", "input_schema": {"type": "object"},
                   "cache_control": {"type": "ephemeral"}}],
        "metadata": {"user_id": "user_abc"}, "thinking": {"type": "disabled"},
        "context_management": {"edits": []},
    }
    r = requests.post(server.url + "/v1/messages?beta=true", json=body, timeout=60,
                      headers={"anthropic-version": "2023-06-01", "anthropic-beta": "claude-code-20250219"})
    assert r.status_code == 200, r.text
    assert r.json()["type"] == "message"


def test_errors_in_anthropics_shape(client: anthropic.Anthropic, server: GatewayServer) -> None:
    with pytest.raises(anthropic.NotFoundError) as info:
        client.messages.create(model="gpt-nothing", max_tokens=4, messages=QUESTION)
    assert info.value.body["type"] == "error" and info.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=CLAUDE, max_tokens=4, messages=[{"role": "robot", "content": "x"}])
    assert info.value.body["error"]["type"] == "invalid_request_error"
    r = requests.post(server.url + "/v1/messages", json={"model": CLAUDE, "messages": QUESTION}, timeout=10,
                      headers={"anthropic-version": "2023-06-01"})
    assert r.status_code == 400 and "max_tokens" in r.json()["error"]["message"]


def test_a_prompt_too_long_is_invalid_request_saying_so(client: anthropic.Anthropic) -> None:
    huge = "word " * (N_CTX + 100)
    with pytest.raises(anthropic.BadRequestError) as info:
        client.messages.create(model=CLAUDE, max_tokens=4, messages=[{"role": "user", "content": huge}])
    assert "prompt is too long" in info.value.body["error"]["message"]


def test_sse_data_is_json_per_event(server: GatewayServer) -> None:
    r = requests.post(server.url + "/v1/messages", stream=True, timeout=60,
                      headers={"anthropic-version": "2023-06-01"},
                      json={"model": CLAUDE, "max_tokens": 4, "messages": QUESTION, "stream": True,
                            "temperature": 0})  # sampled, the answer could end before its 4th token
    datas = [json.loads(line[6:]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data: ")]
    assert datas[0]["type"] == "message_start" and datas[0]["message"]["usage"]["input_tokens"] > 0
    assert datas[-2]["type"] == "message_delta" and datas[-2]["usage"]["output_tokens"] == 4
