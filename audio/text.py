"""Transcript normalisation shared by the ASR recipes and the corpus builder.

References and hypotheses must be normalised the same way before scoring, so there is one function.
It is English-only: letters outside a–z that have no accent-free form (Greek, CJK, ...) are removed.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["normalize_transcript"]

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_NOT_KEPT = re.compile(r"[^a-z0-9' ]+")
_LONE_APOSTROPHES = re.compile(r"(?<![a-z0-9])'+|'+(?![a-z0-9])")


def normalize_transcript(text: str) -> str:
    """Lower-case ``text`` and keep only ``a``–``z``, digits, the apostrophe and single spaces.

    * Accents are folded (``café`` -> ``cafe``); curly apostrophes become ``'``.
    * Every other character (punctuation, hyphens, symbols, other scripts) becomes a word break,
      so ``well-known`` -> ``well known``.
    * Apostrophes survive only inside words (``don't``); quote-like ones at word edges go.
    * Digits are left alone, **not** spelled out: ``"3 cats"`` stays ``"3 cats"``. The ASR
      tokenizer rejects or skips characters outside its alphabet, so corpora with numerals should
      use an already-expanded text (as LJSpeech's normalised column is).
    """
    folded = unicodedata.normalize("NFKD", text)
    folded = "".join(ch for ch in folded if not unicodedata.combining(ch))
    folded = folded.translate(_APOSTROPHES).lower()
    folded = _NOT_KEPT.sub(" ", folded)
    folded = _LONE_APOSTROPHES.sub(" ", folded)
    return " ".join(folded.split())
