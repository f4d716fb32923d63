"""Word and character error rates (corpus level) with substitution / deletion / insertion counts.

Rates are corpus-level: the sum of edits over all utterances divided by the sum of reference lengths,
as in sclite and jiwer. Text is split on whitespace for words; for characters the text is first
stripped and its whitespace runs squeezed to one space (spaces count as characters, like jiwer's CER).

An empty reference contributes its hypothesis length as insertions and nothing to the denominator.
If the whole corpus has no reference tokens the rate is 0.0 when there are no edits and ``inf``
otherwise.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["ErrorCounts", "edit_distance", "align_counts", "error_counts", "wer", "cer"]


@dataclass(frozen=True)
class ErrorCounts:
    """Edit operation counts of one or more aligned reference/hypothesis pairs."""

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hits: int = 0

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def ref_length(self) -> int:
        """Number of reference tokens (hits + substitutions + deletions)."""
        return self.hits + self.substitutions + self.deletions

    @property
    def rate(self) -> float:
        """``errors / ref_length``; 0.0 or ``inf`` when there are no reference tokens."""
        if self.ref_length == 0:
            return 0.0 if self.errors == 0 else float("inf")
        return self.errors / self.ref_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            substitutions=self.substitutions + other.substitutions,
            deletions=self.deletions + other.deletions,
            insertions=self.insertions + other.insertions,
            hits=self.hits + other.hits,
        )

    def to_dict(self) -> dict:
        return {
            "substitutions": self.substitutions,
            "deletions": self.deletions,
            "insertions": self.insertions,
            "hits": self.hits,
            "ref_length": self.ref_length,
            "rate": self.rate,
        }


def _as_ids(ref_seq: Sequence[Hashable], hyp_seq: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    vocab: dict[Hashable, int] = {}
    ref = np.array([vocab.setdefault(x, len(vocab)) for x in ref_seq], dtype=np.int64)
    hyp = np.array([vocab.setdefault(x, len(vocab)) for x in hyp_seq], dtype=np.int64)
    return ref, hyp


def _distance_matrix(ref: np.ndarray, hyp: np.ndarray) -> np.ndarray:
    """Levenshtein table ``d[i, j]`` = distance between ``ref[:i]`` and ``hyp[:j]``, shape (R+1, H+1).

    Each row is vectorised: substitutions/deletions come from the row above, and the left-to-right
    insertion chain ``d[j] = min(v[j], d[j-1] + 1)`` is a running minimum of ``v[k] - k`` plus ``j``.
    """
    n_ref, n_hyp = len(ref), len(hyp)
    d = np.empty((n_ref + 1, n_hyp + 1), dtype=np.int64)
    cols = np.arange(n_hyp + 1)
    d[0] = cols
    for i in range(1, n_ref + 1):
        prev = d[i - 1]
        v = np.empty(n_hyp + 1, dtype=np.int64)
        v[0] = i
        v[1:] = np.minimum(prev[:-1] + (hyp != ref[i - 1]), prev[1:] + 1)
        d[i] = np.minimum.accumulate(v - cols) + cols
    return d


def edit_distance(ref_seq: Sequence[Hashable], hyp_seq: Sequence[Hashable]) -> int:
    """Levenshtein distance (unit costs) between two sequences of hashable items."""
    if not ref_seq or not hyp_seq:
        return max(len(ref_seq), len(hyp_seq))
    ref, hyp = _as_ids(ref_seq, hyp_seq)
    return int(_distance_matrix(ref, hyp)[-1, -1])


def align_counts(ref_seq: Sequence[Hashable], hyp_seq: Sequence[Hashable]) -> ErrorCounts:
    """Counts of one minimum-cost alignment (ties: prefer hit/substitution, then deletion)."""
    if not ref_seq or not hyp_seq:
        return ErrorCounts(deletions=len(ref_seq), insertions=len(hyp_seq))
    ref, hyp = _as_ids(ref_seq, hyp_seq)
    d = _distance_matrix(ref, hyp)
    i, j = len(ref), len(hyp)
    subs = dels = ins = hits = 0
    while i > 0 or j > 0:
        if i > 0 and j > 0 and d[i, j] == d[i - 1, j - 1] + (ref[i - 1] != hyp[j - 1]):
            if ref[i - 1] == hyp[j - 1]:
                hits += 1
            else:
                subs += 1
            i, j = i - 1, j - 1
        elif i > 0 and d[i, j] == d[i - 1, j] + 1:
            dels += 1
            i -= 1
        else:
            ins += 1
            j -= 1
    return ErrorCounts(substitutions=subs, deletions=dels, insertions=ins, hits=hits)


def _check_pair(refs: Sequence[str], hyps: Sequence[str]) -> None:
    if isinstance(refs, str) or isinstance(hyps, str):
        raise TypeError("refs and hyps must be sequences of strings, not single strings")
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")


def _chars(text: str) -> list[str]:
    return list(" ".join(text.split()))


def error_counts(refs: Sequence[str], hyps: Sequence[str], *, unit: str = "word") -> ErrorCounts:
    """Corpus-level edit counts; ``unit`` is ``"word"`` or ``"char"``."""
    _check_pair(refs, hyps)
    if unit == "word":
        split = str.split
    elif unit == "char":
        split = _chars
    else:
        raise ValueError(f"unit must be 'word' or 'char', not {unit!r}")
    total = ErrorCounts()
    for ref, hyp in zip(refs, hyps, strict=True):
        total = total + align_counts(split(ref), split(hyp))
    return total


def wer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus word error rate: ``sum(S + D + I) / sum(len(ref words))``."""
    return error_counts(refs, hyps, unit="word").rate


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Corpus character error rate (spaces included, whitespace runs squeezed)."""
    return error_counts(refs, hyps, unit="char").rate
