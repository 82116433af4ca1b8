"""Agent noise: rules that strip or move lines of a system prompt that change on every request, before it is
templated and tokenized.

A prefix cache (in memory or on disk) reuses a prompt only up to its first differing token. Some clients put a
value that changes per request or per day near the top of a long system prompt: Claude Code's
`x-anthropic-billing-header: ...; cch=<hash>;` line, a "Today's date is ..." line. Left in place, it makes every
prompt differ from that line on, and the thousands of tokens after it are computed again each time. A rule is a
regular expression (multiline: `^` and `$` match at line ends) and an action: `strip` removes what it matches,
`move_to_end` moves it to the end of the system prompt, so the model still sees it but the text before it stays
the same. Rules apply to system messages only; a system message left empty is dropped.

What each rule did is counted per model: how many prompts it changed, and how many characters of system prompt
followed its first match (the text that a changing line there would have kept out of the prefix cache).
Characters, not tokens: counting tokens would mean tokenizing the system prompt a second time per request.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass, replace

from gateway.types import Message

ACTIONS = ("strip", "move_to_end")

DEFAULT_RULES: list[dict[str, str]] = [
    {"name": "anthropic-billing-header", "pattern": r"^x-anthropic-billing-header:.*$\n*", "action": "strip"},
    {"name": "current-date", "pattern": r"(?i)^.*\b(?:today's date|current date)\b.*$\n?", "action": "move_to_end"},
]
"""Claude Code's per-request billing line is dropped (it means nothing to a local model); a date line is kept
but moved to the end of the system prompt."""


@dataclass(frozen=True)
class PromptRule:
    name: str
    pattern: re.Pattern[str]
    action: str


def parse_rules(entries: list, where: str = "prompt_rules") -> list[PromptRule]:
    """Rules from settings: each a mapping {name, pattern, action}. A ValueError names the bad rule."""
    rules: list[PromptRule] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ValueError(f"`{where}[{i}]` must be a mapping with name, pattern and action, got {entry!r}")
        name = entry.get("name")
        label = f"`{where}[{i}]`" + (f" ({name})" if isinstance(name, str) else "")
        unknown = set(entry) - {"name", "pattern", "action"}
        if unknown:
            raise ValueError(f"{label}: unknown key(s) {', '.join(sorted(unknown))}")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{label}: `name` must be a non-empty string")
        if any(r.name == name for r in rules):
            raise ValueError(f"{label}: the name {name!r} is used twice")
        if entry.get("action") not in ACTIONS:
            raise ValueError(f"{label}: `action` must be strip or move_to_end, got {entry.get('action')!r}")
        pattern = entry.get("pattern")
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"{label}: `pattern` must be a non-empty regular expression")
        try:
            compiled = re.compile(pattern, re.MULTILINE)
        except re.error as exc:
            raise ValueError(f"{label}: `pattern` is not a valid regular expression: {exc}") from None
        rules.append(PromptRule(name, compiled, entry["action"]))
    return rules


class PromptRules:
    """The rules of one server, with what they did for one model (`counts`). `apply` may be called from any
    request thread."""

    def __init__(self, rules: list[PromptRule]):
        self.rules = rules
        self._lock = threading.Lock()
        self._counts = {r.name: {"applied": 0, "saved_chars": 0} for r in rules}

    def apply(self, messages: list[Message]) -> list[Message]:
        if not self.rules or not any(m.role == "system" and m.content for m in messages):
            return messages
        out = []
        for message in messages:
            if message.role == "system" and message.content:
                text = self._normalise(message.content)
                if not text.strip():
                    continue
                message = replace(message, content=text)
            out.append(message)
        return out

    def _normalise(self, text: str) -> str:
        for rule in self.rules:
            matches = list(rule.pattern.finditer(text))
            if not matches or all(m.end() == m.start() for m in matches):
                continue
            saved = len(text) - matches[0].end()
            rest = rule.pattern.sub("", text)
            if rule.action == "move_to_end":
                moved = "\n".join(m.group(0).rstrip("\n") for m in matches)
                rest = f"{rest.rstrip(chr(10))}\n{moved}" if rest.strip() else moved
            with self._lock:
                counts = self._counts[rule.name]
                counts["applied"] += 1
                counts["saved_chars"] += saved
            text = rest
        return text

    def counts(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {name: dict(c) for name, c in self._counts.items()}
