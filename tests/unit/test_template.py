"""Chat-template rendering: golden strings for the real SmolLM2 template, message conversion, Transformers helpers."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from gateway.backends.prompts import PromptBuilder
from gateway.engine.template import DEFAULT_TEMPLATE, ChatTemplate, tojson
from gateway.models.embedded import embedded_model_path
from gateway.models.gguf import read_metadata
from gateway.models.registry import ModelSpec
from gateway.types import ErrorKind, GatewayError, InternalRequest, Message, Tool, ToolCall

DUMP = "{{ messages | tojson }}|{{ tools | tojson }}"


@pytest.fixture(scope="module")
def smollm2() -> ChatTemplate:
    path = embedded_model_path()
    assert path is not None
    source = read_metadata(path).chat_template
    assert source is not None
    return ChatTemplate(source, bos_token="<|im_start|>", eos_token="<|im_end|>")


def test_smollm2_system_and_user(smollm2: ChatTemplate) -> None:
    messages = [Message("system", "You are terse."), Message("user", "Hi there")]
    assert smollm2.render(messages) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi there<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_smollm2_adds_its_own_system_prompt(smollm2: ChatTemplate) -> None:
    rendered = smollm2.render([Message("user", "Hi")], add_generation_prompt=False)
    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
    )


def test_default_template_is_chatml() -> None:
    rendered = ChatTemplate(DEFAULT_TEMPLATE).render([Message("user", "a"), Message("assistant", None)])
    assert rendered == "<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>assistant\n"


def test_message_conversion() -> None:
    messages = [
        Message("user", "weather?"),
        Message(
            "assistant",
            None,
            tool_calls=[
                ToolCall("call_1", "get_weather", '{"city": "Zürich", "days": [1, 2]}'),
                ToolCall("call_2", "raw", "not json"),
            ],
            thinking="look it up",
        ),
        Message("tool", "sunny", tool_call_id="call_1", name="get_weather"),
    ]
    tools = [Tool("get_weather", "Weather by city", {"type": "object", "properties": {"city": {"type": "string"}}})]
    dumped_messages, dumped_tools = ChatTemplate(DUMP).render(messages, tools).split("|")
    assert json.loads(dumped_messages) == [
        {"role": "user", "content": "weather?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Zürich", "days": [1, 2]}},
                },
                {"id": "call_2", "type": "function", "function": {"name": "raw", "arguments": "not json"}},
            ],
            "reasoning_content": "look it up",
        },
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1", "name": "get_weather"},
    ]
    assert json.loads(dumped_tools) == [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather by city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]


def test_no_tools_is_none() -> None:
    template = ChatTemplate("{{ tools is none }}")
    assert template.render([], tools=None) == "True"
    assert template.render([], tools=[]) == "True"


def test_special_tokens_and_extra_variables() -> None:
    source = "{{ bos_token }}{{ enable_thinking }}{% if add_generation_prompt %}>{% endif %}{{ eos_token }}"
    assert ChatTemplate(source, "<s>", "</s>").render([], enable_thinking=False) == "<s>False></s>"
    assert ChatTemplate(source).render([], add_generation_prompt=False, enable_thinking=True) == "True"


def test_trim_blocks_and_loopcontrols() -> None:
    source = "{% for m in messages %}\n  {% if loop.index > 1 %}{% break %}{% endif %}\n{{ m.content }}\n{% endfor %}"
    assert ChatTemplate(source).render([Message("user", "a"), Message("user", "b")]) == "a\n"


def test_raise_exception_is_an_invalid_request() -> None:
    template = ChatTemplate(
        "{% if messages[0].role != 'user' %}{{ raise_exception('Conversation must start with user') }}{% endif %}ok"
    )
    assert template.render([Message("user", "hi")]) == "ok"
    with pytest.raises(GatewayError) as info:
        template.render([Message("assistant", "hi")])
    err = info.value
    assert err.kind is ErrorKind.INVALID_REQUEST
    assert err.param == "messages"
    assert err.message == "The chat template of this model rejected the messages: Conversation must start with user"


def test_the_message_a_template_refuses_is_named() -> None:
    alternating = ("{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}"
                   "{{ raise_exception('roles must alternate') }}{% endif %}{{ m.content }}{% endfor %}")
    with pytest.raises(GatewayError) as info:
        ChatTemplate(alternating).render([Message("user", "a"), Message("assistant", "b"), Message("assistant", "c"),
                                          Message("user", "d")])
    assert info.value.param == "messages[2]"
    assert info.value.message == "The chat template of this model rejected messages[2]: roles must alternate"


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages[0].content.nope.deeper }}",  # UndefinedError
        "{{ messages[0].content + 1 }}",  # TypeError
        "{{ messages.append(1) }}",  # SecurityError: the environment is immutable
        "{{ 1 / 0 }}",
    ],
)
def test_render_failures_are_invalid_requests(source: str) -> None:
    with pytest.raises(GatewayError) as info:
        ChatTemplate(source).render([Message("user", "hi")])
    assert info.value.kind is ErrorKind.INVALID_REQUEST


def test_syntax_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="invalid chat template"):
        ChatTemplate("{% for m in messages %}")


def test_strftime_now() -> None:
    rendered = ChatTemplate("{{ strftime_now('%Y-%m-%d') }}").render([])
    assert rendered == datetime.now().strftime("%Y-%m-%d")


def test_tojson_matches_transformers() -> None:
    value = {"b": {"städte": ["Zürich", "東京"], "html": "<a & b>"}, "a": [1, 2.5, None, True]}
    # Transformers' filter is json.dumps with ensure_ascii=False: no HTML escaping, key order kept.
    assert tojson(value) == '{"b": {"städte": ["Zürich", "東京"], "html": "<a & b>"}, "a": [1, 2.5, null, true]}'
    rendered = ChatTemplate("{{ messages[0] | tojson(indent=2, sort_keys=true) }}").render([Message("user", "é")])
    assert rendered == json.dumps({"role": "user", "content": "é"}, ensure_ascii=False, indent=2, sort_keys=True)
    compact = ChatTemplate("{{ messages[0] | tojson(separators=(',', ':')) }}").render([Message("user", "ü")])
    assert compact == '{"role":"user","content":"ü"}'


class _BrokenTemplateModel:
    """A model file whose chat template does not compile (anyone can write such a GGUF or pull one)."""

    bos_text = eos_text = ""

    def chat_template(self) -> str:
        return "{% for m in messages %}{{ m.content }"


def test_a_template_that_does_not_compile_is_a_4xx_naming_the_model() -> None:
    req = InternalRequest(kind="chat", model="odd", messages=[Message("user", "hi")])
    with pytest.raises(GatewayError) as info:
        PromptBuilder().render_chat(req, ModelSpec("odd", "/m.gguf"), _BrokenTemplateModel())
    assert info.value.kind == ErrorKind.INVALID_REQUEST and "`odd`" in info.value.message
    assert info.value.param == "model"
