"""The kept-pieces tokenizer must give exactly llama.cpp's tokens: fuzzed against llama.cpp's own call on both
test models (a BPE vocabulary of 17 special tokens, a SentencePiece one of 6,414), every flag combination."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

from gateway.engine import fragment_tokens
from gateway.engine.fragment_tokens import ATTR_CONTROL, ATTR_LSTRIP, ATTR_RSTRIP, FragmentTokenizer, Special
from gateway.engine.llama import LlamaModel, LoadParams
from gateway.models.embedded import embedded_model_path
from tests.models import gemma_test_model

CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "llm-gateway" / "test-models"
WORDS = ["hello", " world", "Hello", "héllo", "日本語", "🙂", "123", "4.5", "def f(x):", "\n", "\n\n", " ", "  ",
         "\t", "'s", "<", ">", "|", "<|", "|>", "<|im_", "<start_of_turn", "_of_turn>", "user", "model",
         "assistant", "system", "</s>", "<b>", "[multimodal]", "   \n", "x<y>z"]


@pytest.fixture(scope="module", params=["smollm2", "gemma3"])
def model(request) -> LlamaModel:
    if request.param == "smollm2":
        path = embedded_model_path()
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        path = gemma_test_model(CACHE)
    return LlamaModel(str(path), LoadParams(vocab_only=True))


def texts(model: LlamaModel, count: int) -> list[str]:
    assert model.fragments is not None  # both test models' vocabularies are split here
    rng = random.Random(20261130)
    specials = [s.text.decode("utf-8", "replace") for s in model.fragments.specials]
    common = specials[:40]  # the longest; and the ones a template uses
    used = [t for t in ("<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>", "<bos>", "<eos>",
                        "<|endoftext|>") if t in specials]
    out = ["", " ", "hi", used[0], used[0] * 3, " " + used[0] + " ", used[0] + "\n" + used[-1]]
    for _ in range(count):
        parts = [rng.choice(WORDS + used * 3 + [rng.choice(common), rng.choice(specials)])
                 for _ in range(rng.randint(1, 14))]
        out.append("".join(parts))
    return out


def test_the_same_tokens_as_llama_cpp(model: LlamaModel):
    for text in texts(model, 400):
        data = text.encode()
        for add_special in (False, True):
            for parse_special in (False, True):
                expected = model._tokenize(data, add_special, parse_special)
                assert model.fragments.tokenize(data, add_special, parse_special) == expected, (
                    text, add_special, parse_special)


def test_a_rendered_chat_and_a_repeat_with_one_new_message(model: LlamaModel):
    chatml = b"<|im_start|>" in model.fragments.by_text
    start, end = ("<|im_start|>", "<|im_end|>") if chatml else ("<start_of_turn>", "<end_of_turn>")
    turns = [("system", "You are terse. " * 50), ("user", "What is 2+2?"), ("assistant", "4."), ("user", "And 3+3?")]
    chat = "".join(f"{start}{role}\n{text}{end}\n" for role, text in turns)
    assert model.tokenize(chat, True, True) == model._tokenize(chat.encode(), True, True)
    longer = chat + f"{start}assistant\n6.{end}\n"
    asked = []
    tokenize_piece = model.fragments.tokenize_piece
    model.fragments.tokenize_piece = lambda piece: asked.append(piece) or tokenize_piece(piece)
    try:
        assert model.tokenize(longer, True, True) == model._tokenize(longer.encode(), True, True)
    finally:
        model.fragments.tokenize_piece = tokenize_piece
    assert len(asked) == 1 and asked[0].endswith(b"6.")  # only the new message went to llama.cpp


def split_with(specials: list[Special], text: bytes, parse_special: bool = True) -> list:
    tokenizer = FragmentTokenizer.for_vocab(fragment_tokens.VOCAB_BPE, specials, None, None, lambda piece: [])
    assert tokenizer is not None
    return tokenizer.split(text, parse_special)


def test_the_split_follows_llama_cpp():
    """Longest first, left to right, LSTRIP/RSTRIP taking whitespace, control tokens only with parse_special."""
    a, ab = Special(b"<a>", 1, ATTR_CONTROL), Special(b"<a><b>", 2, ATTR_CONTROL)
    assert split_with([a, ab], b"x<a><b>y<a>") == [b"x", 2, b"y", 1]
    left = Special(b"<l>", 3, ATTR_CONTROL | ATTR_LSTRIP)
    right = Special(b"<r>", 4, ATTR_CONTROL | ATTR_RSTRIP)
    assert split_with([left, right], b"x \n<l> y<r> \t z<r>") == [b"x", 3, b" y", 4, b"z", 4]
    assert split_with([a], b"x<a>", parse_special=False) == [b"x<a>"]
    user = Special(b"<u>", 5, fragment_tokens.ATTR_USER_DEFINED)
    assert split_with([a, user], b"<a><u>", parse_special=False) == [b"<a>", 5]


def test_ties_that_can_overlap_keep_llama_cpps_own_call():
    """`<ab` and `b>x` have one length and overlap in `<ab>x`: llama.cpp's unstable sort decides, so no split."""
    specials = [Special(b"<ab", 1, ATTR_CONTROL), Special(b"b>x", 2, ATTR_CONTROL)]
    assert FragmentTokenizer.for_vocab(fragment_tokens.VOCAB_BPE, specials, None, None, lambda p: []) is None
    assert FragmentTokenizer.for_vocab(7, [Special(b"<a>", 1, ATTR_CONTROL)], None, None, lambda p: []) is None


def test_kept_pieces_are_bounded(monkeypatch):
    """Text and tokens together (here 1 + 4 bytes a byte of text): the least recently used go first, and a piece
    too big to keep alone is tokenized and not kept."""
    monkeypatch.setattr(fragment_tokens, "MAX_BYTES", 50)
    tokenizer = FragmentTokenizer.for_vocab(fragment_tokens.VOCAB_BPE, [Special(b"<a>", 1, ATTR_CONTROL)], None,
                                            None, lambda piece: list(range(len(piece))))
    for n in range(1, 8):
        tokenizer.tokenize(b"x" * n + b"<a>", False, True)
    assert tokenizer._kept_bytes == 35 and list(tokenizer._kept) == [b"x" * 7]  # 6 x's (30) and 7 (35) > 50
    tokenizer.tokenize(b"x" * 3 + b"<a>", False, True)
    assert list(tokenizer._kept) == [b"x" * 7, b"x" * 3]
    assert tokenizer.tokenize(b"y" * 20 + b"<a>", False, True) == [*range(20), 1]  # 100 bytes: not kept
    assert list(tokenizer._kept) == [b"x" * 7, b"x" * 3]
