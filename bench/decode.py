"""CTC beam-search decoding throughput: ours (flashlight-text + KenLM via ``asr.decode``) vs pyctcdecode.

20 utterances of 300 frames x 29 characters, beam 50, a 3-gram word LM (written by ``asr.lm``) from
synthetic text. The log-probs are peaky CTC outputs of known sentences with noisy logits and some
letters confused, so the LM has work to do. Each row records utterances per second and the WER
against the true sentences, so a fast but wrong decoder cannot hide.

pyctcdecode needs the ``kenlm`` Python module for an LM. Without it, the LM rows are skipped and the
two decoders are compared without an LM at the same beam ("no LM" rows). Our pure-Python
``prefix_beam_search`` is timed too, without LM.
"""

from __future__ import annotations

import importlib
import logging
import math
import random
import tempfile
from pathlib import Path

import torch

from asr.decode import DecoderConfig, LMBeamSearchDecoder, greedy_decode, prefix_beam_search
from asr.lm import write_arpa
from asr.metrics import wer
from asr.tokenizer import CharTokenizer
from bench.run import make_rows, median_times

__all__ = ["run", "synthetic_corpus", "synthetic_log_probs"]

logger = logging.getLogger(__name__)

UTTERANCES = 20
FRAMES = 300
BEAM = 50
LM_SENTENCES = 5000
LM_ORDER = 3
LM_WEIGHT_LOG10 = 1.0  # flashlight adds lm_weight * log10 p; pyctcdecode adds alpha * ln p
PYCTC_ALPHA = LM_WEIGHT_LOG10 / math.log(10)
PY_BEAM = 10  # our pure-Python prefix search is slow at beam 50; timed at a smaller beam


def synthetic_corpus(n: int, *, seed: int = 0) -> list[str]:
    """``n`` sentences (drawn with ``seed``) over one fixed set of ~300 made-up words with Zipf-like
    frequencies, half of them built from 40 recurring three-word phrases."""
    vocab_rng = random.Random(1234)  # the same words and phrases for every seed
    onsets, vowels, codas = "bdfgklmnprstvwz", "aeiou", ["", "n", "t", "s", "k"]
    words = sorted(
        {
            vocab_rng.choice(onsets)
            + vocab_rng.choice(vowels)
            + vocab_rng.choice(onsets)
            + vocab_rng.choice(vowels)
            + vocab_rng.choice(codas)
            for _ in range(400)
        }
    )[:300]
    vocab_rng.shuffle(words)
    weights = [1.0 / (k + 1) for k in range(len(words))]
    phrases = [vocab_rng.sample(words[:60], 3) for _ in range(40)]
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        parts: list[str] = []
        target = rng.randint(5, 9)
        while len(parts) < target:
            parts += rng.choice(phrases) if rng.random() < 0.5 else rng.choices(words, weights)
        sentences.append(" ".join(parts))
    return sentences


def synthetic_log_probs(text: str, tokenizer: CharTokenizer, *, frames: int, seed: int) -> torch.Tensor:
    """``(frames, V)`` CTC log-probs of ``text``: each token on a short run of frames among blanks,
    logits with Gaussian noise, and every 9th token confused with a random other letter."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    ids = tokenizer.encode(text)
    vocab = tokenizer.vocab_size
    if 2 * len(ids) + 1 > frames:
        raise ValueError(f"{len(ids)} tokens do not fit in {frames} frames")
    logits = torch.zeros(frames, vocab)
    logits[:, tokenizer.blank_id] = 6.0
    slot = frames / len(ids)
    for k, token in enumerate(ids):
        start = int(k * slot + rng.random() * slot / 3)
        for t in range(start, start + max(1, int(slot / 3))):
            logits[t, tokenizer.blank_id] = 0.0
            logits[t, token] = 7.0
            if k % 9 == 4 and token != tokenizer.word_separator_id:
                logits[t, rng.randrange(2, vocab)] = 7.2
    logits += 0.8 * torch.randn(frames, vocab, generator=gen)
    return logits.log_softmax(-1)


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def run(repeats: int) -> list[dict]:
    tokenizer = CharTokenizer()
    corpus = synthetic_corpus(LM_SENTENCES)
    refs = synthetic_corpus(UTTERANCES, seed=1)
    log_probs = torch.stack(
        [synthetic_log_probs(t, tokenizer, frames=FRAMES, seed=n) for n, t in enumerate(refs)]
    )  # (B, T, V)
    lengths = torch.full((UTTERANCES,), FRAMES)
    arrays = [lp.numpy() for lp in log_probs]
    greedy_wer = round(wer(refs, [h.text for h in greedy_decode(log_probs, lengths, tokenizer)]), 4)

    pyctcdecode = _optional("pyctcdecode")
    kenlm = _optional("kenlm")
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        arpa = Path(tmp) / "lm.arpa"
        write_arpa(corpus, arpa, order=LM_ORDER)
        decoders = {
            "lm": LMBeamSearchDecoder(
                tokenizer, lm_path=arpa, config=DecoderConfig(beam=BEAM, lm_weight=LM_WEIGHT_LOG10)
            ),
            "no_lm": LMBeamSearchDecoder(
                tokenizer, config=DecoderConfig(beam=BEAM, lm_weight=0.0, lexicon=False)
            ),
        }
        labels = ["", " ", *tokenizer.tokens[2:]]  # pyctcdecode: "" is the blank, " " the word separator
        for mode, ours in decoders.items():
            outputs: dict[str, list[str]] = {}

            def timed(name, fn, outputs=outputs):
                def call():
                    outputs[name] = fn()

                return call

            impls = {"ours": timed("ours", lambda ours=ours: [h.text for h in ours(log_probs, lengths)])}
            missing: tuple[str, ...] = ()
            if pyctcdecode is None:
                missing = ("pyctcdecode",)
            elif mode == "lm" and kenlm is None:
                missing = ("pyctcdecode (needs kenlm)",)
            else:
                peer = pyctcdecode.build_ctcdecoder(
                    labels,
                    kenlm_model_path=str(arpa) if mode == "lm" else None,
                    alpha=PYCTC_ALPHA,
                    beta=0.0,
                )
                impls["pyctcdecode"] = timed(
                    "pyctcdecode", lambda peer=peer: [peer.decode(a, beam_width=BEAM) for a in arrays]
                )
            if mode == "no_lm":
                impls[f"ours_python_prefix_beam{PY_BEAM}"] = timed(
                    f"ours_python_prefix_beam{PY_BEAM}",
                    lambda: [h.text for h in prefix_beam_search(log_probs, lengths, tokenizer, beam=PY_BEAM)],
                )
            timings = median_times(impls, repeats=repeats)
            extra = {"utterances": UTTERANCES, "frames": FRAMES, "beam": BEAM, "greedy_wer": greedy_wer}
            for row in make_rows(f"ctc_beam_search_{mode}", timings, missing=missing, **extra):
                impl = row["impl"]
                if impl.startswith("ours_python"):
                    row["beam"] = PY_BEAM
                if row["median_s"] is not None:
                    row["utt_per_s"] = round(UTTERANCES / row["median_s"], 1)
                    row["wer"] = round(wer(refs, [" ".join(h.split()) for h in outputs[impl]]), 4)
                rows.append(row)
    return rows
