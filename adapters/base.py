"""What every adapter provides to the generic handler, the two stream framings, and `BaseStream`, the part of a
stream renderer every family shares.

An adapter is a list of `Route`s. The generic handler in `gateway/routes.py` reads the body, calls `parse`,
runs the request through the service and then either calls `render` (a finished result) or drives a
`StreamRenderer` (one event at a time). Adapters never do I/O: ids and timestamps come in through `RequestContext`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Protocol

from gateway.types import GatewayError, InternalRequest, OutputEvent, Result, invalid


@dataclass
class RequestContext:
    """Everything an adapter may know about the HTTP request besides its body, and the values it must not
    invent itself (the id and the clock), so that parsing and rendering stay pure and testable."""

    request_id: str
    created: int
    headers: dict[str, str] = field(default_factory=dict)
    path_params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    method: str = "POST"
    server_version: str = ""
    reasoning_field: str = "reasoning_content"  # OpenAI-style reasoning key: reasoning_content, reasoning or both


Frame = bytes


class StreamRenderer(Protocol):
    """Turns output events into wire frames for one streamed response; keeps whatever block/index state its
    family needs. `error` renders a failure that happens after the headers went out. Every family's renderer
    builds on `BaseStream`."""

    def start(self) -> list[Frame]: ...

    def feed(self, event: OutputEvent) -> list[Frame]: ...

    def error(self, err: GatewayError) -> list[Frame]: ...

    def keepalive(self) -> list[Frame]: ...


Parse = Callable[[Any, RequestContext], InternalRequest]
Accepts = Callable[[Any, RequestContext], bool]
Render = Callable[[Result, InternalRequest, RequestContext], Any]
RenderError = Callable[[GatewayError], "tuple[int, Any]"]
MakeStreamRenderer = Callable[[InternalRequest, RequestContext], StreamRenderer]


@dataclass
class Route:
    """One endpoint of one family. `body` says how the handler reads the request body: 'json' (must be an
    object), 'none' (GET/HEAD). `media_type` is the content type of `stream` responses. `render` returns a
    JSON-able value, or a `str` sent as text/plain.

    Where families share a path and method (see DESIGN.md), each route but one has `accepts`, a test on the
    parsed body (None for 'none' routes) and the context; the first route that accepts serves the request and
    the route without `accepts` takes the rest. A `public` route (health, version) answers without an API key, so
    probes and load balancers work; every other route checks the key before its body is parsed."""

    method: str
    path: str
    family: str
    parse: Parse
    render: Render
    render_error: RenderError
    stream: MakeStreamRenderer | None = None
    media_type: str = "text/event-stream"
    body: Literal["json", "none"] = "json"
    name: str = ""
    extra_headers: dict[str, str] = field(default_factory=dict)
    accepts: Accepts | None = None
    public: bool = False


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))  # `json.dumps` with options builds one per call


def compact_json(obj: Any) -> str:
    return _COMPACT.encode(obj)


def sse(data: Any, event: str | None = None) -> Frame:
    """One Server-Sent Event, always ended by the blank line (clients drop a last event without it)."""
    payload = data if isinstance(data, str) else compact_json(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


SSE_KEEPALIVE: Frame = b": ping\n\n"


class TextFrame:
    """A stream's frame for a piece of text, when nothing else in it changes from token to token (the id, the
    model, the choice's index). It is rendered once, with a marker where the text goes, by the same code that
    renders any other frame, and split around the marker; each token's frame is then the two halves around the
    text's JSON. At one stream a token's whole journey through the API process costs about as much as the
    decode step it waits for takes from llama.cpp's threads, and building and encoding the frame's object was
    a large share of it."""

    _MARK = "\x00text\x00"

    def __init__(self, render: Callable[[str], Frame]):
        self._head, self._tail = render(self._MARK).split(compact_json(self._MARK).encode())

    def __call__(self, text: str) -> Frame:
        return self._head + _COMPACT.encode(text).encode() + self._tail


def ndjson(obj: Any) -> Frame:
    """One NDJSON line: compact, newline-terminated, never a blank line."""
    return (compact_json(obj) + "\n").encode()


class BaseStream:
    """What every family's `StreamRenderer` shares: a stream ends once, and emits nothing after its end.

    The end is the family's last frame (a subclass sets `closed` when it sends it) or an error. After it, the
    routes loop may still hand over events (TGI ends at its choice's end, before `Done`) or an error (the
    service can fail after the last frame went out), and a frame after the terminator would read as a second
    answer or as garbage. A subclass writes only its frames: `event_frames` for an event, `error_frames` for a
    failure, and `idle_frame` (or `idle_frames`, where its keepalive depends on the stream's state) for a quiet
    moment."""

    idle_frame: Frame | None = SSE_KEEPALIVE
    """What a keepalive sends: an SSE comment, which every SSE client skips. NDJSON streams send nothing (None),
    because their clients read every line as an object."""

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        """Takes what a `MakeStreamRenderer` is given, so a stream that keeps no state needs no `__init__`."""
        self.closed = False
        self._text_frames: dict[Any, TextFrame] = {}

    def text_frame(self, key: Any, render: Callable[[str], Frame], text: str) -> Frame:
        """The frame `render(text)` would make, from the `TextFrame` made by `render` the first time `key` (a
        choice, a content block) had text."""
        frame = self._text_frames.get(key)
        if frame is None:
            frame = self._text_frames[key] = TextFrame(render)
        return frame(text)

    def start(self) -> list[Frame]:
        return []

    def feed(self, event: OutputEvent) -> list[Frame]:
        return [] if self.closed else self.event_frames(event)

    def keepalive(self) -> list[Frame]:
        return [] if self.closed else self.idle_frames()

    def error(self, err: GatewayError) -> list[Frame]:
        """The failure ends the stream, so the family's error frames are its last."""
        if self.closed:
            return []
        self.closed = True
        return self.error_frames(err)

    def event_frames(self, event: OutputEvent) -> list[Frame]:
        raise NotImplementedError

    def error_frames(self, err: GatewayError) -> list[Frame]:
        raise NotImplementedError

    def idle_frames(self) -> list[Frame]:
        return [] if self.idle_frame is None else [self.idle_frame]


# ---------------------------------------------------------------------------------------------------------------
# Small validation helpers shared by every family: the message names the field and what was expected.


def expect_object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object.")
    return body


def get_typed(body: dict[str, Any], key: str, types: type | tuple[type, ...], what: str,
              default: Any = None, required: bool = False, prefix: str = "") -> Any:
    """Read `body[key]`, checking its type; None counts as absent. `what` names the expected type in the message."""
    name = prefix + key
    value = body.get(key)
    if value is None:
        if required:
            raise invalid(f"Missing required parameter: `{name}`.", name)
        return default
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise invalid(f"Invalid type for `{name}`: expected {what}, got a boolean.", name)
    if not isinstance(value, types):
        raise invalid(f"Invalid type for `{name}`: expected {what}, got {type_name(value)}.", name)
    return value


def get_number(body: dict[str, Any], key: str, lo: float | None = None, hi: float | None = None,
               integer: bool = False, prefix: str = "") -> Any:
    """Read an optional number within [lo, hi]; booleans are not numbers."""
    name = prefix + key
    value = get_typed(body, key, int if integer else (int, float), "an integer" if integer else "a number",
                      prefix=prefix)
    if value is None:
        return None
    if lo is not None and value < lo or hi is not None and value > hi:
        bounds = f"between {lo} and {hi}" if lo is not None and hi is not None else (
            f"at least {lo}" if lo is not None else f"at most {hi}")
        raise invalid(f"Invalid value for `{name}`: expected a number {bounds}, got {value}.", name)
    return value


def is_token(value: Any) -> bool:
    """A token id: a non-negative integer, and not a boolean (JSON `true` decodes to a Python int)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def object_items(value: Any, field: str, index: str = "{}[{}]") -> list[tuple[str, dict[str, Any]]]:
    """`value` as an array of objects (None: empty), each with its name for error messages: `index` formats
    the field and position (`tools[0]` in OpenAI's words, `tools.0` in Anthropic's). Anything else is a 400
    naming the field or the item."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `{field}`: expected an array, got {type_name(value)}.", field)
    items = []
    for i, item in enumerate(value):
        name = index.format(field, i)
        if not isinstance(item, dict):
            raise invalid(f"Invalid type for `{name}`: expected an object, got {type_name(item)}.", name)
        items.append((name, item))
    return items


def type_name(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", int: "an integer", float: "a number",
            bool: "a boolean"}.get(type(value), type(value).__name__)
