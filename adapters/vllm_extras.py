"""vLLM's extra request fields on OpenAI-shaped bodies: sampling extras (`repetition_penalty`, `min_tokens`,
`stop_token_ids`, ...), prompt truncation, chat-template fields and guided decoding (`guided_*`,
`structured_outputs`).

vLLM clients send these on the OpenAI routes, and vLLM's own /generate and chat-form /tokenize take them too. So
they live in this leaf, which both adapters import, rather than in either family's module: the OpenAI adapter no
longer has to reach into the vLLM adapter, nor the vLLM adapter into the OpenAI one. Messages follow vLLM's
wording; fields that would change the answer but that llama.cpp cannot honour are refused, not ignored.
"""

from __future__ import annotations

import json
from typing import Any, Callable

from adapters.base import get_number, get_typed, is_token, type_name
from gateway.types import Constraint, InternalRequest, SamplingParams, invalid

UNSUPPORTED = ("use_beam_search", "allowed_token_ids", "bad_words", "prompt_logprobs", "logits_processors",
               "structural_tag")
"""Fields refused when set to anything but their no-op default (null, false or an empty list)."""

TEMPLATE_ARGUMENTS = ("messages", "tools", "add_generation_prompt")
"""What the chat template gets from the request's own fields; `chat_template_kwargs` may not replace them."""


# ---------------------------------------------------------------------------------------------------------------
# Extras on the OpenAI chat and completions bodies


def apply_extras(body: dict[str, Any], req: InternalRequest) -> None:
    """Read vLLM's extra fields from an OpenAI chat or completions body into `req`, already parsed by the OpenAI
    adapter (which reads `top_k`, `min_p`, `typical_p` and `echo` for completions itself). A guided-decoding
    field replaces a `response_format` constraint, as in vLLM."""
    _reject_unsupported(body)
    _apply_sampling_extras(body, req.sampling)
    _apply_truncation(body, req)
    if req.kind == "chat":
        _apply_chat_extras(body, req)
    constraint = parse_structured_outputs(body)
    if constraint is not None:
        req.constraint = constraint


def _reject_unsupported(body: dict[str, Any]) -> None:
    for key in UNSUPPORTED:
        value = body.get(key)
        if not (value is None or value is False or value == []):
            raise invalid(f"`{key}` is not supported by this server.", key)


def _apply_sampling_extras(body: dict[str, Any], sampling: SamplingParams) -> None:
    penalty = get_number(body, "repetition_penalty")
    if penalty is not None:
        if penalty <= 0:
            raise invalid(f"`repetition_penalty` must be greater than zero, got {penalty}.", "repetition_penalty")
        sampling.repeat_penalty = penalty
    sampling.ignore_eos = get_typed(body, "ignore_eos", bool, "a boolean", default=sampling.ignore_eos)
    sampling.min_tokens = _min_tokens(body, sampling.max_tokens)
    sampling.stop_token_ids = _token_ids(body, "stop_token_ids", default=sampling.stop_token_ids)
    sampling.include_stop_str = get_typed(body, "include_stop_str_in_output", bool, "a boolean",
                                          default=sampling.include_stop_str)
    sampling.skip_special_tokens = get_typed(body, "skip_special_tokens", bool, "a boolean",
                                             default=sampling.skip_special_tokens)


def _min_tokens(body: dict[str, Any], max_tokens: int | None) -> int:
    value = get_number(body, "min_tokens", integer=True)
    if value is None:
        return 0
    if value < 0:
        raise invalid(f"`min_tokens` must be greater than or equal to 0, got {value}.", "min_tokens")
    if max_tokens is not None and value > max_tokens:
        raise invalid(f"`min_tokens` must be less than or equal to max_tokens={max_tokens}, got {value}.",
                      "min_tokens")
    return value


def _token_ids(body: dict[str, Any], key: str, default: list[int]) -> list[int]:
    value = body.get(key)
    if value is None:
        return default
    if not isinstance(value, list) or not all(is_token(t) for t in value):
        raise invalid(f"Invalid value for `{key}`: expected an array of token ids (non-negative integers).", key)
    return list(value)


def _apply_truncation(body: dict[str, Any], req: InternalRequest) -> None:
    """`truncate_prompt_tokens`: keep the last N prompt tokens; -1 (vLLM: "the model's limit") sets no limit of
    its own, so a prompt longer than the context is still an error."""
    value = get_number(body, "truncate_prompt_tokens", integer=True)
    if value is None or value == -1:
        return
    if value < 1:
        raise invalid(f"`truncate_prompt_tokens` must be -1 or at least 1, got {value}.", "truncate_prompt_tokens")
    req.truncate_tokens = value


def _apply_chat_extras(body: dict[str, Any], req: InternalRequest) -> None:
    """vLLM's chat `echo` prepends the last message's content when that message has the role being generated:
    the assistant, or with `add_generation_prompt: false` whatever role the last message has."""
    apply_chat_template_fields(body, req)
    special = get_typed(body, "add_special_tokens", bool, "a boolean")
    if special is not None:
        req.add_special_tokens = special
    echo = get_typed(body, "echo", bool, "a boolean", default=False)
    last_role = req.messages[-1].role if req.messages else None
    req.echo = echo and (not req.add_generation_prompt or last_role == "assistant")


def apply_chat_template_fields(body: dict[str, Any], req: InternalRequest) -> None:
    """Fields that shape how messages are rendered, shared by chat completions and chat-form /tokenize.
    `continue_final_message` turns the generation prompt off unless the body also sets it, which is refused."""
    if body.get("chat_template") is not None:
        raise invalid("`chat_template` is not supported: each model uses the template in its GGUF file.",
                      "chat_template")
    continue_final = get_typed(body, "continue_final_message", bool, "a boolean", default=False)
    generation_prompt = get_typed(body, "add_generation_prompt", bool, "a boolean")
    if continue_final and generation_prompt:
        raise invalid("Cannot set both `continue_final_message` and `add_generation_prompt` to True.",
                      "continue_final_message")
    req.continue_final_message = continue_final
    req.add_generation_prompt = generation_prompt if generation_prompt is not None else not continue_final
    kwargs = get_typed(body, "chat_template_kwargs", dict, "an object", default=req.template_kwargs)
    for key in kwargs:
        if key in TEMPLATE_ARGUMENTS:
            raise invalid(f"`chat_template_kwargs` may not set `{key}`: it comes from the request's own field.",
                          "chat_template_kwargs." + key)
    req.template_kwargs = kwargs


# ---------------------------------------------------------------------------------------------------------------
# Guided decoding / structured outputs


def _json_constraint(value: Any, name: str) -> Constraint:
    """A schema given as an object or as a string holding one."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise invalid(f"Invalid value for `{name}`: expected a JSON schema, got a string that is not JSON "
                          f"({exc}).", name) from None
    if not isinstance(value, dict):
        raise invalid(f"Invalid value for `{name}`: expected a JSON schema object, got {type_name(value)}.", name)
    return Constraint("json_schema", value, name)


def _text_constraint(kind: str) -> Callable[[Any, str], Constraint]:
    def parse(value: Any, name: str) -> Constraint:
        if not isinstance(value, str) or not value:
            raise invalid(f"Invalid value for `{name}`: expected a non-empty string.", name)
        return Constraint(kind, value, name)

    return parse


def _choice_constraint(value: Any, name: str) -> Constraint:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise invalid(f"Invalid value for `{name}`: expected a non-empty array of strings.", name)
    return Constraint("choice", list(value), name)


def _json_object_constraint(value: Any, name: str) -> Constraint | None:
    if not isinstance(value, bool):
        raise invalid(f"Invalid type for `{name}`: expected a boolean, got {type_name(value)}.", name)
    return Constraint("json", param=name) if value else None


def _unsupported_constraint(value: Any, name: str) -> Constraint:
    raise invalid(f"`{name}` is not supported by this server.", name)


ConstraintParser = Callable[[Any, str], "Constraint | None"]

GUIDED: dict[str, ConstraintParser] = {
    "guided_json": _json_constraint,
    "guided_regex": _text_constraint("regex"),
    "guided_choice": _choice_constraint,
    "guided_grammar": _text_constraint("gbnf"),
}
"""Older vLLM's top-level fields; `guided_decoding_backend` and `guided_whitespace_pattern` are ignored."""

STRUCTURED: dict[str, ConstraintParser] = {
    "json": _json_constraint,
    "regex": _text_constraint("regex"),
    "choice": _choice_constraint,
    "grammar": _text_constraint("gbnf"),
    "json_object": _json_object_constraint,
    "structural_tag": _unsupported_constraint,
}
"""Newer vLLM's `structured_outputs` object; its `disable_*` and `whitespace_pattern` options are ignored."""


def parse_structured_outputs(body: dict[str, Any]) -> Constraint | None:
    """At most one constraint across `guided_*` and `structured_outputs`, as vLLM requires."""
    found: list[tuple[str, Constraint]] = []
    for key, parse in GUIDED.items():
        _collect(found, key, body.get(key), parse)
    options = get_typed(body, "structured_outputs", dict, "an object", default={})
    for key, parse in STRUCTURED.items():
        _collect(found, f"structured_outputs.{key}", options.get(key), parse)
    if len(found) > 1:
        names = ", ".join(f"`{name}`" for name, _ in found)
        raise invalid(f"You can only use one kind of structured outputs constraint but multiple are specified: "
                      f"{names}.", found[1][0])
    return found[0][1] if found else None


def _collect(found: list[tuple[str, Constraint]], name: str, value: Any, parse: ConstraintParser) -> None:
    if value is None:
        return
    constraint = parse(value, name)
    if constraint is not None:
        found.append((name, constraint))
