"""What the families share and what keeps them apart: every stream renderer is a `BaseStream`, which ends once,
and no family's module imports another family's (they share leaf modules instead)."""

from __future__ import annotations

import ast
import importlib
import json
from pathlib import Path

import pytest

from adapters import claude, ollama, openai
from adapters.base import SSE_KEEPALIVE, BaseStream, Frame, RequestContext, TextFrame, sse
from gateway.types import Done, ErrorKind, GatewayError, InternalRequest, OutputEvent, TextDelta, Usage

ADAPTERS = Path(__file__).resolve().parents[2] / "adapters"
FAMILY_OF = {"openai": "openai", "openai_responses": "openai", "openai_responses_render": "openai",
             "vllm": "vllm", "ollama": "ollama", "ollama_models": "ollama", "claude": "claude",
             "tgi": "tgi"}
"""Each family's modules; every other module in adapters/ is a leaf that any family may import."""

CTX = RequestContext(request_id="r1", created=1700000000)
REQ = InternalRequest(kind="chat", model="m", stream=True)


class Echo(BaseStream):
    """The smallest family: one frame per text, the end at Done."""

    def event_frames(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, Done):
            self.closed = True
            return [b"end"]
        return [event.text.encode()] if isinstance(event, TextDelta) else []

    def error_frames(self, err: GatewayError) -> list[Frame]:
        return [err.message.encode()]


class QuietEcho(Echo):
    idle_frame = None


def adapter_imports(path: Path) -> set[str]:
    """The adapters modules that `path` imports, by their short names (`base`, `openai`, ...)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module == "adapters":
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("adapters."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("adapters."))
    return names


@pytest.mark.parametrize("path", sorted(ADAPTERS.glob("*.py")), ids=lambda p: p.stem)
def test_no_module_imports_another_familys_module(path: Path) -> None:
    own = FAMILY_OF.get(path.stem)
    crossing = {name for name in adapter_imports(path) if FAMILY_OF.get(name, own) != own}
    assert crossing == set()


@pytest.mark.parametrize("family", ["openai", "openai_responses", "vllm", "ollama", "claude", "tgi"])
def test_every_stream_renderer_is_a_base_stream(family: str) -> None:
    streams = [route.stream for route in importlib.import_module(f"adapters.{family}").ROUTES if route.stream]
    assert streams and all(isinstance(s, type) and issubclass(s, BaseStream) for s in streams)


def test_a_stream_emits_nothing_after_its_end() -> None:
    stream = Echo(REQ, CTX)
    assert stream.start() == [] and stream.keepalive() == [SSE_KEEPALIVE]
    assert stream.feed(TextDelta(0, "a")) == [b"a"] and stream.feed(Done(Usage())) == [b"end"]
    assert stream.feed(TextDelta(0, "late")) == [] and stream.keepalive() == []
    assert stream.error(GatewayError(ErrorKind.INTERNAL, "x")) == []


def test_an_error_is_the_last_frame() -> None:
    stream = QuietEcho(REQ, CTX)
    assert stream.keepalive() == []
    assert stream.error(GatewayError(ErrorKind.INTERNAL, "boom")) == [b"boom"] and stream.closed
    assert stream.feed(Done(Usage())) == [] and stream.error(GatewayError(ErrorKind.INTERNAL, "again")) == []


TRICKY_TEXTS = ["plain", "", 'a "quote" and \\ backslash', "line\nbreak\ttab", "é ✓ 🦙", "\u2028\x00", "\x00text\x00"]


def test_a_text_frame_renders_what_its_renderer_would() -> None:
    def render(text: str) -> Frame:
        return sse({"id": "x", "choices": [{"index": 0, "delta": {"content": text}}], "usage": None})

    frame = TextFrame(render)
    for text in TRICKY_TEXTS:
        assert frame(text) == render(text)


@pytest.mark.parametrize("make, text_of", [
    (openai.ChatStream, lambda line: json.loads(line[6:])["choices"][0]["delta"]["content"]),
    (openai.CompletionStream, lambda line: json.loads(line[6:])["choices"][0]["text"]),
    (ollama.GenerationStream, lambda line: json.loads(line)["message"]["content"]),
    (claude.MessagesStream, lambda line: json.loads(line.split("data: ")[1])["delta"]["text"]),
])
def test_every_familys_plain_text_frames_carry_the_text_exactly(make, text_of) -> None:
    stream = make(REQ, CTX)
    stream.start()
    if make is claude.MessagesStream:
        stream.feed(TextDelta(0, "opens the block"))
    for text in TRICKY_TEXTS[2:]:  # Anthropic sends no empty delta
        (frame,) = stream.feed(TextDelta(0, text))
        assert text_of(frame.decode().strip()) == text
