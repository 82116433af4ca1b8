"""Agent-noise rules: what the defaults do to the lines clients vary, the counts, and bad rules as ConfigErrors."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, load_settings
from gateway.prompt_rules import DEFAULT_RULES, PromptRules, parse_rules
from gateway.types import Message

BILLING = "x-anthropic-billing-header: cc_version=2.1.37.0d9; cc_entrypoint=cli; cch=fa690;"


def apply(system: str, rules=DEFAULT_RULES) -> tuple[list[Message], PromptRules]:
    prompt_rules = PromptRules(parse_rules(rules))
    return prompt_rules.apply([Message("system", system), Message("user", "hi")]), prompt_rules


def test_the_billing_line_is_stripped_and_counted():
    messages, rules = apply(f"{BILLING}\nYou are Claude Code.")
    assert messages[0] == Message("system", "You are Claude Code.")
    assert rules.counts()["anthropic-billing-header"] == {"applied": 1, "saved_chars": len("You are Claude Code.")}
    assert rules.counts()["current-date"] == {"applied": 0, "saved_chars": 0}


def test_a_system_prompt_of_noise_only_is_dropped():
    messages, _ = apply(BILLING)
    assert messages == [Message("user", "hi")]


@pytest.mark.parametrize("line", ["Today's date is 2026-11-29.", "Current date: 2026-11-30", "today's date: Monday"])
def test_a_date_line_moves_to_the_end_so_the_text_before_it_stays_the_same(line):
    messages, rules = apply(f"You are helpful.\n{line}\nUse tools wisely.\nBe brief.")
    assert messages[0].content == f"You are helpful.\nUse tools wisely.\nBe brief.\n{line}"
    assert rules.counts()["current-date"]["applied"] == 1


def test_two_prompts_differing_only_in_the_date_share_everything_before_it():
    first, _ = apply("Today's date is 2026-11-29.\nA long system prompt.")
    second, _ = apply("Today's date is 2026-11-30.\nA long system prompt.")
    assert first[0].content.startswith("A long system prompt.\n")
    assert first[0].content.split("\n")[0] == second[0].content.split("\n")[0]


def test_only_system_messages_change():
    rules = PromptRules(parse_rules(DEFAULT_RULES))
    user = Message("user", f"{BILLING}\nToday's date is 2026-11-29.")
    assert rules.apply([user]) == [user]


@pytest.mark.parametrize("rule, message", [
    ({"name": "x", "pattern": "([", "action": "strip"}, r"`prompt_rules\[0\]` \(x\): `pattern` is not a valid"),
    ({"name": "x", "pattern": "a", "action": "delete"}, r"\(x\): `action` must be strip or move_to_end"),
    ({"name": "", "pattern": "a", "action": "strip"}, r"`name` must be a non-empty string"),
    ({"name": "x", "pattern": "a", "action": "strip", "flags": "i"}, r"unknown key\(s\) flags"),
    ("strip dates", r"must be a mapping"),
])
def test_a_bad_rule_is_a_config_error_that_names_it(rule, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env={}, overrides={"prompt_rules": [rule]})


def test_a_name_used_twice_is_a_config_error():
    rule = {"name": "x", "pattern": "a", "action": "strip"}
    with pytest.raises(ConfigError, match="used twice"):
        load_settings(env={}, overrides={"prompt_rules": [rule, rule]})
