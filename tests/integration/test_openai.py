"""The OpenAI family through the official `openai` SDK (and plain `requests` for the wire), against the real
server and the real embedded model (SmolLM2-135M-Instruct).

Greedy (temperature 0) outputs are compared with each other rather than with fixed strings, so the tests hold
for any build of llama.cpp; the few hard-coded facts (token ids, embedding size) belong to the embedded model.
"""

from __future__ import annotations

import base64
import json
import math
import struct
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openai
import pytest
import requests

from tests.integration.support import ALIAS, MODEL, N_CTX, GatewayServer

pytestmark = pytest.mark.integration

COLORS = [{"role": "user", "content": "Name three colors."}]
STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
FRANCE = "The capital of France is"
# SmolLM2's tokenizer (no BOS is added) turns FRANCE into exactly these ids.
FRANCE_IDS = [504, 3575, 282, 4649, 314]
COUNTING_IDS = [33, 28, 216, 34, 28, 216, 35, 28, 216, 36, 28]  # "1, 2, 3, 4,"
EMBEDDING_DIM = 576


def stream_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---------------------------------------------------------------------------------------------------------------
# Streaming and non-streaming agree


@pytest.fixture(scope="module")
def greedy_chat(client: openai.OpenAI) -> tuple[Any, list[Any]]:
    """One greedy chat answer, non-streamed and streamed with a usage chunk (shared by several tests)."""
    kwargs = dict(model=MODEL, messages=COLORS, temperature=0, max_tokens=24)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    return whole, chunks


def test_chat_stream_and_non_stream_agree(greedy_chat: tuple[Any, list[Any]]) -> None:
    whole, chunks = greedy_chat
    content = whole.choices[0].message.content
    assert content, "the model said nothing"
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant"
    assert stream_text(chunks) == content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices), "role must be sent once"
    assert {c.id for c in chunks} == {chunks[0].id} and {c.created for c in chunks} == {chunks[0].created}
    assert all(c.object == "chat.completion.chunk" for c in chunks)


def test_stream_include_usage(greedy_chat: tuple[Any, list[Any]]) -> None:
    whole, chunks = greedy_chat
    last = chunks[-1]
    assert last.choices == []
    assert last.usage is not None
    assert all(c.usage is None for c in chunks[:-1])
    assert last.usage.prompt_tokens == whole.usage.prompt_tokens > 0
    assert last.usage.completion_tokens == whole.usage.completion_tokens > 0
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert whole.usage.total_tokens == whole.usage.prompt_tokens + whole.usage.completion_tokens
    if whole.choices[0].finish_reason == "length":
        assert whole.usage.completion_tokens == 24


def test_completion_stream_and_non_stream_agree(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, prompt=FRANCE, temperature=0, max_tokens=16)
    whole = client.completions.create(**kwargs)
    chunks = list(client.completions.create(**kwargs, stream=True))
    assert whole.object == "text_completion"
    assert whole.choices[0].text
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert all(c.object == "text_completion" for c in chunks)


def test_sse_wire_format(server: GatewayServer) -> None:
    """Byte-level: `data: ` frames, `usage: null` on every chunk but the usage chunk, `data: [DONE]` last."""
    body = {"model": MODEL, "messages": COLORS, "temperature": 0, "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}
    r = requests.post(server.url + "/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/event-stream")
    assert r.text.endswith("data: [DONE]\n\n")
    events = [block for block in r.text.split("\n\n") if block and not block.startswith(":")]
    assert all(e.startswith("data: ") for e in events), events
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(e[len("data: "):]) for e in events[:-1]]
    assert all("usage" in p for p in payloads)
    assert all(p["usage"] is None for p in payloads[:-1])
    assert payloads[-1]["choices"] == [] and payloads[-1]["usage"]["completion_tokens"] > 0


# ---------------------------------------------------------------------------------------------------------------
# Choices, stop, length, seed


def test_n2_non_stream(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=COLORS, temperature=0, max_tokens=8, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].message.content and r.choices[1].message.content
    assert r.choices[0].message.content == r.choices[1].message.content  # greedy: both the same
    assert [c.finish_reason for c in r.choices] == ["length", "length"]
    assert r.usage.completion_tokens == 16


def test_n2_usage_counts_the_prompt_once(client: openai.OpenAI) -> None:
    single = client.chat.completions.create(model=MODEL, messages=COLORS, temperature=0, max_tokens=4)
    double = client.chat.completions.create(model=MODEL, messages=COLORS, temperature=0, max_tokens=4, n=2)
    assert double.usage.prompt_tokens == single.usage.prompt_tokens
    assert double.usage.completion_tokens == 2 * single.usage.completion_tokens
    cached = double.usage.prompt_tokens_details.cached_tokens
    assert 0 <= cached <= double.usage.prompt_tokens, "cached_tokens is part of prompt_tokens"


def test_n2_stream(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model=MODEL, messages=COLORS, temperature=0, max_tokens=8, n=2,
                                                 stream=True))
    texts: dict[int, str] = {}
    finishes: dict[int, list[str]] = {}
    roles: dict[int, int] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
            if choice.finish_reason:
                finishes.setdefault(choice.index, []).append(choice.finish_reason)
            if choice.delta.role:
                roles[choice.index] = roles.get(choice.index, 0) + 1
    assert sorted(texts) == [0, 1]
    assert texts[0] and texts[0] == texts[1]
    assert finishes == {0: ["length"], 1: ["length"]}
    assert roles == {0: 1, 1: 1}


def test_stop_string_ends_the_answer(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=STORY, temperature=0, max_tokens=32)
    baseline = client.chat.completions.create(**kwargs).choices[0].message.content
    stop = _word_inside(baseline)
    r = client.chat.completions.create(**kwargs, stop=[stop])
    choice = r.choices[0]
    assert choice.finish_reason == "stop"
    assert stop not in choice.message.content
    assert choice.message.content == baseline[: baseline.index(stop)]
    assert r.usage.completion_tokens < 32


def test_stop_string_in_completion_stream(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, prompt=FRANCE, temperature=0, max_tokens=16)
    baseline = client.completions.create(**kwargs).choices[0].text
    stop = _word_inside(baseline)
    chunks = list(client.completions.create(**kwargs, stop=stop, stream=True))
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == baseline[: baseline.index(stop)]
    assert all(stop not in p for p in pieces)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def _word_inside(text: str) -> str:
    """A word of `text` whose first occurrence is not at its start, so stopping there leaves some text."""
    for word in text.split()[1:]:
        word = word.strip(".,;:!?\"'()")
        if len(word) >= 3 and word.isalpha() and text.index(word) > 0:
            return word
    pytest.fail(f"no usable stop word in the greedy output {text!r}")


def test_max_tokens_gives_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=STORY, temperature=0, max_tokens=5)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5
    c = client.completions.create(model=MODEL, prompt=FRANCE, temperature=0, max_tokens=3)
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 3


def test_seed_is_reproducible(client: openai.OpenAI) -> None:
    def sample(seed: int) -> str:
        r = client.completions.create(model=MODEL, prompt="Once upon a time", temperature=1, max_tokens=12,
                                      seed=seed)
        return r.choices[0].text

    first, second = sample(1234), sample(1234)
    assert first == second
    with ThreadPoolExecutor(4) as pool:
        others = list(pool.map(sample, [1, 2, 3, 4]))
    assert len({first, *others}) > 1, f"five seeds gave one text: {first!r}"


# ---------------------------------------------------------------------------------------------------------------
# Legacy completions: prompt shapes and echo


@pytest.fixture(scope="module")
def france_greedy(client: openai.OpenAI) -> Any:
    return client.completions.create(model=MODEL, prompt=FRANCE, temperature=0, max_tokens=8)


def test_completion_list_of_prompts(client: openai.OpenAI, france_greedy: Any) -> None:
    counting = client.completions.create(model=MODEL, prompt="1, 2, 3, 4,", temperature=0, max_tokens=8)
    r = client.completions.create(model=MODEL, prompt=[FRANCE, "1, 2, 3, 4,"], temperature=0, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == france_greedy.choices[0].text
    assert r.choices[1].text == counting.choices[0].text
    assert r.usage.prompt_tokens == france_greedy.usage.prompt_tokens + counting.usage.prompt_tokens


def test_completion_token_id_prompt(client: openai.OpenAI, france_greedy: Any) -> None:
    r = client.completions.create(model=MODEL, prompt=FRANCE_IDS, temperature=0, max_tokens=8)
    assert len(r.choices) == 1
    assert r.usage.prompt_tokens == len(FRANCE_IDS) == france_greedy.usage.prompt_tokens
    assert r.choices[0].text == france_greedy.choices[0].text


def test_completion_list_of_token_id_prompts(client: openai.OpenAI, france_greedy: Any) -> None:
    r = client.completions.create(model=MODEL, prompt=[FRANCE_IDS, COUNTING_IDS], temperature=0, max_tokens=8)
    assert [c.index for c in r.choices] == [0, 1]
    assert r.choices[0].text == france_greedy.choices[0].text
    assert r.choices[1].text and r.choices[1].text != r.choices[0].text
    assert r.usage.prompt_tokens == len(FRANCE_IDS) + len(COUNTING_IDS)


def test_echo_returns_the_prompt_first(client: openai.OpenAI, france_greedy: Any) -> None:
    r = client.completions.create(model=MODEL, prompt=FRANCE, temperature=0, max_tokens=8, echo=True)
    assert r.choices[0].text == FRANCE + france_greedy.choices[0].text
    ids = client.completions.create(model=MODEL, prompt=FRANCE_IDS, temperature=0, max_tokens=8, echo=True)
    assert ids.choices[0].text == FRANCE + france_greedy.choices[0].text


# ---------------------------------------------------------------------------------------------------------------
# Embeddings


def _norm(vector: list[float]) -> float:
    return math.sqrt(sum(v * v for v in vector))


def test_embeddings_base64_and_float_agree(client: openai.OpenAI, server: GatewayServer) -> None:
    default = client.embeddings.create(model=MODEL, input="The quick brown fox")  # the SDK asks for base64
    floats = client.embeddings.create(model=MODEL, input="The quick brown fox", encoding_format="float")
    vector = default.data[0].embedding
    assert isinstance(vector, list) and len(vector) == EMBEDDING_DIM
    assert _norm(vector) == pytest.approx(1.0, abs=1e-3)
    assert isinstance(floats.data[0].embedding, list) and len(floats.data[0].embedding) == EMBEDDING_DIM
    assert floats.data[0].embedding == pytest.approx(vector, abs=1e-6)
    assert default.usage.prompt_tokens > 0 and default.model == MODEL

    raw = requests.post(server.url + "/v1/embeddings", timeout=60,
                        json={"model": MODEL, "input": "The quick brown fox", "encoding_format": "base64"}).json()
    encoded = raw["data"][0]["embedding"]
    assert isinstance(encoded, str)
    decoded = struct.unpack(f"<{EMBEDDING_DIM}f", base64.b64decode(encoded))
    assert list(decoded) == pytest.approx(vector, abs=1e-6)


def test_embeddings_of_a_list(client: openai.OpenAI) -> None:
    single = client.embeddings.create(model=MODEL, input="The quick brown fox", encoding_format="float")
    r = client.embeddings.create(model=MODEL, input=["The quick brown fox", "A database index"],
                                 encoding_format="float")
    assert [d.index for d in r.data] == [0, 1]
    first, second = r.data[0].embedding, r.data[1].embedding
    assert len(first) == len(second) == EMBEDDING_DIM
    assert first == pytest.approx(single.data[0].embedding, abs=1e-5)
    cosine = sum(a * b for a, b in zip(first, second, strict=True))
    assert cosine < 0.999, "two different texts got the same vector"


# ---------------------------------------------------------------------------------------------------------------
# Logprobs


def test_chat_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=COLORS, temperature=0, max_tokens=8, logprobs=True,
                                       top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        values = [alt.logprob for alt in t.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0 for v in values)
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob, abs=1e-4)
        assert bytes(t.bytes) == t.token.encode()


def test_chat_without_logprobs_has_none(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=COLORS, temperature=0, max_tokens=2)
    assert r.choices[0].logprobs is None


def test_completion_logprobs(client: openai.OpenAI) -> None:
    r = client.completions.create(model=MODEL, prompt=FRANCE, temperature=0, max_tokens=8, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert "".join(lp.tokens) == r.choices[0].text
    assert all(v <= 0 for v in lp.token_logprobs)
    assert all(len(top) == 2 for top in lp.top_logprobs)
    for token, value, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs, strict=True):
        assert max(top.values()) == pytest.approx(value, abs=1e-4) and top[token] == pytest.approx(value, abs=1e-4)
    assert lp.text_offset[0] == len(FRANCE)
    assert all(lp.text_offset[i + 1] == lp.text_offset[i] + len(lp.tokens[i]) for i in range(7))


# ---------------------------------------------------------------------------------------------------------------
# Models, aliases and errors


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=COLORS, max_tokens=4)
    assert info.value.status_code == 404
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"
    with pytest.raises(openai.NotFoundError) as info:
        client.completions.create(model="no-such-model", prompt="hi", max_tokens=4)
    assert info.value.code == "model_not_found"
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model", input="hi")


def test_alias_serves_the_model_under_its_own_name(client: openai.OpenAI) -> None:
    kwargs = dict(messages=COLORS, temperature=0, max_tokens=8)
    aliased = client.chat.completions.create(model=ALIAS, **kwargs)
    direct = client.chat.completions.create(model=MODEL, **kwargs)
    assert aliased.model == ALIAS
    assert direct.model == MODEL
    assert aliased.choices[0].message.content == direct.choices[0].message.content
    chunks = list(client.chat.completions.create(model=ALIAS, stream=True, **kwargs))
    assert {c.model for c in chunks} == {ALIAS}


def test_models_list_and_retrieve(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids and ALIAS in ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    assert client.models.retrieve(ALIAS).id == ALIAS
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("no-such-model")
    assert info.value.status_code == 404


def test_context_overflow(client: openai.OpenAI) -> None:
    long_text = "hello " * (N_CTX + 500)
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long_text}], max_tokens=8)
    assert info.value.status_code == 400
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=long_text, max_tokens=8)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:  # a short prompt that asks for more than the context
        client.completions.create(model=MODEL, prompt=FRANCE, max_tokens=N_CTX)
    assert info.value.code == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as info:  # and the same before a stream's first byte
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": long_text}], max_tokens=8,
                                       stream=True)
    assert info.value.code == "context_length_exceeded"


def test_every_response_has_a_request_id(server: GatewayServer, client: openai.OpenAI) -> None:
    chat = {"model": MODEL, "messages": COLORS, "max_tokens": 2, "temperature": 0}
    responses = [
        requests.post(server.url + "/v1/chat/completions", json=chat, timeout=60),
        requests.post(server.url + "/v1/chat/completions", json={**chat, "stream": True}, timeout=60),
        requests.post(server.url + "/v1/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2},
                      timeout=60),
        requests.post(server.url + "/v1/embeddings", json={"model": MODEL, "input": "Hi"}, timeout=60),
        requests.get(server.url + "/v1/models", timeout=10),
        requests.get(server.url + f"/v1/models/{MODEL}", timeout=10),
        requests.get(server.url + "/health", timeout=10),
        requests.post(server.url + "/v1/chat/completions", json={**chat, "model": "nope"}, timeout=10),
        requests.post(server.url + "/v1/chat/completions", data=b"{", timeout=10),
        requests.get(server.url + "/v1/no-such-path", timeout=10),
    ]
    ids = [r.headers.get("X-Request-Id") for r in responses]
    missing = [(r.request.method, r.request.url, r.status_code) for r in responses if not r.headers.get("X-Request-Id")]
    assert not missing
    assert len(set(ids)) == len(ids)
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=COLORS, max_tokens=2)
    assert raw.request_id and raw.request_id not in ids  # the SDK reads it from `x-request-id`
