"""CTC tokenizers: characters or SentencePiece BPE pieces, with the CTC blank at index 0.

CLI (writes the tokenizer's JSON dict)::

    python -m asr.tokenizer --kind char --out tokenizer.json
    python -m asr.tokenizer --kind sentencepiece --text train.txt --vocab-size 256 --out tokenizer.json

Both tokenizers share one small interface:

* ``encode(text) -> list[int]`` and ``decode(ids) -> str`` (a plain id <-> text map: no CTC
  collapsing, see ``asr.decode`` for that);
* ``vocab_size``, ``blank_id`` (always 0), ``word_separator_id`` (always 1: the space between words);
* ``tokens``: one string per id, in the flashlight / HF convention: ``<blk>`` for the blank and ``|``
  for the word separator, so the list can be handed to ``flashlight-text`` as its token set;
* ``to_dict()`` / ``load_tokenizer(d)``: a JSON-safe dict stored inside checkpoints and bundles.

Input text must already be normalised (``audio.text.normalize_transcript``): lower-case ``a``–``z``,
the apostrophe and single spaces. Any other character (a digit, a symbol, an upper-case letter) raises
a ``ValueError`` that names it, so training code can filter such utterances instead of silently
learning ``<unk>``.

The SentencePiece tokenizer encodes each word on its own and puts the separator ``|`` between words
(pieces never carry SentencePiece's ``▁`` marker). Both tokenizers therefore spell a transcript as
``word | word | word`` over their units, which keeps CTC decoding, lexicons and forced alignment
identical for the two.
"""

from __future__ import annotations

import argparse
import base64
import io
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from audio.atomic import atomic_path, write_json

__all__ = [
    "ALPHABET",
    "BLANK_TOKEN",
    "WORD_SEPARATOR",
    "CharTokenizer",
    "SentencePieceTokenizer",
    "train_sentencepiece",
    "load_tokenizer",
    "spell",
    "main",
    "Tokenizer",
]

logger = logging.getLogger(__name__)

BLANK_TOKEN = "<blk>"
WORD_SEPARATOR = "|"
ALPHABET = "'abcdefghijklmnopqrstuvwxyz"
_ALLOWED = frozenset(ALPHABET + " ")


def _check_text(text: str) -> list[str]:
    """Split ``text`` into words, raising ``ValueError`` on the first character outside the alphabet."""
    for position, char in enumerate(text):
        if char not in _ALLOWED and not char.isspace():
            raise ValueError(
                f"cannot encode character {char!r} (U+{ord(char):04X}) at position {position} of {text!r}: "
                f"the tokenizer accepts only a-z, apostrophe and space; normalise the transcript first"
            )
    return text.split()


def _check_ids(ids: Iterable[int], vocab_size: int) -> list[int]:
    ids = [int(i) for i in ids]
    for i in ids:
        if not 0 <= i < vocab_size:
            raise ValueError(f"token id {i} is outside the vocabulary [0, {vocab_size})")
    return ids


class CharTokenizer:
    """Characters: ``0 = <blk>``, ``1 = space (|)``, ``2 = '``, ``3..28 = a..z`` (29 ids)."""

    kind = "char"
    blank_id = 0
    word_separator_id = 1

    def __init__(self) -> None:
        self._chars = [BLANK_TOKEN, " ", *ALPHABET]
        self._char_to_id = {c: i for i, c in enumerate(self._chars) if i != self.blank_id}

    @property
    def vocab_size(self) -> int:
        return len(self._chars)

    @property
    def tokens(self) -> list[str]:
        """Token strings for flashlight: ``<blk>``, ``|``, ``'``, ``a`` … ``z``."""
        return [BLANK_TOKEN, WORD_SEPARATOR, *ALPHABET]

    def encode(self, text: str) -> list[int]:
        """Map normalised ``text`` to ids; words are joined by ``word_separator_id``, with none at the ends."""
        words = _check_text(text)
        return [self._char_to_id[c] for c in " ".join(words)]

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids back to text. Blanks are skipped and runs of separators become one space."""
        ids = _check_ids(ids, self.vocab_size)
        text = "".join(self._chars[i] for i in ids if i != self.blank_id)
        return " ".join(text.split())

    def to_dict(self) -> dict:
        return {"type": self.kind}

    @classmethod
    def from_dict(cls, d: dict) -> CharTokenizer:
        if d.get("type") != cls.kind:
            raise ValueError(f"not a char tokenizer dict: {d.get('type')!r}")
        return cls()

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


class SentencePieceTokenizer:
    """BPE word pieces from a SentencePiece model.

    Ids: ``0 = <blk>``, ``1 = |`` (word separator), then ``sp_id + 2`` for every SentencePiece id
    (SentencePiece's own id 0 is ``<unk>``, so ours is 2). ``<unk>`` cannot come out of ``encode``
    (the alphabet check runs first and every letter is in the model) and ``decode`` drops it.
    """

    kind = "sentencepiece"
    blank_id = 0
    word_separator_id = 1
    _OFFSET = 2

    def __init__(self, model_proto: bytes) -> None:
        import sentencepiece as spm

        self._model_proto = bytes(model_proto)
        self._sp = spm.SentencePieceProcessor(model_proto=self._model_proto)
        self._unk_sp_id = self._sp.unk_id()
        self._pieces = [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]
        self._word_cache: dict[str, list[int]] = {}

    @property
    def vocab_size(self) -> int:
        return len(self._pieces) + self._OFFSET

    @property
    def tokens(self) -> list[str]:
        """Token strings for flashlight: ``<blk>``, ``|``, then the SentencePiece pieces."""
        return [BLANK_TOKEN, WORD_SEPARATOR, *self._pieces]

    @property
    def model_proto(self) -> bytes:
        """The serialised SentencePiece model."""
        return self._model_proto

    def _encode_word(self, word: str) -> list[int]:
        ids = self._word_cache.get(word)
        if ids is None:
            ids = [i + self._OFFSET for i in self._sp.encode(word, out_type=int)]
            if self._unk_sp_id + self._OFFSET in ids:
                raise ValueError(f"word {word!r} has characters that the SentencePiece model does not cover")
            if len(self._word_cache) < 200_000:
                self._word_cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Map normalised ``text`` to ids: each word's pieces, words joined by ``word_separator_id``."""
        ids: list[int] = []
        for n, word in enumerate(_check_text(text)):
            if n:
                ids.append(self.word_separator_id)
            ids.extend(self._encode_word(word))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Map ids back to text. Blanks and ``<unk>`` are skipped; separators become single spaces."""
        ids = _check_ids(ids, self.vocab_size)
        parts = []
        for i in ids:
            if i == self.blank_id or i == self._unk_sp_id + self._OFFSET:
                continue
            parts.append(" " if i == self.word_separator_id else self._pieces[i - self._OFFSET])
        return " ".join("".join(parts).split())

    def to_dict(self) -> dict:
        return {"type": self.kind, "model": base64.b64encode(self._model_proto).decode("ascii")}

    @classmethod
    def from_dict(cls, d: dict) -> SentencePieceTokenizer:
        if d.get("type") != cls.kind:
            raise ValueError(f"not a sentencepiece tokenizer dict: {d.get('type')!r}")
        return cls(base64.b64decode(d["model"]))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer(vocab_size={self.vocab_size})"


def train_sentencepiece(
    texts: Iterable[str],
    vocab_size: int,
    model_prefix: str | os.PathLike | None = None,
) -> SentencePieceTokenizer:
    """Train a BPE SentencePiece model on normalised transcripts.

    Args:
        texts: normalised transcripts (training set only). Each word is a SentencePiece "sentence",
            so pieces never cross word boundaries.
        vocab_size: wanted size of *our* vocabulary, blank and separator included (>= 30). The BPE
            limit is soft: a tiny corpus may give fewer pieces.
        model_prefix: if given, also write ``{model_prefix}.model`` (atomically).

    Raises:
        ValueError: a transcript has a character outside the alphabet, or ``vocab_size`` is too small.
    """
    import sentencepiece as spm

    minimum = SentencePieceTokenizer._OFFSET + 1 + len(ALPHABET)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (blank, separator, <unk> and 27 characters)")

    def words() -> Iterable[str]:
        for text in texts:
            yield from _check_text(text)
        # Every character once, so each is a piece even if the corpus lacks it.
        yield from ALPHABET

    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(words()),
        model_writer=writer,
        vocab_size=vocab_size - SentencePieceTokenizer._OFFSET,
        model_type="bpe",
        character_coverage=1.0,
        unk_id=0,
        bos_id=-1,
        eos_id=-1,
        pad_id=-1,
        add_dummy_prefix=False,
        normalization_rule_name="identity",
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tokenizer = SentencePieceTokenizer(writer.getvalue())
    logger.info("trained SentencePiece BPE: %d ids (asked for %d)", tokenizer.vocab_size, vocab_size)
    if model_prefix is not None:
        with atomic_path(f"{os.fspath(model_prefix)}.model") as tmp:
            tmp.write_bytes(tokenizer.model_proto)
    return tokenizer


Tokenizer = CharTokenizer | SentencePieceTokenizer

_KINDS = {CharTokenizer.kind: CharTokenizer, SentencePieceTokenizer.kind: SentencePieceTokenizer}


def load_tokenizer(d: dict) -> Tokenizer:
    """Rebuild a tokenizer from ``tokenizer.to_dict()``."""
    kind = d.get("type")
    if kind not in _KINDS:
        raise ValueError(f"unknown tokenizer type {kind!r}; expected one of {sorted(_KINDS)}")
    return _KINDS[kind].from_dict(d)


def spell(words: Sequence[str], tokenizer: Tokenizer) -> list[list[str]]:
    """Token strings of each word (no separator): the spellings used by lexicons and token LMs."""
    tokens = tokenizer.tokens
    return [[tokens[i] for i in tokenizer.encode(word)] for word in words]


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m asr.tokenizer", description="Write a tokenizer JSON."
    )
    parser.add_argument("--kind", choices=sorted(_KINDS), default="char")
    parser.add_argument("--out", required=True, type=Path, help="tokenizer JSON to write")
    parser.add_argument(
        "--text", type=Path, help="normalised training transcripts, one per line (sentencepiece)"
    )
    parser.add_argument("--vocab-size", type=int, default=256, help="ids including blank and separator")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.kind == CharTokenizer.kind:
        tokenizer: Tokenizer = CharTokenizer()
    else:
        if args.text is None:
            parser.error("--kind sentencepiece needs --text")
        texts, skipped = [], 0
        for line in args.text.read_text(encoding="utf-8").splitlines():
            try:
                _check_text(line)
            except ValueError:
                skipped += 1
                continue
            texts.append(line)
        if skipped:
            logger.warning("skipped %d transcripts with characters outside the alphabet", skipped)
        try:
            tokenizer = train_sentencepiece(texts, args.vocab_size)
        except (ValueError, RuntimeError) as e:
            logger.error("%s", e)
            return 1
    write_json(args.out, tokenizer.to_dict())
    logger.info("wrote %s: %r", args.out, tokenizer)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
