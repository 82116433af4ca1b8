"""Hugging Face TGI family: /generate, /generate_stream, the compat route `/` that huggingface_hub's
`InferenceClient.text_generation` posts to, /info and /tokenize.

Parameter checks and their messages follow TGI's router (`validation.rs`), and errors carry TGI's
`{"error", "error_type"}` body, because huggingface_hub raises its typed errors from `error_type`. Streams are
written the way axum writes them (`data:` with no space, no `[DONE]`), shared/API-SPEC.md §5.

`POST /generate` and `POST /tokenize` are shared with vLLM: the TGI routes accept only bodies with `inputs`
(every TGI client sends it), and vLLM's routes, which have no `accepts`, take the rest.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Sequence
from typing import Any

from adapters.base import (
    BaseStream,
    Frame,
    RequestContext,
    Route,
    compact_json,
    expect_object,
    get_number,
    get_typed,
    type_name,
)
from gateway.types import (
    Choice,
    ChoiceDone,
    Constraint,
    ErrorKind,
    GatewayError,
    GenerationResult,
    InternalRequest,
    ModelInfo,
    OutputEvent,
    SamplingParams,
    TextDelta,
    TokenizeResult,
    TokenLogprob,
    Usage,
    invalid,
)

FAMILY = "tgi"
PARAMS = "parameters."
MAX_STOP_SEQUENCES = 4
MAX_TOP_N_TOKENS = 5  # TGI's default --max-top-n-tokens

KEEPALIVE: Frame = b":\n\n"  # axum's default keep-alive comment

# kind → (status, error_type, message prefix), from TGI's `InferError` (status, `error_type()`, Display).
ERRORS: dict[ErrorKind, tuple[int, str, str]] = {
    ErrorKind.INVALID_REQUEST: (422, "validation", "Input validation error: "),
    ErrorKind.CONTEXT_OVERFLOW: (422, "validation", "Input validation error: "),
    ErrorKind.NOT_FOUND: (404, "not_found", ""),
    ErrorKind.UNAUTHORIZED: (401, "unauthorized", ""),
    ErrorKind.FORBIDDEN: (403, "forbidden", ""),
    ErrorKind.TOO_LARGE: (413, "validation", "Input validation error: "),
    ErrorKind.OVERLOADED: (429, "overloaded", ""),
    ErrorKind.RATE_LIMITED: (429, "overloaded", ""),
    ErrorKind.UNAVAILABLE: (503, "unavailable", ""),
    ErrorKind.TIMEOUT: (504, "timeout", ""),
    ErrorKind.INTERNAL: (424, "generation", "Request failed during generation: "),
}


def has_inputs(body: Any, ctx: RequestContext) -> bool:
    """`accepts` for the paths TGI shares with vLLM: a TGI body always has `inputs`."""
    return isinstance(body, dict) and "inputs" in body


# ---------------------------------------------------------------------------------------------------------------
# Parsing: endpoints


def parse_generate(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /generate: never streams, whatever the body says (TGI ignores unknown fields such as `stream`)."""
    return parse_generate_request(body, stream=False)


def parse_generate_stream(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /generate_stream."""
    return parse_generate_request(body, stream=True)


def parse_compat(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /: `{"inputs", "parameters", "stream"}`; streams like /generate_stream, else answers a list.
    `return_full_text` defaults to false here too. TGI defaults it to true on `/` for models whose Hub pipeline
    tag is text-generation or unknown, but huggingface_hub documents `text_generation()` as returning only the
    new text (and no longer sends `return_full_text: false` itself), which is what its users rely on."""
    body = expect_object(body)
    stream = get_typed(body, "stream", bool, "a boolean", default=False)
    return parse_generate_request(body, stream=stream)


def parse_info(body: Any, ctx: RequestContext) -> InternalRequest:
    """GET /info describes the default model."""
    return InternalRequest(kind="show_model", model="")


def parse_tokenize(body: Any, ctx: RequestContext) -> InternalRequest:
    """POST /tokenize takes a generate body and tokenizes `inputs` with special tokens, as TGI does."""
    body = expect_object(body)
    inputs = get_typed(body, "inputs", str, "a string", required=True)
    return InternalRequest(kind="tokenize", prompts=[inputs], add_special_tokens=True)


def parse_generate_request(body: Any, stream: bool) -> InternalRequest:
    """A `GenerateRequest`. Without `parameters` TGI applies `default_parameters()`, which samples
    (`do_sample: true`); with `parameters`, missing fields take serde defaults, so `{}` is greedy.
    `adapter_id`, which picks a LoRA adapter in TGI, picks one of the gateway's models here (the default
    without it), so TGI clients can reach every model."""
    body = expect_object(body)
    inputs = get_typed(body, "inputs", str, "a string", required=True)
    if not inputs:
        raise invalid("`inputs` cannot be empty", "inputs")
    params = get_typed(body, "parameters", dict, "an object")
    do_sample_default = params is None
    params = params or {}
    sampling, sampled = parse_sampling(params, do_sample_default)
    details = get_typed(params, "details", bool, "a boolean", default=False, prefix=PARAMS)
    _check_decoder_input_details(params, stream)
    _check_best_of(params)
    get_typed(params, "watermark", bool, "a boolean", prefix=PARAMS)  # accepted and ignored: no watermarking
    return InternalRequest(
        kind="completion",
        model=get_typed(params, "adapter_id", str, "a string", default="", prefix=PARAMS),
        prompts=[inputs],
        sampling=sampling,
        constraint=parse_grammar(params.get("grammar")),
        stream=stream,
        truncate_tokens=_parse_truncate(params),
        render={
            "details": details,
            "full_text": get_typed(params, "return_full_text", bool, "a boolean", default=False, prefix=PARAMS),
            "seed": sampling.seed if sampled else None,
        },
    )


# ---------------------------------------------------------------------------------------------------------------
# Parsing: parameters


def parse_sampling(params: dict[str, Any], do_sample_default: bool) -> tuple[SamplingParams, bool]:
    """TGI's sampling fields, and whether the request samples. TGI decodes greedily unless `do_sample` is set or
    a warper is (temperature other than 1, top_k, top_p, typical_p); greedy is temperature 0 here. Log-probabilities
    are always on, because every TGI token object carries its id and logprob."""
    temperature = _positive(params, "temperature")
    top_k = _positive(params, "top_k", integer=True)
    top_p = _open_unit(params, "top_p")
    typical_p = _open_unit(params, "typical_p")
    do_sample = get_typed(params, "do_sample", bool, "a boolean", default=do_sample_default, prefix=PARAMS)
    sampled = (do_sample or temperature not in (None, 1.0) or top_k is not None or top_p is not None
               or typical_p is not None)
    sampling = SamplingParams(
        temperature=temperature if sampled else 0.0,
        top_k=top_k,
        top_p=top_p,
        typical_p=typical_p,
        repeat_penalty=_positive(params, "repetition_penalty"),
        frequency_penalty=_frequency_penalty(params),
        seed=get_number(params, "seed", 0, integer=True, prefix=PARAMS),
        max_tokens=_max_new_tokens(params),
        stop=_parse_stop(params.get("stop")),
        logprobs=True,
        top_logprobs=_top_n_tokens(params),
    )
    return sampling, sampled


def _positive(params: dict[str, Any], key: str, integer: bool = False) -> Any:
    value = get_number(params, key, integer=integer, prefix=PARAMS)
    if value is not None and value <= 0:
        raise invalid(f"`{key}` must be strictly positive", PARAMS + key)
    return value


def _open_unit(params: dict[str, Any], key: str) -> float | None:
    value = get_number(params, key, prefix=PARAMS)
    if value is not None and not 0 < value < 1:
        raise invalid(f"`{key}` must be > 0.0 and < 1.0", PARAMS + key)
    return value


def _frequency_penalty(params: dict[str, Any]) -> float | None:
    value = get_number(params, "frequency_penalty", prefix=PARAMS)
    if value is not None and not -2 <= value <= 2:
        raise invalid("`frequency_penalty` must be >= -2.0 and <= 2.0", PARAMS + "frequency_penalty")
    return value


def _max_new_tokens(params: dict[str, Any]) -> int | None:
    """None lets the generation run to the end of the context, as TGI does without `max_new_tokens`."""
    value = get_number(params, "max_new_tokens", integer=True, prefix=PARAMS)
    if value is not None and value < 1:
        raise invalid("`max_new_tokens` must be strictly positive", PARAMS + "max_new_tokens")
    return value


def _top_n_tokens(params: dict[str, Any]) -> int:
    value = get_number(params, "top_n_tokens", integer=True, prefix=PARAMS)
    if value is not None and not 0 <= value <= MAX_TOP_N_TOKENS:
        raise invalid(f"`top_n_tokens` must be >= 0 and <= {MAX_TOP_N_TOKENS}. Given: {value}",
                      PARAMS + "top_n_tokens")
    return value or 0


def _parse_truncate(params: dict[str, Any]) -> int | None:
    value = get_number(params, "truncate", integer=True, prefix=PARAMS)
    if value is not None and value < 1:
        raise invalid(f"`truncate` must be strictly positive. Given: {value}", PARAMS + "truncate")
    return value


def _parse_stop(value: Any) -> list[str]:
    """TGI takes an array only. Empty strings are dropped: they would end every answer at once."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise invalid(f"Invalid type for `parameters.stop`: expected an array of strings, got {type_name(value)}.",
                      PARAMS + "stop")
    if len(value) > MAX_STOP_SEQUENCES:
        raise invalid(f"`stop` supports up to {MAX_STOP_SEQUENCES} stop sequences. Given: {len(value)}",
                      PARAMS + "stop")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise invalid(f"Invalid type for `parameters.stop[{i}]`: expected a string, got {type_name(item)}.",
                          f"{PARAMS}stop[{i}]")
    return [item for item in value if item]


def _check_best_of(params: dict[str, Any]) -> None:
    """/info says `max_best_of: 1`; TGI then refuses any other value with these messages."""
    best_of = get_number(params, "best_of", integer=True, prefix=PARAMS)
    if best_of is not None and best_of < 1:
        raise invalid(f"`best_of` must be > 0 and <= 1. Given: {best_of}", PARAMS + "best_of")
    if best_of is not None and best_of > 1:
        raise invalid("`best_of` != 1 is not allowed for this endpoint", PARAMS + "best_of")


def _check_decoder_input_details(params: dict[str, Any], stream: bool) -> None:
    """Prompt-token log-probabilities are never computed, so asking for them is refused rather than answered
    with an empty `prefill`."""
    if not get_typed(params, "decoder_input_details", bool, "a boolean", default=False, prefix=PARAMS):
        return
    if stream:
        raise invalid("`decoder_input_details` == true is not supported when streaming tokens",
                      PARAMS + "decoder_input_details")
    raise invalid("`decoder_input_details` == true is not supported: prompt token log-probabilities are not "
                  "computed", PARAMS + "decoder_input_details")


def parse_grammar(value: Any) -> Constraint | None:
    """`{"type": "json" | "json_object", "value": schema}` (an object or a JSON string),
    `{"type": "regex", "value": "..."}` or `{"type": "json_schema", "value": {"name"?, "schema"}}`."""
    if value is None:
        return None
    name = PARAMS + "grammar"
    if not isinstance(value, dict):
        raise invalid(f"Invalid type for `{name}`: expected an object, got {type_name(value)}.", name)
    kind = get_typed(value, "type", str, "a string", required=True, prefix=name + ".")
    if kind in ("json", "json_object"):
        return Constraint("json_schema", _json_schema(value.get("value"), name + ".value"), name + ".value")
    if kind == "regex":
        return Constraint("regex", get_typed(value, "value", str, "a string", required=True, prefix=name + "."),
                          name + ".value")
    if kind == "json_schema":
        spec = get_typed(value, "value", dict, "an object", required=True, prefix=name + ".")
        schema = get_typed(spec, "schema", dict, "an object", required=True, prefix=name + ".value.")
        return Constraint("json_schema", schema, name + ".value.schema")
    raise invalid(f"Invalid value for `{name}.type`: expected 'json', 'json_object', 'regex' or 'json_schema', "
                  f"got {kind!r}.", name + ".type")


def _json_schema(value: Any, name: str) -> dict[str, Any]:
    """TGI accepts the schema as an object or as a string holding one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise invalid(f"grammar is not valid: `{name}` is not JSON ({exc})", name) from None
    if not isinstance(value, dict):
        raise invalid(f"grammar is not valid: `{name}` must be a JSON schema object", name)
    return value


# ---------------------------------------------------------------------------------------------------------------
# Rendering: shared pieces


def finish_reason(choice_reason: str, stop_sequence: str | None) -> str:
    if choice_reason == "length":
        return "length"
    return "stop_sequence" if stop_sequence is not None else "eos_token"


def render_token(lp: TokenLogprob, text: str) -> dict[str, Any]:
    return {"id": lp.id, "text": text, "logprob": lp.logprob, "special": lp.special}


def token_texts(logprobs: list[TokenLogprob]) -> list[str]:
    """Each token's text decoded incrementally from its bytes, as TGI does: a token that ends inside a multi-byte
    character gets "" and the token that completes it gets the whole character, so the texts add up to the
    generated text."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    texts = [decoder.decode(bytes(lp.bytes)) for lp in logprobs]
    if texts:
        texts[-1] += decoder.decode(b"", final=True)
    return texts


def render_top_tokens(lp: TokenLogprob) -> list[dict[str, Any]]:
    return [{"id": tid, "text": text, "logprob": logprob, "special": False} for text, logprob, _, tid in lp.top]


def _full_text(req: InternalRequest, text: str) -> str:
    """`return_full_text` puts `inputs`, as sent, before the generated text."""
    return f"{req.prompts[0]}{text}" if req.render.get("full_text") else text


# ---------------------------------------------------------------------------------------------------------------
# Rendering: finished results


def render_generate(result: GenerationResult, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """A `GenerateResponse`: `details` appears only when asked for."""
    choice = result.choices[0]
    out: dict[str, Any] = {"generated_text": _full_text(req, choice.text)}
    if req.render.get("details"):
        out["details"] = _details(choice, result.usage, req)
    return out


def render_compat(result: GenerationResult, req: InternalRequest, ctx: RequestContext) -> list[dict[str, Any]]:
    """`/` wraps the response in a list, "to match api-inference"."""
    return [render_generate(result, req, ctx)]


def _details(choice: Choice, usage: Usage, req: InternalRequest) -> dict[str, Any]:
    logprobs = choice.logprobs or []
    details: dict[str, Any] = {
        "finish_reason": finish_reason(choice.finish_reason, choice.stop_sequence),
        "generated_tokens": usage.completion_tokens,
        "seed": req.render.get("seed"),
        "prefill": [],
        "tokens": [render_token(lp, text) for lp, text in zip(logprobs, token_texts(logprobs), strict=True)],
    }
    if req.sampling.top_logprobs and logprobs:
        details["top_tokens"] = [render_top_tokens(lp) for lp in logprobs]
    return details


def render_info(result: ModelInfo, req: InternalRequest, ctx: RequestContext) -> dict[str, Any]:
    """TGI's `Info`, plus the older `model_dtype` (the quantization here). `max_input_tokens` is TGI's default, one
    less than the total. The router settings the gateway has no equivalent for carry TGI's defaults, so that
    clients reading /info find every key."""
    total = result.max_model_len or result.context_length
    return {
        "model_id": result.name,
        "model_sha": result.digest or None,
        "model_dtype": result.quantization or None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": 128,
        "max_best_of": 1,
        "max_stop_sequences": MAX_STOP_SEQUENCES,
        "max_input_tokens": max(total - 1, 0),
        "max_total_tokens": total,
        "validation_workers": 2,
        "max_client_batch_size": 4,
        "router": "text-generation-router",
        "version": ctx.server_version,
        "sha": None,
        "docker_label": None,
    }


def render_tokenize(result: TokenizeResult, req: InternalRequest, ctx: RequestContext) -> list[dict[str, Any]]:
    """`[{"id", "text", "start", "stop"}]`, where start/stop are byte offsets into `inputs` and `text` is that
    slice of it (empty for a token such as BOS that is not in the text)."""
    text = str(req.prompts[0])
    data = text.encode()
    spans = token_spans(text, result.pieces)
    return [
        {"id": token, "text": data[start:stop].decode("utf-8", errors="replace"), "start": start, "stop": stop}
        for token, (start, stop) in zip(result.tokens, spans, strict=True)
    ]


FRAGMENT_SLACK = 4  # bytes a run of byte-fragment tokens may cover, per token (one UTF-8 character at most)


def token_spans(text: str, pieces: Sequence[str]) -> list[tuple[int, int]]:
    """Byte spans of each token's piece in `text`, found left to right. A piece matches where the text goes on
    with it, or with it minus a leading space (SentencePiece's added prefix space). A piece holding U+FFFD is a
    fragment of a multi-byte character; a run of them takes the bytes up to the next piece that matches. Any
    other piece that does not match (BOS, a control token) is empty at the current position."""
    data = text.encode()
    spans: list[tuple[int, int]] = []
    fragments: list[int] = []
    pos = 0
    for piece in pieces:
        found = _find_piece(data, pos, piece, FRAGMENT_SLACK * len(fragments))
        if found is None:
            if "\ufffd" in piece:
                fragments.append(len(spans))
            spans.append((pos, pos))
            continue
        start, stop = found
        for i in fragments:
            spans[i] = (pos, start)
        fragments = []
        spans.append((start, stop))
        pos = stop
    for i in fragments:
        spans[i] = (pos, len(data))
    return spans


def _find_piece(data: bytes, pos: int, piece: str, slack: int) -> tuple[int, int] | None:
    candidates = [piece, piece[1:]] if piece.startswith(" ") else [piece]
    for candidate in candidates:
        raw = candidate.encode()
        if not raw:
            continue
        at = data.find(raw, pos, pos + slack + len(raw))
        if at != -1:
            return at, at + len(raw)
    return None


def render_error(err: GatewayError) -> tuple[int, dict[str, str]]:
    status, error_type, prefix = ERRORS.get(err.kind, ERRORS[ErrorKind.INTERNAL])
    return status, {"error": prefix + err.message, "error_type": error_type}


# ---------------------------------------------------------------------------------------------------------------
# Streaming


def sse_data(obj: Any) -> Frame:
    """axum's `Event::json_data`: `data:` with no space, then the blank line."""
    return b"data:" + compact_json(obj).encode() + b"\n\n"


class TGIStream(BaseStream):
    """One event per generated token, numbered from 1; the last one carries `generated_text` (and `details` when
    asked). Each token event is held until the next token or the end arrives, so that the last token is the final
    event, as in TGI. Text that arrives without a token (held back for a stop string, released at the end) is
    added to the held token's text, so the token texts always add up to the generated text."""

    idle_frame = KEEPALIVE

    def __init__(self, req: InternalRequest, ctx: RequestContext):
        super().__init__(req, ctx)
        self.req = req
        self.held: dict[str, Any] | None = None
        self.loose_text = ""
        self.generated = ""
        self.count = 0

    def event_frames(self, event: OutputEvent) -> list[Frame]:
        if isinstance(event, TextDelta):
            return self._delta(event)
        if isinstance(event, ChoiceDone):
            return self._finish(event)
        return []

    def error_frames(self, err: GatewayError) -> list[Frame]:
        return [*self._release(), sse_data(render_error(err)[1])]

    def _delta(self, event: TextDelta) -> list[Frame]:
        """The whole delta's text goes on its last token: a delta carries one token in practice, and several only
        share text that their tokens completed together."""
        self.generated += event.text
        if not event.logprobs:
            self._add_loose_text(event.text)
            return []
        frames: list[Frame] = []
        last = len(event.logprobs) - 1
        for i, lp in enumerate(event.logprobs):
            frames += self._release()
            text = self.loose_text + (event.text if i == last else "")
            self.loose_text = ""
            top = render_top_tokens(lp) if self.req.sampling.top_logprobs else []
            self.held = self._token_event(render_token(lp, text), top)
        return frames

    def _add_loose_text(self, text: str) -> None:
        if self.held is not None:
            self.held["token"]["text"] += text
        else:
            self.loose_text += text

    def _token_event(self, token: dict[str, Any], top: list[dict[str, Any]]) -> dict[str, Any]:
        self.count += 1
        event: dict[str, Any] = {"index": self.count, "token": token}
        if top:
            event["top_tokens"] = top
        event["generated_text"] = None
        event["details"] = None
        return event

    def _release(self) -> list[Frame]:
        if self.held is None:
            return []
        frame, self.held = sse_data(self.held), None
        return [frame]

    def _finish(self, event: ChoiceDone) -> list[Frame]:
        """With no token to end on (the first token was end-of-generation), the final event carries an empty
        special token standing for it; its id is unknown (-1) and so is its logprob."""
        self.closed = True
        final = self.held or self._token_event(
            {"id": -1, "text": self.loose_text, "logprob": None, "special": True}, [])
        final["generated_text"] = _full_text(self.req, self.generated)
        if self.req.render.get("details"):
            final["details"] = {
                "finish_reason": finish_reason(event.finish_reason, event.stop_sequence),
                "generated_tokens": event.usage.completion_tokens,
                "seed": self.req.render.get("seed"),
                "input_length": event.usage.prompt_tokens,
            }
        self.held = None
        return [sse_data(final)]


# ---------------------------------------------------------------------------------------------------------------
# Routes


ROUTES: list[Route] = [
    Route("POST", "/generate", FAMILY, parse_generate, render_generate, render_error, accepts=has_inputs,
          name="tgi.generate"),
    Route("POST", "/generate_stream", FAMILY, parse_generate_stream, render_generate, render_error, stream=TGIStream,
          name="tgi.generate_stream"),
    Route("POST", "/", FAMILY, parse_compat, render_compat, render_error, stream=TGIStream, name="tgi.compat"),
    Route("GET", "/info", FAMILY, parse_info, render_info, render_error, body="none", name="tgi.info"),
    Route("POST", "/tokenize", FAMILY, parse_tokenize, render_tokenize, render_error, accepts=has_inputs,
          name="tgi.tokenize"),
]
