"""How much one request may ask for. Each list a client sends costs memory and per-token work (every stop string
is matched after every token, every logit bias entry is applied to every step), so each has a documented bound
(README, "Web pages and hostile input"), and a request past one is a 400 naming the field, whatever its family."""

from __future__ import annotations

from gateway.types import InternalRequest, invalid

MAX_STOP_STRINGS = 64
MAX_STOP_LENGTH = 1024  # characters in one stop string
MAX_STOP_TOKEN_IDS = 1024
MAX_LOGIT_BIAS = 4096
MAX_TOOLS = 512
MAX_MESSAGES = 16384
MAX_PROMPTS = 4096  # prompts of one completion, or inputs of one embedding request
MAX_CHOICES = 128  # n


def check_limits(req: InternalRequest) -> None:
    sampling = req.sampling
    _at_most("stop", len(sampling.stop), MAX_STOP_STRINGS, "stop strings")
    longest = max((len(s) for s in sampling.stop), default=0)
    _at_most("stop", longest, MAX_STOP_LENGTH, "characters in a stop string")
    _at_most("stop_token_ids", len(sampling.stop_token_ids), MAX_STOP_TOKEN_IDS, "token ids")
    _at_most("logit_bias", len(sampling.logit_bias), MAX_LOGIT_BIAS, "entries")
    _at_most("tools", len(req.tools), MAX_TOOLS, "tools")
    _at_most("messages", len(req.messages), MAX_MESSAGES, "messages")
    _at_most("input" if req.kind == "embedding" else "prompt", len(req.prompts), MAX_PROMPTS, "inputs")
    _at_most("n", req.n, MAX_CHOICES, "choices")


def _at_most(param: str, count: int, limit: int, what: str) -> None:
    if count > limit:
        raise invalid(f"`{param}` has {count} {what}; this server accepts at most {limit}.", param)
