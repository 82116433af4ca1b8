"""Tokens of the text between special tokens, kept: a prompt tokenized again costs only its new pieces.

llama.cpp tokenizes a text in two steps (`llama_vocab::impl::tokenize`): it splits the text at every special
token's text (longest first), then tokenizes each piece between them on its own. A piece costs a fixed ~15 µs
(the pre-tokenizer's setup) plus ~2 µs a token, so a short chat of five pieces costs 130 µs where one piece would
cost 55, and an agent's conversation is tokenized whole again on every turn, though only its last message is new.
Chat templates put special tokens around every message, so the pieces are the messages: `FragmentTokenizer` does
the split here, exactly as llama.cpp does it, keeps each piece's tokens (least recently used dropped past
`MAX_BYTES` of text and tokens), and asks llama.cpp only for pieces it has not seen.

Exact only where llama.cpp's steps are as above: BPE and SentencePiece vocabularies (where each piece is tokenized
alone, a SentencePiece piece after the start or a special token, which every piece is), and special tokens whose
order llama.cpp does not leave to chance (its sort by length is not stable: two special tokens of one length that
can overlap would make the split depend on it). Other vocabularies keep llama.cpp's own call
(`FragmentTokenizer.for_vocab` returns None). A test compares the two on both test models, fuzzed.
"""

from __future__ import annotations

import re
import threading
from array import array
from collections import OrderedDict
from typing import Callable

VOCAB_SPM, VOCAB_BPE = 1, 2  # llama_vocab_type
ATTR_UNKNOWN, ATTR_CONTROL, ATTR_USER_DEFINED = 1 << 0, 1 << 3, 1 << 4
ATTR_LSTRIP, ATTR_RSTRIP = 1 << 7, 1 << 8
SPACES = b" \t\n\v\f\r"  # C's isspace, which llama.cpp strips with
SPACE_BYTES = frozenset(bytes([b]) for b in SPACES)
MAX_BYTES = 16 << 20
"""What the kept pieces may hold, their text and their tokens (4 bytes each): a long agent conversation is some
hundreds of kilobytes. A piece that would not fit alone is not kept."""
FEW_SPECIALS = 64
"""Up to this many special tokens, each is looked for in the text; past it (Gemma has 6,414) the text's bytes that
can start one are."""


class Special:
    """One special token as the split sees it."""

    __slots__ = ("text", "token", "lstrip", "rstrip", "always")

    def __init__(self, text: bytes, token: int, attr: int):
        self.text, self.token = text, token
        self.lstrip, self.rstrip = bool(attr & ATTR_LSTRIP), bool(attr & ATTR_RSTRIP)
        self.always = not attr & (ATTR_CONTROL | ATTR_UNKNOWN)  # user-defined: split even without parse_special


class FragmentTokenizer:
    def __init__(self, specials: list[Special], bos: int | None, eos: int | None,
                 tokenize_piece: Callable[[bytes], list[int]]):
        self.specials = sorted(specials, key=lambda s: -len(s.text))  # llama.cpp's order (ties never matter)
        self.by_text = {s.text: s for s in self.specials}
        self.lengths = sorted({len(s.text) for s in self.specials}, reverse=True)
        self.starts = re.compile(b"[" + b"".join(re.escape(bytes([b])) for b in {s.text[0] for s in specials}) + b"]")
        self.bos, self.eos = bos, eos  # added with add_special, where the vocabulary says to add them
        self.tokenize_piece = tokenize_piece  # llama.cpp, for a piece without special tokens
        self._kept: OrderedDict[bytes, array] = OrderedDict()
        self._kept_bytes = 0
        self._lock = threading.Lock()

    @classmethod
    def for_vocab(cls, vocab_type: int, specials: list[Special], bos: int | None, eos: int | None,
                  tokenize_piece: Callable[[bytes], list[int]]) -> FragmentTokenizer | None:
        """None where the split here could differ from llama.cpp's (see the module docstring). `tokenize_piece`
        is llama.cpp's tokenizer without special tokens (which adds a SentencePiece piece's leading space)."""
        if vocab_type not in (VOCAB_SPM, VOCAB_BPE) or any(not s.text for s in specials) or _ties_overlap(specials):
            return None
        return cls(specials, bos, eos, tokenize_piece)

    def tokenize(self, data: bytes, add_special: bool, parse_special: bool) -> list[int]:
        out: list[int] = [self.bos] if add_special and self.bos is not None else []
        for piece in self.split(data, parse_special):
            if isinstance(piece, int):
                out.append(piece)
            else:
                out.extend(self._piece(piece))
        if add_special and self.eos is not None:
            out.append(self.eos)
        return out

    def split(self, data: bytes, parse_special: bool) -> list[bytes | int]:
        """`tokenizer_st_partition`: for each special token that occurs, longest first, every text piece is
        cut at each of its occurrences, left to right, with the whitespace its LSTRIP/RSTRIP attributes take."""
        pieces: list[bytes | int] = [data] if data else []
        for special in self._occurring(data, parse_special):
            text, cut = special.text, []
            for piece in pieces:
                if isinstance(piece, int) or text not in piece:
                    cut.append(piece)
                    continue
                start = 0
                while (at := piece.find(text, start)) >= 0:
                    left = piece[start:at]
                    if special.lstrip:
                        left = left.rstrip(SPACES)
                    if left:
                        cut.append(left)
                    cut.append(special.token)
                    start = at + len(text)
                    if special.rstrip:
                        while start < len(piece) and piece[start] in SPACES:
                            start += 1
                if start < len(piece):
                    cut.append(piece[start:])
            pieces = cut
        return pieces

    def _occurring(self, data: bytes, parse_special: bool) -> list[Special]:
        """The special tokens whose text occurs in `data`, in llama.cpp's order. With many (Gemma's thousands),
        found from the bytes that can start one: a few lookups per `<` rather than a search per token."""
        if len(self.specials) <= FEW_SPECIALS:
            occurring = [s for s in self.specials if s.text in data]
        else:
            starts = [match.start() for match in self.starts.finditer(data)]
            found = {data[at:at + n] for at in starts for n in self.lengths if data[at:at + n] in self.by_text}
            occurring = sorted((self.by_text[t] for t in found), key=lambda s: -len(s.text))
        return [s for s in occurring if parse_special or s.always]

    def _piece(self, piece: bytes) -> array:
        with self._lock:
            tokens = self._kept.get(piece)
            if tokens is not None:
                self._kept.move_to_end(piece)
                return tokens
        tokens = array("i", self.tokenize_piece(piece))
        size = _size(piece, tokens)
        with self._lock:
            if piece not in self._kept and size <= MAX_BYTES:
                self._kept[piece] = tokens
                self._kept_bytes += size
            while self._kept_bytes > MAX_BYTES and self._kept:
                self._kept_bytes -= _size(*self._kept.popitem(last=False))
        return tokens


def _size(piece: bytes, tokens: array) -> int:
    return len(piece) + tokens.itemsize * len(tokens)


def _ties_overlap(specials: list[Special]) -> bool:
    """Whether two special tokens of one length can meet in a text so that which of them llama.cpp's unstable
    sort puts first decides the split: one's end is the other's start, the same text twice, or one strips the
    whitespace the other starts or ends with. (A token overlapping itself is cut left to right either way.)"""
    if len({s.text for s in specials}) != len(specials):
        return True
    prefixes: dict[tuple[int, bytes], set[bytes]] = {}
    for s in specials:
        for k in range(1, len(s.text)):
            prefixes.setdefault((len(s.text), s.text[:k]), set()).add(s.text)
    if any(prefixes.get((len(s.text), s.text[k:]), {s.text}) - {s.text}
           for s in specials for k in range(1, len(s.text))):
        return True
    stripping = {len(s.text) for s in specials if s.lstrip or s.rstrip}
    return any(len(s.text) in stripping and (s.text[:1] in SPACE_BYTES or s.text[-1:] in SPACE_BYTES)
               for s in specials)
