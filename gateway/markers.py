"""Hold-back for text streamed token by token: how much of a text's end may still become a marker.

Stop strings (the engine) and reasoning or tool-call markers (the output stage) can be cut across tokens; the
end of the text that could be the start of one is held back until the next token decides.
"""

from __future__ import annotations

from typing import Iterable


def partial_marker_len(text: str, markers: Iterable[str]) -> int:
    """The length of the longest end of `text` that is a proper prefix of one of `markers`."""
    best = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:size]):
                best = size
                break
    return best
