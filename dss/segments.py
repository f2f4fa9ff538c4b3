"""STAR segmentation and chunk -> token weights (no model needed).

A response is cut into cumulative prefixes `response[:cut]`; the guardrail scores each prefix once
(`safe_prob[k]` for `char_ends[k]`). Cuts are character offsets into the original response, so
prefixes keep its exact whitespace and any tokenizer (guardrail or policy) can be mapped onto
them through character spans.

Empty and whitespace-only responses get the single cut 0: the empty prefix is scored once, so
every example has K >= 1 scores and its tokens (end-of-turn included) get that score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from transformers import PreTrainedTokenizerBase

_WORD = re.compile(r"\S+")


@dataclass
class Trajectory:
    """STAR scores of one response: `safe_prob[k]` = P(safe) of `response[:char_ends[k]]`."""

    char_ends: list[int]
    safe_prob: np.ndarray  # [K] float

    def __post_init__(self):
        self.safe_prob = np.asarray(self.safe_prob, np.float32)
        _check_scores(self.char_ends, self.safe_prob)


def _check_scores(char_ends: Sequence[int], safe_prob: np.ndarray) -> None:
    if len(char_ends) == 0 or np.shape(safe_prob) != (len(char_ends),):
        raise ValueError(
            f"need K >= 1 cuts and one score per cut, got {len(char_ends)} cuts and "
            f"scores of shape {np.shape(safe_prob)}"
        )
    if any(b <= a for a, b in zip(char_ends, char_ends[1:])) or char_ends[0] < 0:
        raise ValueError(f"cuts must be increasing offsets >= 0, got {list(char_ends)}")


def _every_nth(ends: Sequence[int], n: int) -> list[int]:
    """Every n-th end plus the last one, without repeats; [0] when there are none."""
    if n < 1:
        raise ValueError(f"chunk_size must be >= 1, got {n}")
    if not ends:
        return [0]
    cuts = list(dict.fromkeys(ends[n - 1 :: n]))
    if not cuts or cuts[-1] != ends[-1]:
        cuts.append(ends[-1])
    return cuts


def word_cuts(response: str, chunk_size: int = 5) -> list[int]:
    """End offsets of every `chunk_size`-th whitespace-separated word, plus the last word's end.

    Trailing whitespace after the last word is never part of a scored prefix.
    """
    return _every_nth([m.end() for m in _WORD.finditer(response)], chunk_size)


def token_cuts(response: str, tokenizer: PreTrainedTokenizerBase, chunk_size: int) -> list[int]:
    """End offsets of every `chunk_size`-th token of `response` (tokenized alone, without
    special tokens), plus the end of the last token.

    Prefixes are whole tokens, so the last one includes trailing whitespace. Tokens that share an
    end offset (pieces of one multi-byte character) give one cut. A whitespace-only response gets
    [0], as in word mode.
    """
    if not response.strip():
        return _every_nth([], chunk_size)
    enc = tokenizer(response, add_special_tokens=False, return_offsets_mapping=True)
    return _every_nth([end for _, end in enc["offset_mapping"]], chunk_size)


def token_weights(
    traj: Trajectory,
    token_char_spans: Sequence[tuple[int, int]] | np.ndarray,
    after_response: Sequence[bool] | np.ndarray | None = None,
) -> np.ndarray:
    """STAR weight of each policy response token: the score of the first prefix of `traj` that
    contains the token's whole text (first cut >= its end).

    Tokens ending past the last cut (trailing whitespace, an end-of-turn token given the empty
    span (len, len)) get the last score, as do tokens flagged in `after_response` (end-of-turn
    and other template tokens whose spans are meaningless, e.g. HF's (0, 0) for special tokens).
    Returns float32 [n_tokens].
    """
    spans = np.asarray(token_char_spans, np.int64).reshape(-1, 2)
    last = len(traj.char_ends) - 1
    k = np.minimum(np.searchsorted(np.asarray(traj.char_ends), spans[:, 1], side="left"), last)
    if after_response is not None:
        k = np.where(np.asarray(after_response, bool), last, k)
    return traj.safe_prob[k]


def rs_weight(safe_prob: np.ndarray, mode: str = "hard", threshold: float = 0.5) -> np.float32:
    """Static-shaping (RS) weight of one example from its full-response score (last prefix):
    hard = 1 if P(safe) >= threshold else 0 (the guardrail's own verdict at 0.5); soft = P(safe).
    """
    full = np.float32(np.asarray(safe_prob)[-1])
    if mode == "hard":
        return np.float32(full >= threshold)
    if mode == "soft":
        return full
    raise ValueError(f"rs mode must be 'hard' or 'soft', got {mode!r}")
