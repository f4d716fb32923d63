"""CTC decoders: greedy, prefix beam search, and flashlight-text beam search with an n-gram LM.

Every decoder takes CTC log-probabilities ``log_probs`` of shape ``(B, T, V)`` (float, natural log,
``T`` in acoustic frames, ``V = tokenizer.vocab_size``, blank at index ``tokenizer.blank_id``) and
``lengths`` of shape ``(B,)`` (valid frames per utterance), and returns one ``Hypothesis`` per
utterance: the text, the emitted token ids and the frame index at which each token is emitted
(multiply by the model's frame shift in seconds for a rough timestamp; ``asr.align`` gives word spans).

* ``greedy_decode``: best path, collapse repeats, drop blanks.
* ``prefix_beam_search``: CTC prefix beam search without LM (sums over alignments of a prefix).
* ``LMBeamSearchDecoder``: flashlight-text's beam search (through ``torchaudio.models.decoder``) with
  its bundled KenLM reading an ARPA file written by ``asr.lm``, either

  - **lexicon** mode (default): a word 3-/4-gram LM; words are restricted to a lexicon built from the
    LM's unigrams (or a given word list), each spelled with our tokens and ``|``;
  - **lexicon-free** mode: a *token*-level LM (``asr.lm.token_sentences``, order 5-6), any spelling.

* ``tune_lm_weights``: grid search of ``lm_weight`` x ``word_score`` minimising dev WER.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from asr.lm import open_arpa
from asr.metrics import wer
from asr.tokenizer import WORD_SEPARATOR, Tokenizer

__all__ = [
    "Hypothesis",
    "DecoderConfig",
    "greedy_decode",
    "prefix_beam_search",
    "LMBeamSearchDecoder",
    "read_arpa_words",
    "tune_lm_weights",
]

logger = logging.getLogger(__name__)

_NEG_INF = float("-inf")
# Log-probability given to every token but "|" in the closing frame that lexicon mode appends.
_CLOSING_FILL = -1.0e4


@dataclass(frozen=True)
class Hypothesis:
    """One decoded utterance.

    ``token_ids[i]`` is emitted at frame ``frames[i]`` (0-based acoustic frame). ``score`` is the
    decoder's log score: the best path's log-probability (greedy), the prefix's total
    log-probability (prefix beam search), or flashlight's acoustic + weighted LM score.
    """

    text: str
    token_ids: tuple[int, ...]
    frames: tuple[int, ...]
    score: float


@dataclass(frozen=True)
class DecoderConfig:
    """Options of ``LMBeamSearchDecoder``.

    Attributes:
        beam: hypotheses kept per frame.
        lm_weight: weight of the LM's log10 score added to the acoustic natural-log score.
        word_score: bonus added per word (lexicon mode). In lexicon-free mode it is flashlight's
            ``sil_score``, added for every frame emitting the separator ``|``: about once per word
            boundary for peaky CTC output.
        beam_threshold: hypotheses scoring more than this below the best are dropped.
        beam_size_token: tokens tried per frame (``None``: all).
        lexicon: lexicon mode (word LM) if true, lexicon-free (token LM) if false.
        unk_score: score of a word outside the lexicon; ``None`` forbids them.
    """

    beam: int = 50
    lm_weight: float = 2.0
    word_score: float = 0.0
    beam_threshold: float = 25.0
    beam_size_token: int | None = None
    lexicon: bool = True
    unk_score: float | None = None


def _check_inputs(
    log_probs: torch.Tensor, lengths: torch.Tensor | None, tokenizer: Tokenizer
) -> torch.Tensor:
    if log_probs.ndim != 3:
        raise ValueError(f"log_probs must be (B, T, V), got shape {tuple(log_probs.shape)}")
    if log_probs.shape[-1] != tokenizer.vocab_size:
        raise ValueError(f"log_probs has {log_probs.shape[-1]} classes, tokenizer {tokenizer.vocab_size}")
    batch, frames = log_probs.shape[:2]
    if lengths is None:
        return torch.full((batch,), frames, dtype=torch.long)
    lengths = torch.as_tensor(lengths).detach().cpu().long()
    if lengths.shape != (batch,):
        raise ValueError(f"lengths must have shape ({batch},), got {tuple(lengths.shape)}")
    if int(lengths.min()) < 0 or int(lengths.max()) > frames:
        raise ValueError(f"lengths must be in [0, {frames}], got {lengths.tolist()}")
    return lengths


def collapse_path(path: Sequence[int], blank: int) -> tuple[list[int], list[int]]:
    """Collapse a frame-level CTC path into (token ids, frame of each token's first frame)."""
    ids, frames = [], []
    prev = blank
    for t, token in enumerate(path):
        if token != blank and token != prev:
            ids.append(token)
            frames.append(t)
        prev = token
    return ids, frames


def greedy_decode(
    log_probs: torch.Tensor, lengths: torch.Tensor | None, tokenizer: Tokenizer
) -> list[Hypothesis]:
    """Best-path decoding.

    Args:
        log_probs: ``(B, T, V)`` CTC log-probabilities.
        lengths: ``(B,)`` valid frames per utterance (``None``: all ``T``).
        tokenizer: maps ids to text; its ``blank_id`` is the CTC blank.

    Returns:
        ``B`` hypotheses; ``score`` is the best path's log-probability.
    """
    lengths = _check_inputs(log_probs, lengths, tokenizer)
    best, best_ids = log_probs.detach().float().cpu().max(dim=-1)  # (B, T), (B, T)
    out = []
    for b, length in enumerate(lengths.tolist()):
        ids, frames = collapse_path(best_ids[b, :length].tolist(), tokenizer.blank_id)
        score = float(best[b, :length].sum())
        out.append(Hypothesis(tokenizer.decode(ids), tuple(ids), tuple(frames), score))
    return out


def _logaddexp(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    if b == _NEG_INF:
        return a
    return a + math.log1p(math.exp(b - a))


class _Prefix:
    """Scores of one prefix at one frame: ending in blank / in its last token, plus its frames."""

    __slots__ = ("blank", "non_blank", "frames", "frames_score")

    def __init__(self) -> None:
        self.blank = _NEG_INF
        self.non_blank = _NEG_INF
        self.frames: tuple[int, ...] = ()
        self.frames_score = _NEG_INF

    def total(self) -> float:
        return _logaddexp(self.blank, self.non_blank)

    def keep_frames(self, frames: tuple[int, ...], score: float) -> None:
        # A prefix sums many alignments; report the frames of the strongest contribution.
        if score > self.frames_score:
            self.frames, self.frames_score = frames, score


def _prefix_beam_search_one(log_probs: np.ndarray, blank: int, beam: int, token_prune: float) -> tuple:
    beams: dict[tuple[int, ...], _Prefix] = {(): _Prefix()}
    beams[()].blank = 0.0
    for t in range(log_probs.shape[0]):
        lp = log_probs[t]
        candidates = np.flatnonzero(lp >= lp.max() - token_prune).tolist()
        blank_lp = float(lp[blank])
        nxt: dict[tuple[int, ...], _Prefix] = {}
        for prefix, scores in beams.items():
            total = scores.total()
            entry = nxt.get(prefix)
            if entry is None:
                entry = nxt[prefix] = _Prefix()
            entry.blank = _logaddexp(entry.blank, total + blank_lp)
            entry.keep_frames(scores.frames, total + blank_lp)
            last = prefix[-1] if prefix else None
            for token in candidates:
                if token == blank:
                    continue
                p = float(lp[token])
                extended = prefix + (token,)
                ext = nxt.get(extended)
                if ext is None:
                    ext = nxt[extended] = _Prefix()
                if token == last:
                    # A repeat without a blank in between stays in the same prefix ...
                    entry.non_blank = _logaddexp(entry.non_blank, scores.non_blank + p)
                    entry.keep_frames(scores.frames, scores.non_blank + p)
                    # ... and only a path that went through a blank starts a new token.
                    ext.non_blank = _logaddexp(ext.non_blank, scores.blank + p)
                    ext.keep_frames(scores.frames + (t,), scores.blank + p)
                else:
                    ext.non_blank = _logaddexp(ext.non_blank, total + p)
                    ext.keep_frames(scores.frames + (t,), total + p)
        ranked = sorted(nxt.items(), key=lambda item: item[1].total(), reverse=True)
        beams = dict(ranked[:beam])
    prefix, scores = max(beams.items(), key=lambda item: item[1].total())
    return prefix, scores.frames, scores.total()


def prefix_beam_search(
    log_probs: torch.Tensor,
    lengths: torch.Tensor | None,
    tokenizer: Tokenizer,
    *,
    beam: int = 10,
    token_prune: float = 12.0,
) -> list[Hypothesis]:
    """CTC prefix beam search without a language model (Hannun et al. 2014, without the LM term).

    Args:
        log_probs: ``(B, T, V)`` CTC log-probabilities.
        lengths: ``(B,)`` valid frames per utterance (``None``: all ``T``).
        tokenizer: maps ids to text; its ``blank_id`` is the CTC blank.
        beam: prefixes kept per frame.
        token_prune: at each frame only tokens within this many nats of the frame's best are tried.

    Returns:
        ``B`` hypotheses; ``score`` is the log of the summed probability of all alignments of the
        prefix that survived the beam.
    """
    if beam < 1:
        raise ValueError("beam must be >= 1")
    lengths = _check_inputs(log_probs, lengths, tokenizer)
    array = log_probs.detach().float().cpu().numpy()
    out = []
    for b, length in enumerate(lengths.tolist()):
        ids, frames, score = _prefix_beam_search_one(array[b, :length], tokenizer.blank_id, beam, token_prune)
        out.append(Hypothesis(tokenizer.decode(ids), tuple(ids), tuple(frames), score))
    return out


def read_arpa_words(path: str | os.PathLike) -> list[str]:
    """The unigram words of an ARPA file, without ``<s>``, ``</s>`` and ``<unk>``."""
    words = []
    in_unigrams = False
    with open_arpa(path) as f:
        for line in f:
            line = line.strip()
            if line == "\\1-grams:":
                in_unigrams = True
            elif in_unigrams:
                if line.startswith("\\"):
                    break
                parts = line.split()
                if len(parts) >= 2 and parts[1] not in ("<s>", "</s>", "<unk>"):
                    words.append(parts[1])
    if not in_unigrams:
        raise ValueError(f"{path}: no \\1-grams: section")
    return words


class _Resources:
    """What decoders built from one LM share: the KenLM object and the lexicon files."""

    def __init__(self, tokenizer: Tokenizer, lm_path: str | None, lexicon: bool, words: Iterable[str] | None):
        from flashlight.lib.text.dictionary import Dictionary

        self.tokenizer = tokenizer
        self.lexicon = lexicon
        self.lexicon_text = self.dict_text = ""  # file contents for ctc_decoder, which reads paths
        if lexicon:
            if words is None:
                if lm_path is None:
                    raise ValueError("lexicon mode needs an LM or a word list")
                words = read_arpa_words(lm_path)
            spelled, skipped = {}, 0
            tokens = tokenizer.tokens
            for word in words:
                try:
                    ids = tokenizer.encode(word)
                except ValueError:
                    skipped += 1
                    continue
                if len(ids) == 0 or tokenizer.word_separator_id in ids:
                    skipped += 1
                    continue
                spelled.setdefault(word, [tokens[i] for i in ids] + [WORD_SEPARATOR])
            if not spelled:
                raise ValueError("no lexicon word can be spelled with the tokenizer")
            if skipped:
                logger.warning("lexicon: skipped %d words the tokenizer cannot spell", skipped)
            self.lexicon_text = "".join(f"{w}\t{' '.join(s)}\n" for w, s in spelled.items())
            # flashlight's own word dictionary comes from an unordered map; a file fixes the order so that
            # the KenLM built here and the decoder agree on word indices.
            word_list = [*spelled, "<unk>"]
            self.dict_text = "".join(f"{w}\n" for w in word_list)
            self.n_words = len(spelled)
            lm_dictionary = Dictionary(word_list)
        else:
            # A token LM: flashlight scores token ids, so the LM dictionary must be the token list itself
            # (torchaudio's lexicon-free path shuffles it through an unordered map).
            lm_dictionary = Dictionary(tokenizer.tokens)
            self.n_words = 0
        self.lm = None
        if lm_path is not None:
            from flashlight.lib.text.decoder.kenlm import KenLM

            self.lm = KenLM(str(lm_path), lm_dictionary)


class LMBeamSearchDecoder:
    """flashlight-text CTC beam search with a KenLM n-gram LM (an ARPA file from ``asr.lm``).

    Args:
        tokenizer: the acoustic model's tokenizer (blank 0, ``|`` as word separator).
        lm_path: ARPA file: a word LM for lexicon mode, a token LM (``asr.lm.token_sentences``) for
            lexicon-free mode; ``None`` decodes without LM.
        config: beam size, weights and mode.
        words: lexicon words (lexicon mode); default: the LM's unigrams.

    Call it like the other decoders: ``decoder(log_probs (B, T, V), lengths (B,)) -> list[Hypothesis]``.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        lm_path: str | os.PathLike | None = None,
        config: DecoderConfig = DecoderConfig(),
        words: Iterable[str] | None = None,
        _resources: _Resources | None = None,
    ) -> None:
        if tokenizer.tokens[tokenizer.word_separator_id] != WORD_SEPARATOR:
            raise ValueError("the tokenizer needs a '|' word separator token")
        if _resources is None:
            _resources = _Resources(
                tokenizer, None if lm_path is None else str(lm_path), config.lexicon, words
            )
        elif _resources.lexicon != config.lexicon:
            raise ValueError("cannot switch between lexicon and lexicon-free mode on shared resources")
        self.tokenizer = tokenizer
        self.config = config
        self._resources = _resources
        self._decoder = self._build()

    def _build(self):
        from torchaudio.models.decoder import ctc_decoder

        c, r = self.config, self._resources
        common = dict(
            tokens=self.tokenizer.tokens,
            lm=r.lm,
            nbest=1,
            beam_size=c.beam,
            beam_size_token=c.beam_size_token,
            beam_threshold=c.beam_threshold,
            lm_weight=c.lm_weight,
            blank_token=self.tokenizer.tokens[self.tokenizer.blank_id],
            sil_token=WORD_SEPARATOR,
            unk_word="<unk>",
        )
        if c.lexicon:
            with tempfile.TemporaryDirectory(prefix="glottis-decoder-") as tmp:
                lexicon, lm_dict = Path(tmp) / "lexicon.txt", Path(tmp) / "words.txt"
                lexicon.write_text(r.lexicon_text, encoding="utf-8")
                lm_dict.write_text(r.dict_text, encoding="utf-8")
                return ctc_decoder(
                    lexicon=str(lexicon),
                    lm_dict=str(lm_dict),
                    word_score=c.word_score,
                    unk_score=_NEG_INF if c.unk_score is None else c.unk_score,
                    sil_score=0.0,
                    **common,
                )
        return ctc_decoder(lexicon=None, sil_score=c.word_score, **common)

    def with_config(self, config: DecoderConfig) -> LMBeamSearchDecoder:
        """A decoder with other weights that shares this one's LM and lexicon (cheap)."""
        return LMBeamSearchDecoder(self.tokenizer, lm_path=None, config=config, _resources=self._resources)

    def __call__(self, log_probs: torch.Tensor, lengths: torch.Tensor | None = None) -> list[Hypothesis]:
        """Decode a batch.

        Args:
            log_probs: ``(B, T, V)`` CTC log-probabilities (natural log).
            lengths: ``(B,)`` valid frames per utterance (``None``: all ``T``).

        Returns:
            ``B`` hypotheses; ``frames`` are 0-based acoustic frames.
        """
        tokenizer = self.tokenizer
        lengths = _check_inputs(log_probs, lengths, tokenizer)
        emissions = log_probs.detach().to(device="cpu", dtype=torch.float32)
        sep = tokenizer.word_separator_id
        if self.config.lexicon:
            # Lexicon words end in "|", but CTC targets have no "|" after the last word: append one frame
            # where only "|" is possible so the last word can be completed.
            batch, frames, vocab = emissions.shape
            padded = torch.full((batch, frames + 1, vocab), _CLOSING_FILL, dtype=torch.float32)
            for b, length in enumerate(lengths.tolist()):
                padded[b, :length] = emissions[b, :length]
                padded[b, length, sep] = 0.0
            emissions, decode_lengths = padded, lengths + 1
        else:
            emissions, decode_lengths = emissions.contiguous(), lengths
        results = self._decoder(emissions, decode_lengths.to(torch.int32))
        out = []
        for b, length in enumerate(lengths.tolist()):
            if not results[b]:
                out.append(Hypothesis("", (), (), _NEG_INF))
                continue
            best = results[b][0]
            ids, frames = [], []
            # torchaudio's timesteps count flashlight's start state as step 0: frame = timestep - 1.
            for token, step in zip(best.tokens.tolist(), best.timesteps.tolist(), strict=True):
                frame = step - 1
                if not 0 <= frame < length or token == tokenizer.blank_id:
                    continue
                if token == sep and (not ids or ids[-1] == sep):
                    continue
                ids.append(token)
                frames.append(frame)
            if self.config.lexicon:
                # Flashlight may end on a hypothesis that stopped inside a word (when every complete
                # one was pruned): its tokens spell the started word but `words` does not hold it.
                # Keep only the tokens of complete lexicon words.
                n_words, cut = 0, len(ids)
                for i, token in enumerate(ids):
                    if token == sep:
                        n_words += 1
                        if n_words == len(best.words):
                            cut = i
                            break
                if not best.words:
                    cut = 0
                ids, frames = ids[:cut], frames[:cut]
            if ids and ids[-1] == sep:
                ids.pop()
                frames.pop()
            out.append(Hypothesis(tokenizer.decode(ids), tuple(ids), tuple(frames), float(best.score)))
        return out


def tune_lm_weights(
    log_probs_list: Sequence[torch.Tensor],
    refs: Sequence[str],
    grid: Mapping[str, Sequence[float]],
    *,
    decoder: LMBeamSearchDecoder,
) -> tuple[DecoderConfig, list[dict]]:
    """Grid-search ``lm_weight`` x ``word_score`` for the lowest corpus WER on a dev set.

    Args:
        log_probs_list: one ``(T_i, V)`` log-probability tensor per dev utterance.
        refs: normalised reference transcripts, same order.
        grid: ``{"lm_weight": [...], "word_score": [...]}``; a missing key keeps the decoder's value.
        decoder: gives the tokenizer, LM, lexicon and the other options.

    Returns:
        The best config (ties: first in grid order) and a table of
        ``{"lm_weight", "word_score", "wer"}`` rows in grid order.
    """
    if len(log_probs_list) != len(refs):
        raise ValueError(f"{len(log_probs_list)} utterances but {len(refs)} references")
    unknown = set(grid) - {"lm_weight", "word_score"}
    if unknown:
        raise ValueError(f"unknown grid keys {sorted(unknown)}")
    base = decoder.config
    lm_weights = list(grid.get("lm_weight", [base.lm_weight]))
    word_scores = list(grid.get("word_score", [base.word_score]))
    table: list[dict] = []
    best_config, best_wer = base, math.inf
    for lm_weight, word_score in itertools.product(lm_weights, word_scores):
        config = dataclasses.replace(base, lm_weight=float(lm_weight), word_score=float(word_score))
        trial = decoder.with_config(config)
        hyps = []
        for lp in log_probs_list:
            if lp.ndim != 2:
                raise ValueError(f"each log-prob tensor must be (T, V), got shape {tuple(lp.shape)}")
            hyps.append(trial(lp.unsqueeze(0))[0].text)
        score = wer(refs, hyps)
        table.append({"lm_weight": float(lm_weight), "word_score": float(word_score), "wer": score})
        logger.info("lm_weight=%.3g word_score=%.3g: WER %.4f", lm_weight, word_score, score)
        if score < best_wer:
            best_config, best_wer = config, score
    return best_config, table
