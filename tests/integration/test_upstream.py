"""`backend: upstream` with real processes: a second llm-gateway on another loopback port is the upstream, and a
front gateway (no model of its own) serves it through all five families' own clients, streaming included. At
temperature 0 the front's answers must equal the upstream's own, byte for byte; tool calls and a JSON schema
come through as the upstream produced them. Then two upstreams, one killed mid-run: requests keep succeeding
and no answer is ever replayed in part (a replay would show its opening twice)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import anthropic
import jsonschema
import ollama
import openai
import pytest
import requests
from huggingface_hub import InferenceClient

from tests.integration.support import ALIAS, DEFAULT_CONFIG, MODEL, N_CTX, GatewayServer

pytestmark = pytest.mark.integration

FRONT = "remote-smol"
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
PROMPT = "The three primary colors are"
N = 16
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 40}},
           "required": ["city"], "additionalProperties": False}
OPENAI_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Get the weather in a city.",
                                                  "parameters": WEATHER}}]


def front_config(*upstreams: GatewayServer, **upstream: Any) -> dict[str, Any]:
    """A gateway with no model of its own: one upstream model named FRONT (and ALIAS)."""
    return {"embedded_model": False, "aliases": {ALIAS: FRONT},
            "models": [{"name": FRONT, "backend": "upstream",
                        "upstream": {"urls": [u.url for u in upstreams], "model": MODEL, **upstream}}]}


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with GatewayServer(tmp_path_factory.mktemp("upstream"), DEFAULT_CONFIG) as gw:
        yield gw


@pytest.fixture(scope="module")
def front(upstream: GatewayServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with GatewayServer(tmp_path_factory.mktemp("front"), front_config(upstream)) as gw:
        yield gw
        assert gw.alive(), gw.log_tail()


@pytest.fixture(scope="module")
def claude(front: GatewayServer) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=front.url, api_key="test", max_retries=0, timeout=120)


# -- the five families through the front ---------------------------------------------------------------------


def test_chat_through_every_family_is_the_upstreams_own_answer(upstream, front, claude):
    direct = upstream.client().chat.completions.create(model=MODEL, messages=QUESTION, temperature=0, max_tokens=N)
    expected = direct.choices[0].message.content
    streamed = front.client().chat.completions.create(model=FRONT, messages=QUESTION, temperature=0, max_tokens=N,
                                                      stream=True, stream_options={"include_usage": True})
    chunks = list(streamed)
    with claude.messages.stream(model=FRONT, messages=QUESTION, max_tokens=N, extra_body={"temperature": 0}) as s:
        claude_text, claude_usage = s.get_final_text(), s.get_final_message().usage
    answers = {
        "openai": front.client().chat.completions.create(
            model=ALIAS, messages=QUESTION, temperature=0, max_tokens=N).choices[0].message.content,
        "openai stream": "".join(c.choices[0].delta.content or "" for c in chunks if c.choices),
        "anthropic stream": claude_text,
        "ollama": ollama.Client(host=front.url).chat(
            FRONT, messages=QUESTION, options={"temperature": 0, "num_predict": N}).message.content,
        "tgi": InferenceClient(model=front.url).chat_completion(
            QUESTION, max_tokens=N, temperature=0).choices[0].message.content,
        "vllm": requests.post(front.url + "/v1/chat/completions", timeout=120, json={
            "model": FRONT, "messages": QUESTION, "temperature": 0, "max_tokens": N, "top_k": -1,
            "repetition_penalty": 1.0}).json()["choices"][0]["message"]["content"],
    }
    assert expected and answers == {family: expected for family in answers}
    assert chunks[-1].usage.prompt_tokens == direct.usage.prompt_tokens
    assert (claude_usage.output_tokens, claude_usage.input_tokens + claude_usage.cache_read_input_tokens) == \
        (N, direct.usage.prompt_tokens)


def test_completion_through_every_family_is_the_upstreams_own_answer(upstream, front):
    expected = upstream.client().completions.create(model=MODEL, prompt=PROMPT, temperature=0,
                                                    max_tokens=N).choices[0].text
    streamed = front.client().completions.create(model=FRONT, prompt=PROMPT, temperature=0, max_tokens=N, stream=True)
    answers = {
        "openai stream": "".join(c.choices[0].text for c in streamed if c.choices),
        "ollama raw": ollama.Client(host=front.url).generate(
            FRONT, prompt=PROMPT, raw=True, options={"temperature": 0, "num_predict": N}).response,
        "tgi": InferenceClient(model=front.url).text_generation(PROMPT, max_new_tokens=N, do_sample=False),
        "vllm": requests.post(front.url + "/generate", timeout=120, json={
            "prompt": PROMPT, "max_tokens": N, "temperature": 0}).json()["text"][0].removeprefix(PROMPT),
    }
    assert expected and answers == {family: expected for family in answers}


def test_forced_tool_calls_come_through_streamed_and_whole(front, claude):
    ask = [{"role": "user", "content": "What is the weather like in Paris right now?"}]
    whole = front.client().chat.completions.create(model=FRONT, messages=ask, tools=OPENAI_TOOLS,
                                                   tool_choice="required", temperature=0, max_tokens=80)
    assert whole.choices[0].finish_reason == "tool_calls"
    [call] = whole.choices[0].message.tool_calls
    assert call.function.name == "get_weather" and call.id
    jsonschema.validate(json.loads(call.function.arguments), WEATHER)
    stream = front.client().chat.completions.create(
        model=FRONT, messages=ask, tools=OPENAI_TOOLS, temperature=0, max_tokens=80, stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    fragments = [c.choices[0] for c in stream if c.choices]
    calls = [d for f in fragments for d in f.delta.tool_calls or []]
    assert calls[0].function.name == "get_weather" and calls[0].id
    assert "".join(d.function.arguments or "" for d in calls) == call.function.arguments
    assert fragments[-1].finish_reason == "tool_calls"
    with claude.messages.stream(model=FRONT, messages=ask, max_tokens=80, tool_choice={"type": "tool",
                                "name": "get_weather"}, tools=[{"name": "get_weather", "description": "Weather.",
                                                                "input_schema": WEATHER}]) as s:
        message = s.get_final_message()
    assert message.stop_reason == "tool_use"
    [use] = [block for block in message.content if block.type == "tool_use"]
    jsonschema.validate(use.input, WEATHER)


def test_a_json_schema_and_vllms_guided_choice(front):
    answer = front.client().chat.completions.create(
        model=FRONT, messages=QUESTION, max_tokens=60, temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": WEATHER}})
    jsonschema.validate(json.loads(answer.choices[0].message.content), WEATHER)
    chosen = requests.post(front.url + "/v1/chat/completions", timeout=120, json={
        "model": FRONT, "messages": QUESTION, "structured_outputs": {"choice": ["Paris", "Lyon"]}, "top_k": 5,
        "min_tokens": 1, "repetition_penalty": 1.1}).json()
    assert chosen["choices"][0]["message"]["content"] in ("Paris", "Lyon")


def test_embeddings_and_tokens_are_the_upstreams(upstream, front, claude):
    direct = upstream.client().embeddings.create(model=MODEL, input=["hello", "world"])
    through = front.client().embeddings.create(model=FRONT, input=["hello", "world"])
    assert [d.embedding for d in through.data] == [d.embedding for d in direct.data]
    body = {"prompt": "Hello world", "return_token_strs": True}
    assert requests.post(front.url + "/tokenize", json={"model": FRONT, **body}, timeout=60).json() == \
        requests.post(upstream.url + "/tokenize", json={"model": MODEL, **body}, timeout=60).json()
    tokens = requests.post(upstream.url + "/tokenize", json=body, timeout=60).json()["tokens"]
    assert requests.post(front.url + "/detokenize", json={"model": FRONT, "tokens": tokens},
                         timeout=60).json() == {"prompt": "Hello world"}
    counted = claude.messages.count_tokens(model=FRONT, messages=QUESTION).input_tokens
    assert counted == upstream.client().chat.completions.create(
        model=MODEL, messages=QUESTION, max_tokens=1).usage.prompt_tokens


def test_a_request_the_upstream_refuses_is_its_400(front):
    """Token ids beyond the vocabulary: the front cannot know the vocabulary, the upstream names the field."""
    with pytest.raises(openai.BadRequestError) as caught:
        front.client().completions.create(model=FRONT, prompt=[10**8], max_tokens=4)
    assert (caught.value.status_code, caught.value.param) == (400, "prompt")
    assert f"Invalid token id {10**8} in `prompt`" in caught.value.message


def test_listings_and_ps_show_the_upstream(upstream, front):
    models = requests.get(front.url + "/v1/models", timeout=30).json()["data"]
    assert {m["id"]: m["max_model_len"] for m in models} == {FRONT: N_CTX, ALIAS: N_CTX}
    show = requests.post(front.url + "/api/show", json={"model": FRONT}, timeout=30).json()
    assert show["model_info"]["upstream.urls"] == [upstream.url]
    [running] = requests.get(front.url + "/api/ps", timeout=30).json()["models"]
    assert running["runner"]["kind"] == "upstream" and running["size"] == 0
    assert running["runner"]["endpoints"] == [{"url": upstream.url, "state": "closed", "in_flight": 0,
                                               "throttled": False, "last_error": None}]
    with requests.get(front.url + "/api/events", stream=True, timeout=(10, 60)) as feed:  # what the dashboard reads
        snapshot = next(line for line in feed.iter_lines(decode_unicode=True) if line.startswith("data: "))
    [model] = json.loads(snapshot[6:])["models"]
    assert (model["backend"], model["health"], model["endpoints"]) == \
        ("upstream", "ok", running["runner"]["endpoints"])


# -- two upstreams, one killed mid-run -----------------------------------------------------------------------


STORY = [{"role": "user", "content": "Tell me a long story about a lighthouse keeper."}]
STORY_TOKENS = 48
WORKERS = 3
AFTER_KILL = 9  # requests that must start and succeed after the kill
OPENING = 24  # characters: "The story of a lighthous"


def stream_story(url: str) -> tuple[str, str | None]:
    """One streamed chat through the OpenAI wire, read by hand: the text, and the in-band error if one came."""
    body = {"model": FRONT, "messages": STORY, "temperature": 0, "max_tokens": STORY_TOKENS, "stream": True}
    text, error = "", None
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=120) as response:
        assert response.status_code == 200, response.text
        for line in response.iter_lines(decode_unicode=True):
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = chunk["error"]["message"]
            else:
                text += "".join(c["delta"].get("content") or "" for c in chunk["choices"])
    return text, error


def started_once(text: str, opening: str) -> bool:
    """The answer's opening is where it starts and nowhere else (or the text is cut within the opening): a stream
    replayed after a failure would start over inside the text."""
    return (text.startswith(opening) and text.count(opening) == 1) or opening.startswith(text)


def test_one_of_two_upstreams_killed_mid_run(tmp_path_factory: pytest.TempPathFactory):
    work: Path = tmp_path_factory.mktemp("failover")
    with GatewayServer(work / "a", DEFAULT_CONFIG) as a, GatewayServer(work / "b", DEFAULT_CONFIG) as b, \
            GatewayServer(work / "front", front_config(a, b, health_interval=1, cooldown=2)) as front:
        expected = b.client().chat.completions.create(model=MODEL, messages=STORY, temperature=0,
                                                      max_tokens=STORY_TOKENS).choices[0].message.content
        results: list[tuple[float, str, str | None]] = []  # (started, text, in-band error)
        killed_at: list[float] = []
        lock, stop = threading.Lock(), threading.Event()

        def worker() -> None:
            while not stop.is_set():
                started = time.monotonic()
                text, error = stream_story(front.url)
                with lock:
                    results.append((started, text, error))
                    after = sum(1 for s, _, _ in results if killed_at and s > killed_at[0])
                    if after >= AFTER_KILL:
                        stop.set()

        threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
        for thread in threads:
            thread.start()
        while len(results) < WORKERS and all(t.is_alive() for t in threads):
            time.sleep(0.05)
        a.kill()
        with lock:
            killed_at.append(time.monotonic())
        for thread in threads:
            thread.join(timeout=600)
        assert not any(t.is_alive() for t in threads)
        opening = expected[:OPENING]  # at temperature 0 every answer starts so (batching varies only later)
        after = [(text, error) for started, text, error in results if started > killed_at[0]]
        assert len(after) >= AFTER_KILL and all(error is None and text.startswith(opening) for text, error in after)
        for _, text, error in results:  # whole, or cut short with an in-band error; never started over
            assert started_once(text, opening) and (error is not None or text.startswith(opening)), (text, error)
        [running] = requests.get(front.url + "/api/ps", timeout=30).json()["models"]
        states = {e["url"]: e for e in running["runner"]["endpoints"]}
        assert states[a.url]["state"] in ("open", "half_open") and states[a.url]["last_error"]
        assert states[b.url]["state"] == "closed"
