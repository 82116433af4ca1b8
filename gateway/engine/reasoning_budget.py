"""A reasoning budget: after `budget` tokens of reasoning the engine itself writes the close marker.

Anthropic's `thinking.budget_tokens` promises that reasoning stops within the budget, and a small model left to
itself may reason until max_tokens and never answer. The executor asks `next_forced()` before sampling and feeds
the marker's tokens instead of sampling them (they are recorded in the sampler, so penalties and a grammar stay
in step), then the model answers as after any reasoning. Text is read per token, with a tail kept so that a
marker cut across tokens is still seen.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass
class ReasoningBudget:
    """What a job's budget needs: the limit, the markers and the close marker's tokens."""

    budget: int
    open: str
    close: str
    close_tokens: list[int]
    opened: bool  # the prompt already opened reasoning


class BudgetTracker:
    def __init__(self, spec: ReasoningBudget):
        self.spec = spec
        self.inside = spec.opened
        self.done = False
        self.spent = 0
        self._tail = ""
        self._forced: deque[int] = deque()

    def next_forced(self) -> int | None:
        return self._forced.popleft() if self._forced else None

    def observe(self, piece: str) -> None:
        """One generated token's text."""
        if self.done:
            return
        text = self._tail + piece
        marker = self.spec.close if self.inside else self.spec.open
        if marker in text:
            if self.inside:
                self.done, self._forced = True, deque()
                return
            self.inside, self.spent, text = True, 0, text[text.index(marker) + len(marker):]
        elif self.inside:
            self.spent += 1
            if self.spent >= self.spec.budget and not self._forced:
                self._forced = deque(self.spec.close_tokens)
        self._tail = text[-max(len(self.spec.open), len(self.spec.close)):]
