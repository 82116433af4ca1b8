"""Per-sequence text output: UTF-8-safe incremental decoding and stop strings matched across token boundaries.

A token's bytes may end in the middle of a multi-byte character, and a stop string may span several tokens, so
text is released only when it can no longer change: incomplete characters and any tail that could still grow
into a stop string are held back. A stop string itself is released only when the job asks for it
(vLLM's include_stop_str_in_output).
"""

from __future__ import annotations

import codecs

from gateway.markers import partial_marker_len


class TextStream:
    """Turns token bytes into releasable text for one sequence."""

    def __init__(self, stops: list[str] | None = None, include_stop: bool = False):
        self._include_stop = include_stop
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._stops = [s for s in (stops or []) if s]
        self._held = ""
        self.matched_stop: str | None = None

    def push(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that is now final (may be empty)."""
        self._held += self._decoder.decode(piece)
        if not self._stops:
            out, self._held = self._held, ""
            return out
        cut = -1
        for stop in self._stops:
            pos = self._held.find(stop)
            if pos != -1 and (cut == -1 or pos < cut):
                cut, self.matched_stop = pos, stop
        if cut != -1:
            if self._include_stop:
                cut += len(self.matched_stop)
            out, self._held = self._held[:cut], ""
            return out
        keep = partial_marker_len(self._held, self._stops)
        out = self._held[: len(self._held) - keep]
        self._held = self._held[len(self._held) - keep:]
        return out

    def flush(self) -> str:
        """At the end of generation, whatever was held back is final (unless a stop string was matched)."""
        if self.matched_stop is not None:
            return ""
        out = self._held + self._decoder.decode(b"", final=True)
        self._held = ""
        return out
