"""Each list a request may send has a bound, and the 400 past it names the field and the limit."""

from __future__ import annotations

import pytest

from gateway import limits
from gateway.limits import check_limits
from gateway.types import GatewayError, InternalRequest, Message, SamplingParams, Tool


def request(**fields) -> InternalRequest:
    sampling = fields.pop("sampling", SamplingParams())
    return InternalRequest(kind=fields.pop("kind", "chat"), model="m", sampling=sampling, **fields)


@pytest.mark.parametrize(("req", "param"), [
    (request(sampling=SamplingParams(stop=["x"] * (limits.MAX_STOP_STRINGS + 1))), "stop"),
    (request(sampling=SamplingParams(stop=["x" * (limits.MAX_STOP_LENGTH + 1)])), "stop"),
    (request(sampling=SamplingParams(stop_token_ids=[1] * (limits.MAX_STOP_TOKEN_IDS + 1))), "stop_token_ids"),
    (request(sampling=SamplingParams(logit_bias={i: 1.0 for i in range(limits.MAX_LOGIT_BIAS + 1)})), "logit_bias"),
    (request(tools=[Tool("f")] * (limits.MAX_TOOLS + 1)), "tools"),
    (request(messages=[Message("user", "hi")] * (limits.MAX_MESSAGES + 1)), "messages"),
    (request(kind="embedding", prompts=["x"] * (limits.MAX_PROMPTS + 1)), "input"),
    (request(kind="completion", prompts=["x"] * (limits.MAX_PROMPTS + 1)), "prompt"),
])
def test_past_a_limit_is_a_400_naming_the_field(req, param):
    with pytest.raises(GatewayError) as info:
        check_limits(req)
    assert info.value.param == param and "at most" in info.value.message


def test_at_the_limits_is_fine():
    check_limits(request(sampling=SamplingParams(stop=["x" * limits.MAX_STOP_LENGTH] * limits.MAX_STOP_STRINGS),
                         tools=[Tool("f")] * limits.MAX_TOOLS, messages=[Message("user", "hi")] * 10))
