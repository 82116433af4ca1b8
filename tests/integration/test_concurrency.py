"""Continuous batching and cancellation, seen from outside: concurrent greedy streams agree and run together,
and a client that goes away gives its sequence back at once (with one sequence, the next request proves it).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import requests

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer

pytestmark = pytest.mark.integration

STORY = [{"role": "user", "content": "Write a long story about a dragon."}]
N_STREAMS = 8
LONG = 4000  # tokens an abandoned request asks for: a long time on any machine if its sequence were not freed
SINGLE_N_CTX = 4096
# SmolLM2's end-of-generation tokens (<|endoftext|>, <|im_end|>, <reponame>); banning them makes the abandoned
# request really run for LONG tokens, so a sequence that is not freed really blocks the follow-up.
NO_EOS = {"0": -100, "2": -100, "4": -100}


# ---------------------------------------------------------------------------------------------------------------
# Eight streams at once


@pytest.fixture(scope="module")
def eight_streams(server: GatewayServer) -> list[dict[str, Any]]:
    """The same greedy story streamed 8 times at once: text, finish reason, and the monotonic times of each
    stream's first content chunk and of its finish chunk."""
    assert DEFAULT_CONFIG["parallel"] >= N_STREAMS
    client = server.client()
    barrier = threading.Barrier(N_STREAMS)

    def run(_: int) -> dict[str, Any]:
        barrier.wait(timeout=30)
        stream = client.chat.completions.create(model=MODEL, messages=STORY, temperature=0, max_tokens=64,
                                                stream=True)
        text, first, finish, reason = "", None, None, None
        for chunk in stream:
            if not chunk.choices:
                continue
            choice = chunk.choices[0]
            if choice.delta.content:
                if first is None:
                    first = time.monotonic()
                text += choice.delta.content
            if choice.finish_reason:
                finish, reason = time.monotonic(), choice.finish_reason
        return {"text": text, "first": first, "finish": finish, "reason": reason}

    with ThreadPoolExecutor(N_STREAMS) as pool:
        return list(pool.map(run, range(N_STREAMS)))


def test_concurrent_streams_run_together(eight_streams: list[dict[str, Any]]) -> None:
    """Batched, not queued: every stream has its first token before any of them has finished."""
    assert [r["reason"] for r in eight_streams] == ["length"] * N_STREAMS, "64 tokens of story should not end early"
    assert all(r["first"] is not None and r["finish"] is not None for r in eight_streams)
    assert max(r["first"] for r in eight_streams) < min(r["finish"] for r in eight_streams)


def test_concurrent_greedy_streams_are_identical(eight_streams: list[dict[str, Any]]) -> None:
    """Identical prompts that arrive together are prefilled once and share their KV cells, so they decode the
    same. (Different prompts are not promised the same text alone and batched: llama.cpp's CPU attention takes
    different kernels for a one-token step and for a batch, and they round differently.)"""
    texts = [r["text"] for r in eight_streams]
    assert texts[0], "the model said nothing"
    different = {i: t for i, t in enumerate(texts) if t != texts[0]}
    assert not different, f"stream 0 said {texts[0]!r}; these differ: {different}"


# ---------------------------------------------------------------------------------------------------------------
# A client that hangs up frees its sequence


@pytest.fixture(scope="module")
def single_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    """One sequence only: while an abandoned request still held it, nothing else could run."""
    config = {**DEFAULT_CONFIG, "parallel": 1, "n_ctx": SINGLE_N_CTX}
    with GatewayServer(tmp_path_factory.mktemp("gateway-single"), config) as gw:
        yield gw
        assert gw.alive(), gw.log_tail()


def _long_body(stream: bool) -> dict[str, Any]:
    # SINGLE_N_CTX holds the chat prompt (~40 tokens) plus LONG completion tokens.
    return {"model": MODEL, "messages": STORY, "max_tokens": LONG, "temperature": 0, "stream": stream,
            "logit_bias": NO_EOS}


def _content_chunk_times(lines: Iterator[bytes], count: int) -> list[float]:
    """Monotonic arrival times of the first `count` SSE chunks that carry content."""
    times: list[float] = []
    for line in lines:
        if not line.startswith(b"data: ") or line == b"data: [DONE]":
            continue
        chunk = json.loads(line[len(b"data: "):])
        if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            times.append(time.monotonic())
            if len(times) == count:
                break
    assert len(times) == count, f"the stream ended after {len(times)} content chunks"
    return times


def _seconds_per_token(server: GatewayServer, n: int = 48) -> float:
    """The decode speed right now, from a short greedy stream (chunks ≈ tokens without stop strings)."""
    with requests.post(server.url + "/v1/chat/completions", stream=True, timeout=120,
                       json={**_long_body(True), "max_tokens": n + 1}) as r:
        assert r.status_code == 200
        times = _content_chunk_times(r.iter_lines(), n)
    return (times[-1] - times[0]) / (n - 1)


def _follow_up(server: GatewayServer, abandoned_rest: float) -> None:
    """A short request on the only sequence must be served in a quarter of the time that the abandoned request
    still had to run: had its sequence not been freed, the follow-up would wait for all of that first."""
    limit = abandoned_rest / 4
    started = time.monotonic()
    try:
        r = requests.post(server.url + "/v1/chat/completions", timeout=(5, limit),
                          json={"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8,
                                "temperature": 0})
    except requests.ReadTimeout:
        pytest.fail(f"the follow-up got no answer in {limit:.1f}s, while the abandoned request had about "
                    f"{abandoned_rest:.1f}s of work left: its sequence was not freed")
    latency = time.monotonic() - started
    assert latency < limit
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] <= 8


def test_dropped_stream_frees_its_sequence(single_server: GatewayServer) -> None:
    r = requests.post(single_server.url + "/v1/chat/completions", json=_long_body(True), stream=True, timeout=120)
    assert r.status_code == 200
    times = _content_chunk_times(r.iter_lines(), 48)
    r.close()  # hang up mid-stream
    per_token = (times[-1] - times[0]) / (len(times) - 1)
    abandoned_rest = per_token * (LONG - len(times))
    _follow_up(single_server, abandoned_rest)


def test_dropped_non_stream_request_frees_its_sequence(single_server: GatewayServer) -> None:
    per_token = _seconds_per_token(single_server)
    abandoned_rest = per_token * LONG
    # Leaving the session closes its socket after the timeout: the client is gone.
    with pytest.raises(requests.ReadTimeout), requests.Session() as session:
        session.post(single_server.url + "/v1/chat/completions", json=_long_body(False), timeout=(5, 1))
    _follow_up(single_server, abandoned_rest)


def test_a_large_embedding_request_does_not_stall_a_running_stream(server):
    """The runner embeds one input at a time in turns with the streams: a stream keeps producing tokens while a
    request with several long inputs is embedded on the same model (before, the stream stood still until every
    input was done)."""
    client = server.client()
    inputs = ["The history of the city of Rome begins with a small village on a hill. " * 20] * 6
    stream = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Tell a story."}],
                                            max_tokens=1500, stream=True,
                                            extra_body={"min_tokens": 1500, "temperature": 0})
    chunks = iter(stream)
    next(chunks)
    done = threading.Event()
    during: list[int] = []

    def embed() -> None:
        client.embeddings.create(model=MODEL, input=inputs)
        done.set()

    thread = threading.Thread(target=embed)
    thread.start()
    for _ in chunks:
        if done.is_set():
            break
        during.append(1)
    thread.join(120)
    stream.close()
    assert done.is_set() and len(during) > 10
