"""The OpenAI-compatible wire as a client speaks it: an internal request as the body of a streamed
`/v1/chat/completions` or `/v1/completions` call, and the answer's chunks as the backend's events.

Upstream servers (vLLM, SGLang, llama-server, Ollama's /v1, another llm-gateway) parse their model's tool calls
and reasoning themselves, so a chunk becomes a `SplitPiece`, which the output stage passes through. Fields
beyond OpenAI's are sent only when a request sets them, under the names vLLM uses (llama-server and SGLang read
most of them too); each server refuses or ignores what it does not know. Plain data in, plain data out: the
HTTP calls are in `upstream.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from gateway.backends.base import ChoicePlan, SplitPiece
from gateway.engine.jobs import EngineEvent, Finished, Started
from gateway.types import (
    Constraint,
    ErrorKind,
    GatewayError,
    InternalRequest,
    Message,
    SamplingParams,
    TokenLogprob,
    ToolCallDelta,
)

GUIDED = {"regex": "regex", "choice": "choice", "gbnf": "grammar"}
"""Constraints without an OpenAI field: vLLM's `structured_outputs` keys (which llm-gateway also reads)."""

EXTRAS = {"top_k": "top_k", "min_p": "min_p", "typical_p": "typical_p", "repeat_penalty": "repetition_penalty",
          "repeat_last_n": "repeat_last_n"}
"""Sampling fields beyond OpenAI's, sent when set: `SamplingParams` name → the field's name on the wire."""

FINISH = {"stop": "stop", "length": "length", "tool_calls": "stop", "function_call": "stop", "eos": "stop"}
"""Upstream finish reasons → the engine's; a call ends with "stop" and the service names it from the calls."""


# -- the request ------------------------------------------------------------------------------------------------


def request_body(req: InternalRequest, model: str, sampling: SamplingParams,
                 messages: list[Message]) -> tuple[str, dict[str, Any]]:
    """The path and body of the streamed call for a chat or completion (`messages` and `sampling` already carry
    the model's configured defaults)."""
    body: dict[str, Any] = {"model": model, "stream": True,
                            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
    body.update(_sampling(sampling, req.kind))
    if req.n > 1:
        body["n"] = req.n
    if req.truncate_tokens:
        body["truncate_prompt_tokens"] = req.truncate_tokens
    if req.kind == "completion":
        body["prompt"] = req.prompts[0] if len(req.prompts) == 1 else list(req.prompts)
        if req.suffix is not None:
            body["suffix"] = req.suffix
        path = "/v1/completions"
    else:
        body["messages"] = [wire_message(m) for m in messages]
        body.update(_chat_extras(req))
        path = "/v1/chat/completions"
    if req.constraint is not None:
        body.update(_constraint(req.constraint))
    return path, body


def _sampling(sampling: SamplingParams, kind: str) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for name in ("temperature", "top_p", "seed", "max_tokens", "presence_penalty", "frequency_penalty"):
        if getattr(sampling, name) is not None:
            body[name] = getattr(sampling, name)
    for name, wire in EXTRAS.items():
        if getattr(sampling, name) is not None:
            body[wire] = getattr(sampling, name)
    if sampling.stop:
        body["stop"] = list(sampling.stop)
    if sampling.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in sampling.logit_bias.items()}
    if sampling.logprobs and kind == "chat":
        body["logprobs"] = True
        if sampling.top_logprobs:
            body["top_logprobs"] = sampling.top_logprobs
    elif sampling.logprobs:
        body["logprobs"] = sampling.top_logprobs
    if sampling.min_tokens:
        body["min_tokens"] = sampling.min_tokens
    if sampling.ignore_eos:
        body["ignore_eos"] = True
    if sampling.stop_token_ids:
        body["stop_token_ids"] = list(sampling.stop_token_ids)
    if sampling.include_stop_str:
        body["include_stop_str_in_output"] = True
    if not sampling.skip_special_tokens:
        body["skip_special_tokens"] = False
    return body


def _chat_extras(req: InternalRequest) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if req.tools:
        body["tools"] = [{"type": "function", "function": {"name": t.name, "description": t.description,
                                                          "parameters": t.parameters or {"type": "object"},
                                                          **({"strict": True} if t.strict else {})}}
                         for t in req.tools]
        body["tool_choice"] = req.tool_choice if req.tool_choice in ("auto", "none", "required") else {
            "type": "function", "function": {"name": req.tool_choice}}
        if not req.parallel_tool_calls:
            body["parallel_tool_calls"] = False
    kwargs = dict(req.template_kwargs)
    if req.think is not None:
        kwargs.setdefault("enable_thinking", req.think)
    if kwargs:
        body["chat_template_kwargs"] = kwargs
    if req.continue_final_message:
        body["continue_final_message"] = True
    if not req.add_generation_prompt:
        body["add_generation_prompt"] = False
    return body


def wire_message(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role}
    if message.images:
        parts = [{"type": "text", "text": message.content}] if message.content else []
        out["content"] = parts + [{"type": "image_url", "image_url": {"url": image.url}} for image in message.images]
    else:
        out["content"] = message.content if message.content is not None or message.tool_calls else ""
    if message.tool_calls:
        out["tool_calls"] = [{"id": call.id, "type": "function",
                              "function": {"name": call.name, "arguments": call.arguments}}
                             for call in message.tool_calls]
    if message.tool_call_id:
        out["tool_call_id"] = message.tool_call_id
    if message.name:
        out["name"] = message.name
    if message.thinking:
        out["reasoning_content"] = message.thinking
    return out


def _constraint(constraint: Constraint) -> dict[str, Any]:
    if constraint.kind == "json":
        return {"response_format": {"type": "json_object"}}
    if constraint.kind == "json_schema":
        return {"response_format": {"type": "json_schema",
                                    "json_schema": {"name": "response", "schema": constraint.value}}}
    return {"structured_outputs": {GUIDED[constraint.kind]: constraint.value}}


# -- errors -----------------------------------------------------------------------------------------------------


@dataclass
class UpstreamRefusal(Exception):
    """An upstream's error answer (a status, or an error event in its stream). `broken` says the server failed
    (its circuit opens), `busy` that it is full (its share drops); anything else is about the request, and is
    the client's own 4xx."""

    error: GatewayError
    broken: bool = False
    busy: bool = False


def refusal(status: int, payload: Any, url: str) -> UpstreamRefusal:
    """What an error status (or an error event's `code`) with its body means here. The upstream's own message
    names the field, so a client error keeps its message and `param`; `details` keep the status."""
    message, param = _error_text(payload)
    facts = {"upstream_status": status}
    if status in (429, 503):
        return UpstreamRefusal(GatewayError(ErrorKind.OVERLOADED, f"The upstream server {url} is busy: {message}",
                                            details=facts), busy=True)
    if 400 <= status < 500 and status not in (401, 403, 404, 408):
        kind = ErrorKind.TOO_LARGE if status == 413 else ErrorKind.INVALID_REQUEST
        return UpstreamRefusal(GatewayError(kind, message, param, details=facts))
    # 401/403/404 say our config is wrong (key, model name), not the request: the client sees `unavailable`
    return UpstreamRefusal(GatewayError(ErrorKind.UNAVAILABLE, f"The upstream server {url} answered {status}: "
                                                               f"{message}", code="upstream_error", details=facts),
                           broken=status >= 500 or status == 408)


def _error_text(payload: Any) -> tuple[str, str | None]:
    """OpenAI's `{"error": {"message", "param"}}`, vLLM's older `{"object": "error", "message"}`, llama-server's
    and Ollama's `{"error": "text"}`, or the raw text."""
    if isinstance(payload, dict):
        inner = payload.get("error", payload)
        if isinstance(inner, str):
            return inner, None
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            param = inner.get("param")
            return inner["message"], param if isinstance(param, str) else None
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return (text.strip()[:500] or "no message"), None


def stream_error(chunk: dict[str, Any], url: str) -> UpstreamRefusal | None:
    """An error event inside a stream (vLLM and SGLang report failures after their 200 this way)."""
    if "error" not in chunk and chunk.get("object") != "error":
        return None
    inner = chunk.get("error", chunk)
    code = inner.get("code") if isinstance(inner, dict) else None
    status = code if isinstance(code, int) and 400 <= code < 600 else 500
    return refusal(status, chunk, url)


# -- the stream -------------------------------------------------------------------------------------------------


class SSEDecoder:
    """Bytes of a `text/event-stream` in, the `data:` payloads out; comments and other fields are skipped. An
    event's data lines are joined, as the SSE specification says."""

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[str] = []

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        payloads = []
        for raw in lines:
            line = raw.rstrip(b"\r").decode("utf-8", errors="replace")
            if not line:
                if self._data:
                    payloads.append("\n".join(self._data))
                    self._data = []
            elif line.startswith("data:"):
                self._data.append(line[5:].removeprefix(" "))
        return payloads


@dataclass
class _Choice:
    started: bool = False
    finish: str | None = None
    stop_sequence: str | None = None
    pieces: int = 0
    first_at: float | None = None


@dataclass
class StreamTranslator:
    """One streamed answer's chunks → `(choice index, event)` pairs. A choice's `Started` comes with its first
    output, so nothing is emitted for a stream that fails before its first token (the backend may still fail
    over then). Usage comes from the chunks that carry it (every chunk with vLLM's continuous usage stats, else
    the last); pieces are counted where it never comes."""

    choices: list[ChoicePlan]
    kind: str
    sent_at: float  # when the request went out (monotonic), for the prompt's timing
    usage: dict[str, Any] = field(default_factory=dict)
    _state: dict[int, _Choice] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._state = {c.index: _Choice() for c in self.choices}

    @property
    def committed(self) -> bool:
        """Whether anything has been emitted: from then on a failure is the client's in-band error."""
        return any(c.started for c in self._state.values())

    @property
    def complete(self) -> bool:
        return all(c.finish is not None for c in self._state.values())

    def feed(self, chunk: dict[str, Any], now: float) -> list[tuple[int, EngineEvent]]:
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        events: list[tuple[int, EngineEvent]] = []
        for item in chunk.get("choices") or []:
            index = item.get("index", 0) if isinstance(item, dict) else None
            if index not in self._state:
                continue
            piece = self._piece(item)
            state = self._state[index]
            if (piece is not None or item.get("finish_reason")) and not state.started:
                state.started, state.first_at = True, now
                events.append((index, Started(self._prompt_tokens(index), self._cached_tokens(index))))
            if piece is not None:
                state.pieces += 1
                events.append((index, piece))
            if item.get("finish_reason"):
                state.finish = FINISH.get(item["finish_reason"], "stop")
                stop = item.get("stop_reason")
                state.stop_sequence = stop if isinstance(stop, str) else None
        return events

    def finish(self, now: float, error: GatewayError | None = None, cancelled: bool = False
               ) -> list[tuple[int, EngineEvent]]:
        """Every choice's `Finished`: with the upstream's usage; the choices that had not ended get `error` (a
        stream that broke) or end `cancelled` (the client left). A choice that never started is started first,
        so each choice's events keep their order."""
        events: list[tuple[int, EngineEvent]] = []
        for plan in self.choices:
            state = self._state[plan.index]
            if not state.started:
                state.started, state.first_at = True, now
                events.append((plan.index, Started(self._prompt_tokens(plan.index), self._cached_tokens(plan.index))))
            failed = error if state.finish is None and not cancelled else None
            reason = state.finish or ("cancelled" if cancelled else "error" if failed else "stop")
            first = state.first_at if state.first_at is not None else now
            events.append((plan.index, Finished(
                reason, self._prompt_tokens(plan.index),
                self._cached_tokens(plan.index), self._completion_tokens(state), state.stop_sequence,
                prompt_seconds=max(0.0, first - self.sent_at), generation_seconds=max(0.0, now - first),
                error=failed)))
        return events

    def _piece(self, item: dict[str, Any]) -> SplitPiece | None:
        if self.kind == "completion":
            text = item.get("text") or ""
            logprobs = completion_logprobs(item.get("logprobs"))
            return SplitPiece(text=text, logprobs=logprobs) if text or logprobs else None
        delta = item.get("delta") or {}
        thinking = delta.get("reasoning_content") or delta.get("reasoning") or ""
        calls = [self._call(item.get("index", 0), position, call)
                 for position, call in enumerate(delta.get("tool_calls") or []) if isinstance(call, dict)]
        logprobs = chat_logprobs(item.get("logprobs"))
        text = delta.get("content") or ""
        if not (text or thinking or calls or logprobs):
            return None
        return SplitPiece(text=text, thinking=thinking if isinstance(thinking, str) else "", calls=calls,
                          logprobs=logprobs)

    @staticmethod
    def _call(choice: int, position: int, call: dict[str, Any]) -> ToolCallDelta:
        function = call.get("function") or {}
        index = call.get("index")
        return ToolCallDelta(choice, index if isinstance(index, int) else position, call.get("id") or None,
                             function.get("name") or None, function.get("arguments") or "")

    def _prompt_tokens(self, index: int) -> int:
        return int(self.usage.get("prompt_tokens") or 0) if index == self.choices[0].index else 0

    def _cached_tokens(self, index: int) -> int:
        details = self.usage.get("prompt_tokens_details") or {}
        cached = details.get("cached_tokens") if isinstance(details, dict) else None
        return int(cached or 0) if index == self.choices[0].index else 0

    def _completion_tokens(self, state: _Choice) -> int:
        reported = self.usage.get("completion_tokens")
        return int(reported) if len(self.choices) == 1 and isinstance(reported, int) else state.pieces


def chat_logprobs(value: Any) -> list[TokenLogprob] | None:
    """Chat chunks' `logprobs.content`: `{token, logprob, bytes, top_logprobs: [...]}` per token."""
    content = value.get("content") if isinstance(value, dict) else None
    if not content:
        return None
    return [TokenLogprob(item.get("token", ""), float(item.get("logprob", 0.0)), _bytes(item),
                         [(top.get("token", ""), float(top.get("logprob", 0.0)), _bytes(top), -1)
                          for top in item.get("top_logprobs") or []])
            for item in content]


def completion_logprobs(value: Any) -> list[TokenLogprob] | None:
    """Completion chunks' `logprobs`: parallel lists `tokens`, `token_logprobs`, `top_logprobs` (maps)."""
    if not isinstance(value, dict) or not value.get("tokens"):
        return None
    tops = value.get("top_logprobs") or [None] * len(value["tokens"])
    out = []
    for token, logprob, top in zip(value["tokens"], value.get("token_logprobs") or [], tops, strict=False):
        alternatives = [(text, float(lp), list(text.encode()), -1) for text, lp in (top or {}).items()]
        out.append(TokenLogprob(token, float(logprob or 0.0), list(token.encode()), alternatives))
    return out


def _bytes(item: dict[str, Any]) -> list[int]:
    raw = item.get("bytes")
    return list(raw) if isinstance(raw, list) else list(str(item.get("token", "")).encode())
