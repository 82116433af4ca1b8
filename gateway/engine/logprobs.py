"""Log-probabilities of a sampled token and its top alternatives, computed only for jobs that ask.

The row of logits is read in place through numpy (one vectorised pass), so asking for logprobs costs one
softmax per token, and jobs that don't ask cost nothing.
"""

from __future__ import annotations

import ctypes

import numpy as np

from gateway.types import TokenLogprob


def token_logprobs(logits_ptr: ctypes.POINTER(ctypes.c_float), n_vocab: int, token: int, top_n: int,
                   pieces: list[bytes]) -> TokenLogprob:
    row = np.ctypeslib.as_array(logits_ptr, shape=(n_vocab,))
    peak = float(row.max())
    log_total = peak + float(np.log(np.exp(row - peak).sum()))
    top: list[tuple[str, float, list[int], int]] = []
    if top_n > 0:
        best = np.argpartition(row, -top_n)[-top_n:]
        for tok in best[np.argsort(row[best])[::-1]]:
            top.append(_entry(pieces, int(tok), float(row[tok]) - log_total))
    text, _, raw, _ = _entry(pieces, token, 0.0)
    return TokenLogprob(token=text, logprob=float(row[token]) - log_total, bytes=raw, top=top, id=token)


def _entry(pieces: list[bytes], token: int, logprob: float) -> tuple[str, float, list[int], int]:
    raw = pieces[token]
    return raw.decode("utf-8", errors="replace"), logprob, list(raw), token
