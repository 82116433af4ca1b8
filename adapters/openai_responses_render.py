"""OpenAI's Responses API, the answer side: the Response object, its output items and the named-event stream
(shared/API-SPEC.md §1.11).

Finished answers, stored answers read back and the stream's last event are all built by `response_object` from
the same item helpers, so what `GET /v1/responses/<id>` returns is what `POST` answered. The stream keeps the
order the SDK's `responses.stream()` helper checks: `response.created` first, every item added before its
deltas and done before `response.completed`, one `sequence_number` counting every event from 0, and no `[DONE]`.
"""

from __future__ import annotations

from typing import Any

from adapters.base import BaseStream, Frame, RequestContext, sse
from adapters.openai_shapes import render_chat_logprobs, render_error
from gateway.types import (
    Choice,
    ChoiceDone,
    Deleted,
    Done,
    GatewayError,
    GenerationResult,
    InternalRequest,
    OutputEvent,
    StoredResponse,
    TextDelta,
    ThinkingDelta,
    TokenLogprob,
    ToolCall,
    ToolCallDelta,
    Usage,
)

ECHOED = ("instructions", "max_output_tokens", "model", "parallel_tool_calls", "previous_response_id", "reasoning",
          "store", "temperature", "text", "tool_choice", "tools", "top_logprobs", "top_p", "truncation", "user",
          "metadata")
"""The request's settings a Response object repeats; the parser puts them in
`req.render["response"]` (with `created_at`), which is also what a stored answer keeps."""


def render_create(result: GenerationResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return finished_object(req.response.id, req.render, result.choices[0], result.usage)


def render_stored(result: StoredResponse, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return finished_object(result.id, result.render, result.result.choices[0], result.result.usage)


def render_deleted(result: Deleted, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    return {"id": result.id, "object": "response", "deleted": True}


def finished_object(response_id: str, render: dict[str, Any], choice: Choice, usage: Usage) -> dict[str, Any]:
    """A whole answer: reasoning, then the message (present even when empty, unless the answer is only calls),
    then the calls."""
    status = "incomplete" if choice.finish_reason == "length" else "completed"
    output: list[dict[str, Any]] = []
    if choice.thinking:
        output.append(reasoning_item(item_id("rs", response_id, len(output)), choice.thinking))
    if choice.text or not choice.tool_calls:
        part = text_part(choice.text, logprobs(choice.logprobs))
        output.append(message_item(item_id("msg", response_id, len(output)), [part], status))
    for call in choice.tool_calls:
        output.append(call_item(item_id("fc", response_id, len(output)), call, "completed"))
    return response_object(response_id, render, status, output, usage)


def response_object(response_id: str, render: dict[str, Any], status: str, output: list[dict[str, Any]],
                    usage: Usage | None, error: dict[str, Any] | None = None) -> dict[str, Any]:
    echo = render["response"]
    return {
        "id": response_id,
        "object": "response",
        "created_at": echo["created_at"],
        "status": status,
        "background": False,
        "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        **{key: echo[key] for key in ECHOED},
        "output": output,
        "usage": render_usage(usage) if usage is not None else None,
    }


def render_usage(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.prompt_tokens,
        "input_tokens_details": {"cached_tokens": usage.cached_tokens},
        "output_tokens": usage.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
        "total_tokens": usage.total_tokens,
    }


def item_id(prefix: str, response_id: str, index: int) -> str:
    """`msg_…`, `rs_…`, `fc_…`: the response's own id with the item's place in the output."""
    return f"{prefix}_{response_id.removeprefix('resp_')}_{index}"


def message_item(ident: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": ident, "type": "message", "status": status, "role": "assistant", "content": content}


def text_part(text: str, token_logprobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": token_logprobs}


def reasoning_item(ident: str, text: str | None) -> dict[str, Any]:
    """`text` None is a reasoning item just opened: its summary is still empty."""
    return {"id": ident, "type": "reasoning", "summary": [] if text is None else [summary_part(text)]}


def summary_part(text: str) -> dict[str, Any]:
    return {"type": "summary_text", "text": text}


def call_item(ident: str, call: ToolCall, status: str) -> dict[str, Any]:
    return {"id": ident, "type": "function_call", "status": status, "call_id": call.id, "name": call.name,
            "arguments": call.arguments}


def logprobs(tokens: list[TokenLogprob] | None) -> list[dict[str, Any]]:
    """The Responses API's token objects are chat's `logprobs.content` entries."""
    rendered = render_chat_logprobs(tokens)
    return rendered["content"] if rendered is not None else []


class ResponsesStream(BaseStream):
    """One item is open at a time (the output stage sends reasoning, text and calls in turn); a new kind of
    output closes it, and so does the choice's end. `items` holds the finished items for the last event."""

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        super().__init__(req, ctx)
        self.id = req.response.id
        self.render = req.render
        self.sequence = 0
        self.items: list[dict[str, Any]] = []
        self.open: dict[str, Any] | None = None  # kind, id, text (or call), logprobs of the item receiving deltas
        self.status = "completed"

    def frame(self, kind: str, **data: Any) -> Frame:
        payload = {"type": kind, **data, "sequence_number": self.sequence}
        self.sequence += 1
        return sse(payload, event=kind)

    def start(self) -> list[Frame]:
        snapshot = response_object(self.id, self.render, "in_progress", [], None)
        return [self.frame("response.created", response=snapshot),
                self.frame("response.in_progress", response=snapshot)]

    def event_frames(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, TextDelta):
            return self._text(event)
        if isinstance(event, ThinkingDelta):
            return self._reasoning(event.text)
        if isinstance(event, ToolCallDelta):
            return self._call(event)
        if isinstance(event, ChoiceDone):
            self.status = "incomplete" if event.finish_reason == "length" else "completed"
            return self._close()
        if isinstance(event, Done):
            self.closed = True
            final = response_object(self.id, self.render, self.status, self.items, event.usage)
            return [*self._close(), self.frame(f"response.{self.status}", response=final)]
        return []

    def error_frames(self, err: GatewayError) -> list[Frame]:
        """An `error` event, then `response.failed` with the items finished so far."""
        error = render_error(err)[1]["error"]
        code = error["code"] or error["type"]
        failed = response_object(self.id, self.render, "failed", self.items, None,
                                 {"code": code, "message": error["message"]})
        return [self.frame("error", code=code, message=error["message"], param=error["param"]),
                self.frame("response.failed", response=failed)]

    # -- items -----------------------------------------------------------------------------------------------

    def _text(self, event: TextDelta) -> list[Frame]:
        if not event.text and (self.open is None or self.open["kind"] != "message"):
            return []  # logprobs the output stage released at the end, with no text to hang them on
        frames = self._enter("message")
        where = self._where()
        tokens = logprobs(event.logprobs)
        self.open["text"] += event.text
        self.open["logprobs"] += tokens
        return [*frames, self.frame("response.output_text.delta", **where, content_index=0, delta=event.text,
                                    logprobs=tokens)]

    def _reasoning(self, text: str) -> list[Frame]:
        frames = self._enter("reasoning")
        self.open["text"] += text
        return [*frames, self.frame("response.reasoning_summary_text.delta", **self._where(), summary_index=0,
                                    delta=text)]

    def _call(self, event: ToolCallDelta) -> list[Frame]:
        frames = []
        if event.id is not None or event.name is not None:  # a call's first fragment opens its item
            frames = self._enter("function_call", ToolCall(event.id or "", event.name or "", ""))
        self.open["call"].arguments += event.arguments
        if event.arguments:
            frames.append(self.frame("response.function_call_arguments.delta", **self._where(),
                                     delta=event.arguments))
        return frames

    def _enter(self, kind: str, call: ToolCall | None = None) -> list[Frame]:
        """Open an item of `kind` unless one is open already (a call always opens its own)."""
        if self.open is not None and self.open["kind"] == kind and call is None:
            return []
        frames = self._close()
        ident = item_id({"message": "msg", "reasoning": "rs", "function_call": "fc"}[kind], self.id,
                        len(self.items))
        self.open = {"kind": kind, "id": ident, "text": "", "logprobs": [], "call": call}
        if kind == "message":
            return [*frames, self.frame("response.output_item.added", output_index=len(self.items),
                                        item=message_item(ident, [], "in_progress")),
                    self.frame("response.content_part.added", **self._where(), content_index=0,
                               part=text_part("", []))]
        if kind == "reasoning":
            return [*frames, self.frame("response.output_item.added", output_index=len(self.items),
                                        item=reasoning_item(ident, None)),
                    self.frame("response.reasoning_summary_part.added", **self._where(), summary_index=0,
                               part=summary_part(""))]
        return [*frames, self.frame("response.output_item.added", output_index=len(self.items),
                                    item=call_item(ident, call, "in_progress"))]

    def _close(self) -> list[Frame]:
        """Finish the open item: its `.done` events, then `response.output_item.done` with the whole item."""
        item, self.open = self.open, None
        if item is None:
            return []
        where = {"item_id": item["id"], "output_index": len(self.items)}
        if item["kind"] == "message":
            part = text_part(item["text"], item["logprobs"])
            done = message_item(item["id"], [part], self.status if self.status == "incomplete" else "completed")
            frames = [self.frame("response.output_text.done", **where, content_index=0, text=item["text"],
                                 logprobs=item["logprobs"]),
                      self.frame("response.content_part.done", **where, content_index=0, part=part)]
        elif item["kind"] == "reasoning":
            done = reasoning_item(item["id"], item["text"])
            frames = [self.frame("response.reasoning_summary_text.done", **where, summary_index=0, text=item["text"]),
                      self.frame("response.reasoning_summary_part.done", **where, summary_index=0,
                                 part=summary_part(item["text"]))]
        else:
            done = call_item(item["id"], item["call"], "completed")
            frames = [self.frame("response.function_call_arguments.done", **where,
                                 arguments=item["call"].arguments)]
        frames.append(self.frame("response.output_item.done", output_index=len(self.items), item=done))
        self.items.append(done)
        return frames

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.open["id"], "output_index": len(self.items)}
