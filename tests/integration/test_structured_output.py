"""Structured output through every family's own field, against the real server and the embedded model: JSON
Schema (validated with `jsonschema`), JSON mode, regex, choice and raw GBNF; and the 400s for what cannot be
enforced, in each family's error shape.

Every schema bounds its strings and arrays, so a valid document always fits the token budget; a `length` finish
fails the test with the text it got, rather than passing on a document that was cut off.
"""

from __future__ import annotations

import json
import re
from typing import Any, Literal

import anthropic
import jsonschema
import ollama
import openai
import pydantic
import pytest
import requests
from huggingface_hub import InferenceClient

from tests.integration.support import MODEL, GatewayServer

pytestmark = pytest.mark.integration

GREEDY = {"temperature": 0}
BUDGET = 300
ASK_PERSON = [{"role": "user", "content": "Describe Alice, a 34 year old admin living in Berlin, as JSON."}]
PERSON: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 20},
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "role": {"type": "string", "enum": ["admin", "user", "guest"]},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 20},
                           "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 10}, "maxItems": 3},
    },
    "required": ["name", "age", "role", "address", "tags"],
    "additionalProperties": False,
}
# The per-family tests use a small schema (the tiny model on a busy CPU is slow); the nested one is OpenAI's.
WEATHER: dict[str, Any] = {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 1, "maxLength": 20},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "degrees": {"type": "integer", "minimum": -50, "maximum": 60}},
    "required": ["city", "unit", "degrees"],
    "additionalProperties": False,
}
ASK_WEATHER = [{"role": "user", "content": "It is 21 degrees celsius in Rome. Give the weather as JSON."}]
ASK_OBJECT = [{"role": "user", "content": "Return a JSON object with the keys name and age for Bob, who is 30."}]
CODE = "[A-Z]{3}-[0-9]{4}"
ASK_CODE = [{"role": "user", "content": "Give me a product code."}]
COLORS = ["red", "green", "blue"]
ASK_COLOR = [{"role": "user", "content": "What color is the sky?"}]
UNSUPPORTED = {"type": "object", "properties": {"a": {"type": "string"}}, "not": {"required": ["a"]}}


@pytest.fixture(scope="module")
def client(server: GatewayServer) -> openai.OpenAI:
    return server.client()


def complete(finish: str | None, text: str | None, done: tuple[str, ...] = ("stop",)) -> str:
    """The text, once it is sure the document was finished rather than cut off."""
    if finish == "length":
        pytest.fail(f"the constrained document did not complete within the token budget: {text!r}")
    assert finish in done, f"finish {finish!r}: {text!r}"
    assert text, "no text"
    return text


def person(text: str, schema: dict[str, Any] = PERSON) -> dict[str, Any]:
    doc = json.loads(text)
    jsonschema.validate(doc, schema)
    return doc


def weather(text: str) -> dict[str, Any]:
    return person(text, WEATHER)


def chat(server: GatewayServer, body: dict[str, Any]) -> requests.Response:
    body = {"model": MODEL, "temperature": 0, **body}
    return requests.post(server.url + "/v1/chat/completions", json=body, timeout=120)


def chat_text(server: GatewayServer, body: dict[str, Any]) -> str:
    r = chat(server, body)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    return complete(choice["finish_reason"], choice["message"]["content"])


# ---------------------------------------------------------------------------------------------------------------
# 4. JSON Schema and JSON mode


def test_openai_json_schema(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, messages=ASK_PERSON, temperature=0, max_tokens=BUDGET,
                                       response_format={"type": "json_schema", "json_schema": {
                                           "name": "person", "schema": PERSON, "strict": True}})
    person(complete(r.choices[0].finish_reason, r.choices[0].message.content))


class Address(pydantic.BaseModel):
    city: str = pydantic.Field(max_length=20)
    zip: str = pydantic.Field(pattern=r"^[0-9]{5}$")


class Person(pydantic.BaseModel):
    name: str = pydantic.Field(min_length=1, max_length=20)
    age: int = pydantic.Field(ge=18, le=99)
    role: Literal["admin", "user", "guest"]
    address: Address
    tags: list[str] = pydantic.Field(max_length=3)


def test_openai_parse_with_a_pydantic_model(client: openai.OpenAI) -> None:
    """The SDK's `parse()` sends the strict schema (with $defs/$ref) and parses the answer into the model."""
    r = client.chat.completions.parse(model=MODEL, messages=ASK_PERSON, temperature=0, max_tokens=BUDGET,
                                      response_format=Person)
    complete(r.choices[0].finish_reason, r.choices[0].message.content)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Person) and 18 <= parsed.age <= 99 and len(parsed.tags) <= 3


def test_openai_json_object_mode(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model=MODEL, temperature=0, max_tokens=BUDGET,
                                       response_format={"type": "json_object"}, messages=ASK_OBJECT)
    text = complete(r.choices[0].finish_reason, r.choices[0].message.content)
    assert isinstance(json.loads(text), dict), text


OLLAMA_OPTIONS = {"temperature": 0, "seed": 3, "num_predict": BUDGET}


def test_ollama_format_schema(server: GatewayServer) -> None:
    olla = ollama.Client(host=server.url, timeout=120)
    r = olla.chat(model=MODEL, messages=ASK_WEATHER, format=WEATHER, options=OLLAMA_OPTIONS)
    weather(complete(r.done_reason, r.message.content))
    r = olla.generate(model=MODEL, prompt=ASK_WEATHER[0]["content"], format=WEATHER, options=OLLAMA_OPTIONS)
    weather(complete(r.done_reason, r.response))


def test_ollama_format_json(server: GatewayServer) -> None:
    olla = ollama.Client(host=server.url, timeout=120)
    r = olla.chat(model=MODEL, messages=ASK_OBJECT, format="json", options=OLLAMA_OPTIONS)
    assert isinstance(json.loads(complete(r.done_reason, r.message.content)), dict)


def test_anthropic_output_config_format(server: GatewayServer) -> None:
    claude = anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0, timeout=120)
    msg = claude.messages.create(model=MODEL, max_tokens=BUDGET, messages=ASK_WEATHER, extra_body=GREEDY,
                                 output_config={"format": {"type": "json_schema", "schema": WEATHER}})
    assert [b.type for b in msg.content] == ["text"], msg.content
    weather(complete(msg.stop_reason, msg.content[0].text, done=("end_turn",)))


@pytest.mark.parametrize("field", [{"guided_json": WEATHER}, {"structured_outputs": {"json": WEATHER}},
                                   {"guided_json": json.dumps(WEATHER)}], ids=["guided_json", "structured_outputs",
                                                                               "guided_json_string"])
def test_vllm_json(server: GatewayServer, field: dict[str, Any]) -> None:
    weather(chat_text(server, {"messages": ASK_WEATHER, "max_tokens": BUDGET, **field}))


def test_vllm_json_object(server: GatewayServer) -> None:
    text = chat_text(server, {"messages": ASK_OBJECT, "max_tokens": BUDGET,
                              "structured_outputs": {"json_object": True}})
    assert isinstance(json.loads(text), dict), text


def test_tgi_generate_json_grammar(server: GatewayServer) -> None:
    body = {"inputs": ASK_WEATHER[0]["content"],
            "parameters": {"grammar": {"type": "json", "value": WEATHER}, "max_new_tokens": BUDGET, "details": True}}
    r = requests.post(server.url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    out = r.json()
    weather(complete(out["details"]["finish_reason"], out["generated_text"], done=("eos_token", "stop_sequence")))


def test_tgi_chat_response_format(server: GatewayServer) -> None:
    """huggingface_hub rewrites an OpenAI json_schema into TGI's {"type": "json_object", "value": schema}."""
    hf = InferenceClient(base_url=server.url, timeout=120)
    out = hf.chat_completion(ASK_WEATHER, model=MODEL, max_tokens=BUDGET, temperature=0, response_format={
        "type": "json_schema", "json_schema": {"name": "weather", "schema": WEATHER}})
    weather(complete(out.choices[0].finish_reason, out.choices[0].message.content))


# ---------------------------------------------------------------------------------------------------------------
# 5. Regex, choice and grammar


@pytest.mark.parametrize("field", [{"guided_regex": CODE}, {"structured_outputs": {"regex": CODE}}],
                         ids=["guided_regex", "structured_outputs"])
def test_vllm_regex(server: GatewayServer, field: dict[str, Any]) -> None:
    text = chat_text(server, {"messages": ASK_CODE, "max_tokens": 30, **field})
    assert re.fullmatch(CODE, text), text


def test_vllm_regex_on_completions(server: GatewayServer) -> None:
    body = {"model": MODEL, "prompt": "Product code:", "max_tokens": 30, "temperature": 0, "guided_regex": CODE}
    r = requests.post(server.url + "/v1/completions", json=body, timeout=120)
    assert r.status_code == 200, r.text
    choice = r.json()["choices"][0]
    assert re.fullmatch(CODE, complete(choice["finish_reason"], choice["text"])), choice


@pytest.mark.parametrize("field", [{"guided_choice": COLORS}, {"structured_outputs": {"choice": COLORS}}],
                         ids=["guided_choice", "structured_outputs"])
@pytest.mark.parametrize("temperature", [0, 1.5])
def test_vllm_choice(server: GatewayServer, field: dict[str, Any], temperature: float) -> None:
    text = chat_text(server, {"messages": ASK_COLOR, "max_tokens": 20, "temperature": temperature, "seed": 5,
                              **field})
    assert text in COLORS, text


def test_vllm_guided_grammar(server: GatewayServer) -> None:
    text = chat_text(server, {"messages": [{"role": "user", "content": "Is water wet?"}], "max_tokens": 10,
                              "guided_grammar": 'root ::= "yes" | "no"'})
    assert text in ("yes", "no"), text


def test_tgi_generate_regex_grammar(server: GatewayServer) -> None:
    body = {"inputs": "Product code:", "parameters": {"grammar": {"type": "regex", "value": CODE},
                                                      "max_new_tokens": 30}}
    r = requests.post(server.url + "/generate", json=body, timeout=120)
    assert r.status_code == 200, r.text
    assert re.fullmatch(CODE, r.json()["generated_text"]), r.text


def test_huggingface_hub_text_generation_regex(server: GatewayServer) -> None:
    hf = InferenceClient(base_url=server.url, timeout=120)
    text = hf.text_generation("Product code:", grammar={"type": "regex", "value": CODE}, max_new_tokens=30)
    assert re.fullmatch(CODE, text), text
    streamed = "".join(hf.text_generation("Product code:", grammar={"type": "regex", "value": CODE},
                                          max_new_tokens=30, stream=True))
    assert re.fullmatch(CODE, streamed), streamed


def test_openai_streamed_regex_holds(server: GatewayServer) -> None:
    """The constraint binds the stream too: the concatenated deltas match."""
    client = server.client()
    chunks = list(client.chat.completions.create(model=MODEL, messages=ASK_CODE, max_tokens=30, temperature=0,
                                                 stream=True, extra_body={"guided_regex": CODE}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert re.fullmatch(CODE, text), text


# ---------------------------------------------------------------------------------------------------------------
# 6. What cannot be enforced is a 400 naming it


def test_openai_refuses_not(server: GatewayServer, client: openai.OpenAI) -> None:
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": UNSUPPORTED}}
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=ASK_PERSON, max_tokens=10, response_format=fmt)
    assert "`not`" in str(info.value)
    r = chat(server, {"messages": ASK_PERSON, "max_tokens": 10, "response_format": fmt})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert "`not`" in error["message"] and error["type"] == "invalid_request_error"
    assert error["param"] and error["param"].endswith("not"), error


def test_an_inexpressible_tool_schema_is_not_refused(server: GatewayServer) -> None:
    """By design a tool's schema we cannot express does not fail the agent's whole request: that tool's
    arguments are held only to be a JSON object, and the server log says so."""
    tool = {"type": "function", "function": {"name": "odd_tool", "parameters": {
        "type": "object", "properties": {"a": {"type": "string"}}, "if": {"required": ["a"]}}}}
    r = chat(server, {"messages": ASK_PERSON, "max_tokens": 8, "tools": [tool], "tool_choice": "required"})
    assert r.status_code == 200, r.text
    log = server.log_path.read_text(errors="replace")
    assert "'odd_tool': arguments are only held to be a JSON object" in log and "`if`" in log, server.log_tail()


def test_anthropic_refuses_not(server: GatewayServer) -> None:
    claude = anthropic.Anthropic(base_url=server.url, api_key="test", max_retries=0, timeout=120)
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(model=MODEL, max_tokens=10, messages=ASK_PERSON,
                               output_config={"format": {"type": "json_schema", "schema": UNSUPPORTED}})
    assert info.value.status_code == 400
    body = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error", body
    assert "`not`" in body["error"]["message"], body


def test_ollama_refuses_not_and_unique_items(server: GatewayServer) -> None:
    olla = ollama.Client(host=server.url, timeout=120)
    with pytest.raises(ollama.ResponseError) as info:
        olla.chat(model=MODEL, messages=ASK_PERSON, format=UNSUPPORTED)
    assert info.value.status_code == 400 and "`not`" in info.value.error, info.value.error
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    r = requests.post(server.url + "/api/chat", timeout=120, json={
        "model": MODEL, "messages": ASK_PERSON, "format": schema, "stream": False})
    assert r.status_code == 400 and set(r.json()) == {"error"}, r.text
    assert "uniqueItems" in r.json()["error"], r.text


@pytest.mark.parametrize("field", [{"guided_grammar": "root ::= ("}, {"structured_outputs": {"grammar": "x ::= \"a\""}},
                                   {"guided_regex": "[A-Z"}],
                         ids=["unbalanced", "no_root", "bad_regex"])
def test_vllm_refuses_an_invalid_grammar(server: GatewayServer, field: dict[str, Any]) -> None:
    r = chat(server, {"messages": ASK_CODE, "max_tokens": 10, **field})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"], error
    assert error["param"] and error["param"].split(".")[-1] in ("guided_grammar", "grammar", "guided_regex"), error


def test_tgi_refuses_not(server: GatewayServer) -> None:
    body = {"inputs": "x", "parameters": {"grammar": {"type": "json", "value": UNSUPPORTED}, "max_new_tokens": 5}}
    r = requests.post(server.url + "/generate", json=body, timeout=120)
    assert r.status_code == 422, r.text
    assert r.json()["error_type"] == "validation" and "`not`" in r.json()["error"], r.text
