"""Session fixtures for the recogniser tests: a tiny espeak-ng corpus, its tokenizer, feature stats,
an n-gram LM, a tiny model trained on it, and that model exported as a model folder.

Registered in ``tests/conftest.py`` through ``pytest_plugins``. Everything is built once per session
under pytest's temporary directory; the training run is the expensive part (~10 s on one core).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from audio.atomic import write_json, write_text
from audio.io import load, save
from audio.manifest import Utterance, write_manifest

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = ROOT / "configs" / "asr" / "tiny.yaml"
SAMPLE_RATE = 16000

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran to the park",
    "she sells sea shells",
    "open the red door",
    "we like green tea",
    "the sun is hot",
    "my bike is blue",
    "he read a good book",
    "birds sing in the morning",
    "put the cup on the table",
    "it is cold at night",
    "fish swim in the lake",
]
VOICES = {"usm": ("en-us", "175"), "gbm": ("en-gb", "175"), "usf": ("en-us+f3", "190")}
TRAIN_STEPS = 250
TRAIN_OVERRIDES = ("model.lstm_hidden=64", "model.conv_strides=[3]", "train.peak_lr=0.02", "train.warmup_steps=20",
                   "train.max_seconds=8", "train.average_last=1")

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@dataclass(frozen=True)
class AsrCorpus:
    root: Path
    manifest: Path  # every utterance: 12 sentences x 3 voices
    tokenizer: Path  # CharTokenizer JSON
    stats: Path  # feature stats for the tiny config's features (40 mels)
    text: Path  # the sentences, one per line (LM training text)
    lm: Path  # 3-gram word ARPA LM of the sentences

    def wavs(self) -> list[Path]:
        return sorted((self.root / "wav").glob("*.wav"))


def synthesize(text: str, voice: str, speed: str, path: Path) -> torch.Tensor:
    """espeak-ng -> 16 kHz mono float wave (``(samples,)``), written to ``path`` as 16-bit wav."""
    raw = path.with_suffix(".raw.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-s", speed, "-w", str(raw), text], check=True, capture_output=True)
    wave, _ = load(raw, SAMPLE_RATE)
    raw.unlink()
    save(path, wave, SAMPLE_RATE)
    return wave


def build_corpus(root: Path) -> AsrCorpus:
    from asr.lm import write_arpa
    from asr.tokenizer import CharTokenizer
    from audio.features import FeatureConfig
    from audio.stats import compute_stats

    wav_dir = root / "wav"
    wav_dir.mkdir(parents=True)
    records = []
    for s, text in enumerate(SENTENCES):
        for speaker, (voice, speed) in VOICES.items():
            utt_id = f"{speaker}-{s:02d}"
            wave = synthesize(text, voice, speed, wav_dir / f"{utt_id}.wav")
            records.append(Utterance(id=utt_id, audio=f"wav/{utt_id}.wav", text=text, speaker=speaker,
                                     duration=wave.numel() / SAMPLE_RATE, sample_rate=SAMPLE_RATE,
                                     engine="espeak-ng", voice=voice))
    manifest = root / "all.jsonl"
    write_manifest(manifest, records)
    tokenizer = root / "tokenizer.json"
    write_json(tokenizer, CharTokenizer().to_dict())
    stats = root / "feature_stats.json"
    compute_stats(manifest, FeatureConfig(n_mels=40), progress=False).save(stats)
    text = root / "text.txt"
    write_text(text, "\n".join(SENTENCES) + "\n")
    lm = root / "lm.arpa"
    write_arpa(SENTENCES, lm, order=3)
    return AsrCorpus(root=root, manifest=manifest, tokenizer=tokenizer, stats=stats, text=text, lm=lm)


def train_args(corpus: AsrCorpus, exp_dir: Path, *overrides: str, dev: bool = False) -> list[str]:
    """``asr.train`` arguments for the tiny config on the fixture corpus."""
    args = ["--config", str(TINY_CONFIG), "--exp-dir", str(exp_dir), "--train", str(corpus.manifest),
            "--tokenizer", str(corpus.tokenizer), "--stats", str(corpus.stats), "--threads", "1"]
    if dev:
        args += ["--dev", str(corpus.manifest)]
    for item in overrides:
        args += ["--set", item]
    return args


@pytest.fixture(scope="session")
def asr_corpus(tmp_path_factory) -> AsrCorpus:
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    return build_corpus(tmp_path_factory.mktemp("asr_corpus"))


@pytest.fixture(scope="session")
def tiny_exp(asr_corpus, tmp_path_factory) -> Path:
    """An experiment folder with a small model trained for TRAIN_STEPS on the whole fixture corpus.

    The tiny config, a little wider and with 3x subsampling, at a high learning rate: ~10 s of training
    bring the greedy CER on its own training set to ~25%, so decoders and aligners see real words.
    """
    from asr.train import main

    exp_dir = tmp_path_factory.mktemp("tiny_exp")
    args = train_args(asr_corpus, exp_dir, *TRAIN_OVERRIDES, f"train.total_steps={TRAIN_STEPS}",
                      f"train.checkpoint_every={TRAIN_STEPS}", f"train.eval_every={TRAIN_STEPS}", dev=True)
    assert main(args) == 0
    return exp_dir


@pytest.fixture(scope="session")
def tiny_bundle(tiny_exp, asr_corpus, tmp_path_factory) -> Path:
    """``tiny_exp`` exported as a model folder with the fixture LM and a decoder.json."""
    from asr.bundle import export_bundle

    out = tmp_path_factory.mktemp("tiny_bundle") / "model"
    decoder = out.parent / "decoder.json"
    write_json(decoder, {"beam": 8, "lm_weight": 0.5, "word_score": 0.0, "tuned_on": "fixture"})
    return export_bundle(tiny_exp / "final.pt", out, lm=str(asr_corpus.lm), decoder=str(decoder))
