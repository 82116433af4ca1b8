"""LangChain's chat models for three families against the real server and model: ChatAnthropic (Messages API),
ChatOllama (`/api/chat`) and ChatOpenAI (Chat Completions), each through `invoke` and `stream`, which parse the
wire with their own code (usage, stop reasons, chunk merging) rather than with the official SDKs' helpers alone."""

from __future__ import annotations

from typing import Any, Callable, Iterator

import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI

from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer

pytestmark = pytest.mark.integration

CLAUDE = "claude-opus-4-6"
QUESTION = "Name three colors."
MAX_TOKENS = 24


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    config = {**DEFAULT_CONFIG, "aliases": {**DEFAULT_CONFIG["aliases"], "claude-*": MODEL}}
    with GatewayServer(tmp_path_factory.mktemp("gateway-langchain"), config) as gw:
        yield gw
        if not gw.alive():
            pytest.fail(f"the gateway died during the module's tests:\n{gw.log_tail()}")


def anthropic_model(url: str) -> ChatAnthropic:
    return ChatAnthropic(model=CLAUDE, base_url=url, api_key="test", max_tokens=MAX_TOKENS, temperature=0,
                         max_retries=0, timeout=120)


def ollama_model(url: str) -> ChatOllama:
    return ChatOllama(model=MODEL, base_url=url, temperature=0, num_predict=MAX_TOKENS)


def openai_model(url: str) -> ChatOpenAI:
    """`stream_usage` asks for the final usage chunk (`stream_options.include_usage`)."""
    return ChatOpenAI(model=MODEL, base_url=url + "/v1", api_key="test", max_tokens=MAX_TOKENS, temperature=0,
                      max_retries=0, timeout=120, stream_usage=True)


# (make the model, the name it reports, where it puts why the answer ended, the values that key may take)
CLIENTS: dict[str, tuple[Callable[[str], BaseChatModel], str, str, tuple[str, ...]]] = {
    "anthropic": (anthropic_model, CLAUDE, "stop_reason", ("end_turn", "max_tokens")),
    "ollama": (ollama_model, MODEL, "done_reason", ("stop", "length")),
    "openai": (openai_model, MODEL, "finish_reason", ("stop", "length")),
}


@pytest.fixture(params=list(CLIENTS))
def client(request: pytest.FixtureRequest, server: GatewayServer) -> tuple[BaseChatModel, str, str, tuple[str, ...]]:
    make, name, finish_key, finishes = CLIENTS[request.param]
    return make(server.url), name, finish_key, finishes


def merged(chunks: list[AIMessageChunk]) -> AIMessageChunk:
    """The chunks added up the way LangChain does it for a caller, which is where usage and metadata meet."""
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def test_invoke(client: tuple[BaseChatModel, str, str, tuple[str, ...]]) -> None:
    model, name, finish_key, finishes = client
    answer = model.invoke(QUESTION)
    assert isinstance(answer, AIMessage) and answer.text
    assert answer.response_metadata["model_name"] == name
    assert answer.response_metadata[finish_key] in finishes
    usage: dict[str, Any] = answer.usage_metadata or {}
    assert usage["input_tokens"] > 0 and 0 < usage["output_tokens"] <= MAX_TOKENS
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_stream_matches_invoke(client: tuple[BaseChatModel, str, str, tuple[str, ...]]) -> None:
    model, name, finish_key, finishes = client
    whole = model.invoke(QUESTION)
    chunks = list(model.stream(QUESTION))
    assert len(chunks) > 2 and all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    total = merged(chunks)
    assert total.text == whole.text
    assert total.response_metadata["model_name"] == name
    assert total.response_metadata[finish_key] == whole.response_metadata[finish_key]
    assert total.usage_metadata is not None and whole.usage_metadata is not None
    assert total.usage_metadata["output_tokens"] == whole.usage_metadata["output_tokens"]
    assert total.usage_metadata["input_tokens"] == whole.usage_metadata["input_tokens"]
