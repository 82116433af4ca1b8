"""The same question through every family's own client at temperature 0 gives the same text: one engine, one
template, one sampler, whatever the wire. Chat through all five; raw completion through the four that have one
(Anthropic's Messages API has no raw prompt)."""

from __future__ import annotations

from typing import Iterator

import anthropic
import ollama
import pytest
import requests
from huggingface_hub import InferenceClient

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer

pytestmark = pytest.mark.integration

QUESTION = "What is the capital of France?"
PROMPT = "The three primary colors are"
N = 16


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    with GatewayServer(tmp_path_factory.mktemp("gateway-five"), DEFAULT_CONFIG) as gw:
        yield gw


def test_chat_is_the_same_in_every_family(server: GatewayServer) -> None:
    messages = [{"role": "user", "content": QUESTION}]
    answers = {
        "openai": server.client().chat.completions.create(
            model=MODEL, messages=messages, temperature=0, max_tokens=N).choices[0].message.content,
        "vllm": requests.post(server.url + "/v1/chat/completions", timeout=120, json={
            "model": MODEL, "messages": messages, "temperature": 0, "max_tokens": N, "top_k": -1,
            "repetition_penalty": 1.0, "skip_special_tokens": True}).json()["choices"][0]["message"]["content"],
        "ollama": ollama.Client(host=server.url).chat(
            MODEL, messages=messages, options={"temperature": 0, "num_predict": N}).message.content,
        "anthropic": anthropic.Anthropic(base_url=server.url, api_key="k").messages.create(
            model=MODEL, messages=messages, max_tokens=N, extra_body={"temperature": 0}).content[0].text,
        "tgi": InferenceClient(model=server.url).chat_completion(
            messages, max_tokens=N, temperature=0).choices[0].message.content,
    }
    assert answers["openai"]
    assert all(text == answers["openai"] for text in answers.values()), answers


def test_raw_completion_is_the_same_in_every_family(server: GatewayServer) -> None:
    vllm_text = requests.post(server.url + "/generate", timeout=120, json={
        "prompt": PROMPT, "max_tokens": N, "temperature": 0}).json()["text"][0]
    answers = {
        "openai": server.client().completions.create(
            model=MODEL, prompt=PROMPT, temperature=0, max_tokens=N).choices[0].text,
        "vllm": vllm_text.removeprefix(PROMPT),
        "ollama": ollama.Client(host=server.url).generate(
            MODEL, prompt=PROMPT, raw=True, options={"temperature": 0, "num_predict": N}).response,
        "tgi": InferenceClient(model=server.url).text_generation(PROMPT, max_new_tokens=N, do_sample=False),
    }
    assert answers["openai"]
    assert all(text == answers["openai"] for text in answers.values()), answers
