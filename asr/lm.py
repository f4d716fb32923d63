"""Interpolated modified Kneser-Ney n-gram language models in ARPA format, and a small ARPA scorer.

``estimate_kneser_ney`` counts n-grams of whitespace-separated units (words, or the token strings of
a tokenizer for a lexicon-free decoder) and returns an ``ArpaLM``; ``ArpaLM.write`` saves it as an
ARPA file (atomically) that KenLM / flashlight-text read, and ``ArpaLM.load`` reads any ARPA file back.

The estimate follows Chen & Goodman (1998) as KenLM's ``lmplz`` implements it:

* Sentences are ``<s> w1 … wk </s>`` (a single ``<s>``). ``<s>`` is only ever a context: its
  unigram probability is written as ``-99`` and it is left out of every distribution.
* The highest order uses raw counts; lower orders use continuation counts (the number of distinct
  words seen to the left), except n-grams that begin with ``<s>``, which keep their raw counts.
* Discounts ``D1, D2, D3+`` per order come from the count-of-counts ``t1..t4`` of those adjusted
  counts: ``Y = t1 / (t1 + 2 t2)``, ``Dk = k - (k + 1) Y t(k+1) / tk``. A corpus too small for that
  (a zero ``tk``, or a ``Dk`` outside ``[0, k]``) falls back to ``(0.5, 1.0, 1.5)``, as KenLM's
  ``--discount_fallback`` does.
* ``p(w | h) = max(a(hw) - D(a(hw)), 0) / a(h·) + γ(h) p(w | h')`` with
  ``γ(h) = (D1 N1(h·) + D2 N2(h·) + D3 N3+(h·)) / a(h·)``; unigrams interpolate with the uniform
  distribution over the vocabulary (every seen word, ``</s>`` and ``<unk>``, not ``<s>``).
* Written as ARPA: each seen n-gram gets its interpolated probability and each context its backoff
  weight ``γ(h)``, so ARPA backoff reproduces the interpolated model exactly. With
  ``prune_singletons`` the n-grams of order >= 3 seen once are dropped and the backoff weights of the
  affected contexts are recomputed so every distribution still sums to one.

All probabilities in this module are log10, as in ARPA files and KenLM.

CLI::

    python -m asr.lm --text train.txt --order 3 --out lm.arpa [--prune-singletons] [--units chars]
"""

from __future__ import annotations

import argparse
import gzip
import logging
import math
import os
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path

from audio.atomic import atomic_path

__all__ = [
    "BOS",
    "EOS",
    "UNK",
    "ArpaLM",
    "estimate_kneser_ney",
    "kneser_ney_discounts",
    "write_arpa",
    "token_sentences",
    "open_arpa",
    "main",
]

logger = logging.getLogger(__name__)

BOS, EOS, UNK = "<s>", "</s>", "<unk>"
_BOS_ID, _EOS_ID, _UNK_ID = 0, 1, 2
LOG10_ZERO = -99.0
FALLBACK_DISCOUNTS = (0.5, 1.0, 1.5)
MAX_ORDER = 6

NGram = tuple[int, ...]


def open_arpa(path: str | os.PathLike):
    """An ARPA file opened for reading as text, gzipped (``.gz``, as model folders keep it) or plain."""
    if str(path).endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


class ArpaLM:
    """A backoff n-gram LM held as ARPA tables.

    ``tables[n - 1]`` maps an n-gram (a tuple of word ids) to ``(log10 prob, log10 backoff)``;
    ``vocab[i]`` is the word of id ``i``. Ids 0, 1, 2 are ``<s>``, ``</s>``, ``<unk>``.
    """

    def __init__(self, vocab: Sequence[str], tables: Sequence[dict[NGram, tuple[float, float]]]) -> None:
        if list(vocab[:3]) != [BOS, EOS, UNK]:
            raise ValueError("vocab must start with <s>, </s>, <unk>")
        self.vocab = list(vocab)
        self.word_to_id = {w: i for i, w in enumerate(self.vocab)}
        self.tables = list(tables)
        self.discounts: list[tuple[float, float, float]] | None = None  # set by estimate_kneser_ney

    @property
    def order(self) -> int:
        return len(self.tables)

    @property
    def words(self) -> list[str]:
        """The unigram vocabulary without ``<s>``, ``</s>`` and ``<unk>``."""
        return self.vocab[3:]

    def _id(self, word: str) -> int:
        return self.word_to_id.get(word, _UNK_ID)

    def _log10_prob_ids(self, word: int, context: NGram) -> float:
        context = context[max(0, len(context) - (self.order - 1)) :] if self.order > 1 else ()
        backoff = 0.0
        for start in range(len(context) + 1):
            ngram = context[start:] + (word,)
            entry = self.tables[len(ngram) - 1].get(ngram)
            if entry is not None:
                return entry[0] + backoff
            ctx = context[start:]
            ctx_entry = self.tables[len(ctx) - 1].get(ctx) if ctx else None
            if ctx_entry is not None:
                backoff += ctx_entry[1]
        raise KeyError(f"word id {word} has no unigram")

    def log10_prob(self, word: str, context: Sequence[str] = ()) -> float:
        """log10 p(word | context) by ARPA backoff; ``context`` is the preceding words, oldest first.

        Unknown words (in ``word`` or ``context``) are mapped to ``<unk>``. ``context`` may start with
        ``<s>``.
        """
        return self._log10_prob_ids(self._id(word), tuple(self._id(w) for w in context))

    def sentence_logprob(self, words: Sequence[str] | str, *, bos: bool = True, eos: bool = True) -> float:
        """Total log10 probability of a sentence (``</s>`` included when ``eos``)."""
        if isinstance(words, str):
            words = words.split()
        ids = [self._id(w) for w in words] + ([_EOS_ID] if eos else [])
        context: tuple[int, ...] = (_BOS_ID,) if bos else ()
        total = 0.0
        for word in ids:
            total += self._log10_prob_ids(word, context)
            context = (context + (word,))[-(self.order - 1) :] if self.order > 1 else ()
        return total

    def counts(self) -> list[int]:
        """Number of n-grams of each order, lowest first."""
        return [len(t) for t in self.tables]

    def write(self, path: str | os.PathLike) -> None:
        """Write the model as an ARPA file (atomically)."""
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
            f.write("\n\\data\\\n")
            for n, table in enumerate(self.tables, start=1):
                f.write(f"ngram {n}={len(table)}\n")
            # The text of an n-gram is its prefix's text plus one word; every prefix is in the table below.
            prefix_text: dict[NGram, str] = {}
            for n, table in enumerate(self.tables, start=1):
                f.write(f"\n\\{n}-grams:\n")
                vocab = self.vocab
                if n == 1:
                    texts = {g: vocab[g[0]] for g in table}
                else:
                    texts = {
                        g: f"{prefix_text.get(g[:-1]) or ' '.join(vocab[i] for i in g[:-1])} {vocab[g[-1]]}"
                        for g in table
                    }
                if n == self.order:
                    f.writelines(f"{logp:.7g}\t{texts[g]}\n" for g, (logp, _) in table.items())
                else:
                    f.writelines(f"{logp:.7g}\t{texts[g]}\t{bow:.7g}\n" for g, (logp, bow) in table.items())
                prefix_text = texts
            f.write("\n\\end\\\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ArpaLM:
        """Read an ARPA file (ours or any other: missing backoffs are 0, ``<unk>`` is added if absent)."""
        vocab = [BOS, EOS, UNK]
        word_to_id = {w: i for i, w in enumerate(vocab)}
        tables: list[dict[NGram, tuple[float, float]]] = []
        expected: list[int] = []
        section = None
        with open_arpa(path) as f:
            for line_no, raw in enumerate(f, start=1):
                line = raw.strip()
                if not line:
                    continue
                if line == "\\data\\":
                    section = "data"
                    continue
                if line == "\\end\\":
                    break
                if line.startswith("\\") and line.endswith("-grams:"):
                    n = int(line[1:].split("-", 1)[0])
                    while len(tables) < n:
                        tables.append({})
                    section = n
                    continue
                if section == "data":
                    if line.startswith("ngram "):
                        expected.append(int(line.split("=", 1)[1]))
                    continue
                if not isinstance(section, int):
                    continue
                parts = line.split()
                n = section
                if len(parts) not in (n + 1, n + 2):
                    raise ValueError(f"{path}:{line_no}: malformed {n}-gram line {line!r}")
                ids = []
                for w in parts[1 : n + 1]:
                    if w not in word_to_id:
                        word_to_id[w] = len(vocab)
                        vocab.append(w)
                    ids.append(word_to_id[w])
                bow = float(parts[n + 1]) if len(parts) == n + 2 else 0.0
                tables[n - 1][tuple(ids)] = (float(parts[0]), bow)
        if not tables:
            raise ValueError(f"{path}: no n-gram sections found")
        for n, (want, table) in enumerate(zip(expected, tables, strict=False), start=1):
            if want != len(table):
                raise ValueError(f"{path}: header says {want} {n}-grams, found {len(table)}")
        if (_UNK_ID,) not in tables[0]:
            tables[0][(_UNK_ID,)] = (LOG10_ZERO, 0.0)
        return cls(vocab, tables)


def kneser_ney_discounts(count_of_counts: Sequence[int]) -> tuple[float, float, float]:
    """Modified KN discounts ``(D1, D2, D3+)`` from ``t1..t4``; the fallback when they are unusable."""
    t1, t2, t3, t4 = (int(c) for c in count_of_counts[:4])
    if min(t1, t2, t3, t4) <= 0:
        return FALLBACK_DISCOUNTS
    y = t1 / (t1 + 2 * t2)
    discounts = (1 - 2 * y * t2 / t1, 2 - 3 * y * t3 / t2, 3 - 4 * y * t4 / t3)
    if not all(0.0 <= d <= k for k, d in enumerate(discounts, start=1)):
        return FALLBACK_DISCOUNTS
    return discounts


def _count(sentences: Iterable[Sequence[str]], order: int) -> tuple[list[str], list[Counter]]:
    vocab = [BOS, EOS, UNK]
    word_to_id = {w: i for i, w in enumerate(vocab)}
    counts = [Counter() for _ in range(order)]
    n_sentences = n_empty = 0
    for sentence in sentences:
        words = sentence.split() if isinstance(sentence, str) else list(sentence)
        if not words:
            n_empty += 1
            continue
        seq = [_BOS_ID]
        for w in words:
            if w in (BOS, EOS):
                raise ValueError(f"sentence {n_sentences + n_empty} contains the reserved word {w!r}")
            i = word_to_id.get(w)
            if i is None:
                i = word_to_id[w] = len(vocab)
                vocab.append(w)
            seq.append(i)
        seq.append(_EOS_ID)
        n_sentences += 1
        for n in range(1, order + 1):
            counts[n - 1].update(zip(*(seq[k:] for k in range(n)), strict=False))
    if n_sentences == 0:
        raise ValueError("no non-empty sentences to estimate a language model from")
    if n_empty:
        logger.info("skipped %d empty sentences", n_empty)
    logger.info("counted %d sentences, %d word types", n_sentences, len(vocab) - 3)
    return vocab, counts


def _adjusted_counts(counts: list[Counter]) -> list[dict[NGram, int]]:
    """Raw counts at the top order and for ``<s>``-initial n-grams, continuation counts elsewhere."""
    order = len(counts)
    adjusted: list[dict[NGram, int]] = [dict() for _ in range(order)]
    adjusted[-1] = dict(counts[-1])
    for n in range(order - 1, 0, -1):  # n = length of the lower order
        cont: dict[NGram, int] = defaultdict(int)
        for ngram in counts[n]:
            cont[ngram[1:]] += 1
        table = adjusted[n - 1]
        for ngram, raw in counts[n - 1].items():
            if ngram[0] == _BOS_ID:
                table[ngram] = raw
            else:
                table[ngram] = cont[ngram]
    adjusted[0].pop((_BOS_ID,), None)
    return adjusted


def estimate_kneser_ney(
    sentences: Iterable[Sequence[str] | str],
    *,
    order: int = 3,
    prune_singletons: bool = False,
    discounts: Sequence[Sequence[float]] | None = None,
) -> ArpaLM:
    """Estimate an interpolated modified Kneser-Ney LM.

    Args:
        sentences: one sentence per item, as a string (split on whitespace) or a list of words.
            Training transcripts only. Empty sentences are skipped.
        order: n-gram order, 1..6 (3 is the usual word LM; token LMs for lexicon-free decoding
            want 5 or 6).
        prune_singletons: drop n-grams of order >= 3 seen once (raw count 1).
        discounts: optional fixed ``(D1, D2, D3+)`` per order, lowest first, instead of the estimate
            from count-of-counts (for tests and tiny corpora).

    Returns:
        The model as ARPA tables (log10 probabilities and backoff weights).
    """
    if not 1 <= order <= MAX_ORDER:
        raise ValueError(f"order must be in 1..{MAX_ORDER}, not {order}")
    if discounts is not None and len(discounts) != order:
        raise ValueError(f"need one discount triple per order ({order}), got {len(discounts)}")
    started = time.perf_counter()
    vocab, counts = _count(sentences, order)
    adjusted = _adjusted_counts(counts)

    all_discounts = []
    for n in range(1, order + 1):
        if discounts is not None:
            d = tuple(float(x) for x in discounts[n - 1])
        else:
            coc = Counter(a for a in adjusted[n - 1].values() if a <= 4)
            d = kneser_ney_discounts([coc[k] for k in range(1, 5)])
            if d == FALLBACK_DISCOUNTS:
                logger.warning(
                    "order %d: count-of-counts %s unusable, using fallback discounts %s",
                    n,
                    [coc[k] for k in range(1, 5)],
                    d,
                )
        all_discounts.append(d)

    by_count = [(0.0, *d) for d in all_discounts]  # by_count[n - 1][min(a, 3)] = D(a) at order n

    def discount(n: int, a: int) -> float:
        return by_count[n - 1][a if a < 3 else 3]

    # Unigrams: interpolate with the uniform distribution over every word except <s>.
    uni = adjusted[0]
    uni.setdefault((_UNK_ID,), 0)
    vocab_size = len(vocab) - 1
    total = sum(uni.values())
    gamma0 = sum(discount(1, a) for a in uni.values() if a > 0) / total
    probs: list[dict[NGram, float]] = [dict() for _ in range(order)]
    probs[0] = {g: max(a - discount(1, a), 0.0) / total + gamma0 / vocab_size for g, a in uni.items()}
    gammas: list[dict[NGram, float]] = [dict() for _ in range(order)]  # gammas[n-1]: contexts of length n

    for n in range(2, order + 1):
        table = adjusted[n - 1]
        stats: dict[NGram, list[float]] = defaultdict(lambda: [0, 0.0])
        for g, a in table.items():
            s = stats[g[:-1]]
            s[0] += a
            s[1] += discount(n, a)
        gamma = {h: s[1] / s[0] for h, s in stats.items()}
        totals = {h: s[0] for h, s in stats.items()}
        lower = probs[n - 2]
        probs[n - 1] = {
            g: max(a - discount(n, a), 0.0) / totals[g[:-1]] + gamma[g[:-1]] * lower[g[1:]]
            for g, a in table.items()
        }
        gammas[n - 2] = gamma

    backoffs: list[dict[NGram, float]] = [dict(g) for g in gammas]
    if prune_singletons and order >= 3:
        for n in range(3, order + 1):
            raw = counts[n - 1]
            pruned_by_context: dict[NGram, list[NGram]] = defaultdict(list)
            for g in list(probs[n - 1]):
                if raw[g] == 1:
                    pruned_by_context[g[:-1]].append(g)
            kept_mass: dict[NGram, list[float]] = defaultdict(lambda: [0.0, 0.0])
            for g, p in probs[n - 1].items():
                if raw[g] > 1:
                    m = kept_mass[g[:-1]]
                    m[0] += p
                    m[1] += probs[n - 2][g[1:]]
            for h, pruned in pruned_by_context.items():
                for g in pruned:
                    del probs[n - 1][g]
                kept_p, kept_lower = kept_mass.get(h, (0.0, 0.0))
                backoffs[n - 2][h] = max(1.0 - kept_p, 0.0) / max(1.0 - kept_lower, 1e-12)
            # A context left without extensions backs off with weight one.
            live = {g[:-1] for g in probs[n - 1]}
            for h in list(backoffs[n - 2]):
                if h not in live:
                    del backoffs[n - 2][h]
            logger.info("order %d: pruned %d singletons", n, sum(len(v) for v in pruned_by_context.values()))

    def log10(x: float) -> float:
        return math.log10(x) if x > 0 else LOG10_ZERO

    tables: list[dict[NGram, tuple[float, float]]] = []
    for n in range(1, order + 1):
        bows = backoffs[n - 1] if n < order else {}
        table = {g: (log10(p), log10(bows[g]) if g in bows else 0.0) for g, p in probs[n - 1].items()}
        if n == 1:
            table = {
                (_BOS_ID,): (LOG10_ZERO, log10(bows[(_BOS_ID,)]) if (_BOS_ID,) in bows else 0.0),
                **table,
            }
        tables.append(table)
    lm = ArpaLM(vocab, tables)
    lm.discounts = all_discounts
    logger.info("estimated %d-gram KN LM %s in %.1f s", order, lm.counts(), time.perf_counter() - started)
    return lm


def write_arpa(
    sentences: Iterable[Sequence[str] | str],
    path: str | os.PathLike,
    *,
    order: int = 3,
    prune_singletons: bool = False,
) -> ArpaLM:
    """Estimate a modified Kneser-Ney LM from ``sentences`` and write it to ``path`` (ARPA, atomic)."""
    lm = estimate_kneser_ney(sentences, order=order, prune_singletons=prune_singletons)
    lm.write(path)
    return lm


def token_sentences(texts: Iterable[str], tokenizer) -> Iterable[list[str]]:
    """Spell normalised transcripts as the tokenizer's token strings (``|`` between words).

    This is the text of a token-level LM for a lexicon-free decoder, e.g. ``h e l l o | w o r l d``.
    """
    tokens = tokenizer.tokens
    for text in texts:
        yield [tokens[i] for i in tokenizer.encode(text)]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog or "python -m asr.lm", description=__doc__.split("\n")[0])
    parser.add_argument("--text", required=True, type=Path, help="training transcripts, one per line")
    parser.add_argument("--out", required=True, type=Path, help="ARPA file to write")
    parser.add_argument("--order", type=int, default=3, help="n-gram order (default 3)")
    parser.add_argument(
        "--prune-singletons", action="store_true", help="drop n-grams of order >= 3 seen once"
    )
    parser.add_argument(
        "--units",
        choices=("words", "chars"),
        default="words",
        help="words (default) or character tokens with | between words, for lexicon-free decoding",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    lines = args.text.read_text(encoding="utf-8").splitlines()
    if args.units == "chars":
        from asr.tokenizer import CharTokenizer

        sentences: Iterable = token_sentences(lines, CharTokenizer())
    else:
        sentences = lines
    try:
        lm = write_arpa(sentences, args.out, order=args.order, prune_singletons=args.prune_singletons)
    except ValueError as e:
        logger.error("%s", e)
        return 1
    logger.info("wrote %s (%s n-grams)", args.out, lm.counts())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
