"""Synthesis speed: real-time factor of Tacotron + Griffin-Lim, and of Tacotron + WaveNet (the bundled
vocoder, its mel gate included, when it exists), on one thread for a ~5 s sentence.

Ours is the bundled model (``tts/pretrained/tacotron_synth_en``) when it exists; otherwise an untrained
model of the default size (``configs/tts/tacotron.yaml``) decoding a fixed 5 s of frames, which costs the
same as a trained one (the row says which). The peer is espeak-ng (formant synthesis, a separate process,
start-up included) saying the same sentence. ``rtf`` is compute seconds per second of audio produced.
"""

from __future__ import annotations

import logging
import math
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import soundfile as sf
import torch

from audio.config import load_config
from bench.run import make_rows, median_times
from tts.bundle import DEFAULT_MODEL_DIR, is_tacotron_bundle
from tts.synthesize import WAVENET_MODEL_DIR, Synthesizer
from tts.train import TTSConfig, build_model, model_metadata
from tts.vocode import is_vocoder_bundle

__all__ = ["run", "SENTENCE"]

SENTENCE = "The quick brown fox jumps over the lazy dog, while the old cat watches from the garden wall."
SECONDS = 5.0  # audio the untrained model is made to produce
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tts" / "tacotron.yaml"


def _untrained_checkpoint(folder: Path) -> tuple[Path, int]:
    """A default-size untrained model that never stops by itself; returns it and the decoder steps for 5 s."""
    cfg = load_config(TTSConfig, CONFIG)
    frames = SECONDS * cfg.features.sample_rate / cfg.features.hop_length
    steps = math.ceil(frames / cfg.model.r)
    cfg = replace(cfg, model=replace(cfg.model, stop_threshold=2.0, max_decoder_steps=steps))
    torch.manual_seed(0)
    model = build_model(cfg)
    path = folder / "untrained.pt"
    torch.save({**model_metadata(cfg, model), "model": model.state_dict(), "step": 0}, path)
    return path, steps


def run(repeats: int) -> list[dict]:
    """Rows for ``bench.run``: ours and espeak-ng, each with its real-time factor."""
    torch.set_num_threads(1)
    repeats = max(1, repeats // 2)  # a synthesis takes seconds
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if is_tacotron_bundle(DEFAULT_MODEL_DIR):
            synthesizer, model_note = (
                Synthesizer(DEFAULT_MODEL_DIR),
                f"bundled model {DEFAULT_MODEL_DIR.name}",
            )
        else:
            checkpoint, steps = _untrained_checkpoint(tmp)
            synthesizer = Synthesizer(checkpoint)
            model_note = f"no bundled model: untrained default-size model, {steps} decoder steps fixed"
        # An untrained decoder never stops by itself, by design here; do not warn about it on every run.
        quiet = logging.getLogger("tts.synthesize")
        level = quiet.level
        quiet.setLevel(logging.ERROR if model_note.startswith("no bundled") else level)
        audio_s = {"ours": synthesizer.synthesize(SENTENCE).duration}
        impls = {"ours": lambda: synthesizer.synthesize(SENTENCE)}
        if model_note.startswith("bundled") and is_vocoder_bundle(WAVENET_MODEL_DIR):
            wavenet = Synthesizer(DEFAULT_MODEL_DIR, vocoder="wavenet")
            audio_s["ours, wavenet"] = wavenet.synthesize(SENTENCE).duration  # also compiles the kernel
            impls["ours, wavenet"] = lambda: wavenet.synthesize(SENTENCE)
        missing: tuple[str, ...] = ()
        if shutil.which("espeak-ng"):
            wav = tmp / "espeak.wav"
            impls["espeak-ng"] = lambda: subprocess.run(
                ["espeak-ng", "-v", "en-us", "-w", str(wav), SENTENCE], check=True
            )
            impls["espeak-ng"]()
            audio_s["espeak-ng"] = sf.info(str(wav)).duration
        else:
            missing = ("espeak-ng",)
        timings = median_times(impls, repeats=repeats)
        quiet.setLevel(level)
    rows = make_rows("tts ~5 s sentence, 1 thread", timings, missing=missing, threads=1)
    for row in rows:
        if row["impl"] in audio_s:
            row["audio_s"] = round(audio_s[row["impl"]], 2)
            row["rtf"] = round(row["median_s"] / audio_s[row["impl"]], 4)
        if row["impl"] == "ours":
            gl = synthesizer.loaded.griffin_lim
            row["note"] = f"tacotron + griffin-lim ({gl.n_iter} it); {model_note}"
        elif row["impl"] == "ours, wavenet":
            row["note"] = f"tacotron + wavenet ({WAVENET_MODEL_DIR.name}, mel gate on, {wavenet.wavenet.generator.kernel} kernel)"
        elif row["impl"] == "espeak-ng" and row.get("median_s") is not None:
            row["note"] = "formant synthesis, process start-up included"
    return rows
