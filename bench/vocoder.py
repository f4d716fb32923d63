"""WaveNet generation speed on one thread, as the real-time factor at the model's sample rate (22.05 kHz).

Three implementations of the same sampling loop (``tts/wavenet.py``), all producing the same samples:

- ``fast``: the compiled Fast WaveNet loop (cached per-layer queues, fused gate matrices) that
  ``glottis vocode`` runs: the C kernel where a C compiler is found (``tts/_wavenet_kernel.c``), else the
  numba one; one utterance, and a batch of 4 utterances (RTF = compute time / total audio);
- ``fast, guided``: the same kernel drawing GUIDE candidates every 2 frames (as 2 beams) and keeping the ones closest to
  the mel (``glottis vocode --candidates 4``; ``tts.vocode.mel_guide``), on the same utterance;
- ``fast, numba``: the numba kernel (``tts/_wavenet_kernel.py``), the fallback, on the same utterance;
- ``torch-cached``: the pure-torch reference of the same cached loop;
- ``naive``: reruns the parallel network over the whole receptive field for every sample.

Plus ``mel gate``: the post-filter ``glottis vocode`` applies after generation by default
(``tts.spectrogram.mel_gate``), timed alone on the same 2 s; its RTF adds to the generator's.

The slow ones are timed on short clips and their RTF extrapolated linearly (their cost per sample is
constant once the clip is longer than the receptive field, which the naive clip is, so the figure is
honest). The model is the bundled vocoder when it exists, else an untrained one of the default size
(``configs/tts/wavenet.yaml``): speed does not depend on the weights. ``ratio_vs_ours`` is per second of
audio (the rows' ``median_s`` are per clip, so the ratio column uses the RTFs).
"""

from __future__ import annotations

from pathlib import Path

import torch

from audio.config import load_config
from audio.features import FeatureConfig
from bench.run import median_times
from tts.spectrogram import SpectrogramScale, mel_gate
from tts.vocode import (
    DEFAULT_VOCODER_DIR,
    EXCESS_WEIGHT,
    default_beams,
    is_vocoder_bundle,
    load_vocoder,
    mel_guide,
)
from tts.vocoder_train import VocoderConfig, build_model
from tts.wavenet import FastGenerator, WaveNet

__all__ = ["run"]

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "tts" / "wavenet.yaml"
FAST_SECONDS = 2.0
CACHED_SECONDS = 0.1
BATCH = 4
GUIDE = 4  # candidates of guided sampling
NAIVE_STEPS = 30  # naive steps timed over a full receptive field


def _model() -> tuple[WaveNet, FeatureConfig, SpectrogramScale, str]:
    if is_vocoder_bundle(DEFAULT_VOCODER_DIR):
        loaded = load_vocoder(DEFAULT_VOCODER_DIR)
        return loaded.model, loaded.feature_config, loaded.scale, f"bundled model {DEFAULT_VOCODER_DIR.name}"
    cfg = load_config(VocoderConfig, CONFIG)
    torch.manual_seed(0)
    return build_model(cfg).eval(), cfg.features, cfg.scale, "untrained default-size model (no bundle)"


def _mel(model: WaveNet, seconds: float, sample_rate: int, batch: int = 1) -> tuple[torch.Tensor, int]:
    n = int(seconds * sample_rate)
    frames = n // model.cfg.hop_length + 2
    return torch.rand(batch, frames, model.cfg.n_mels, generator=torch.Generator().manual_seed(0)), n


def run(repeats: int) -> list[dict]:
    """Rows for ``bench.run``: RTF of fast, fast batched, torch-cached and naive generation."""
    torch.set_num_threads(1)
    model, features, scale, note = _model()
    sr = features.sample_rate
    fast, numba = FastGenerator(model), FastGenerator(model, "numba")
    mel_fast, n_fast = _mel(model, FAST_SECONDS, sr)
    mel_batch, _ = _mel(model, FAST_SECONDS, sr, BATCH)
    mel_cached, n_cached = _mel(model, CACHED_SECONDS, sr)
    mel_naive, _ = _mel(model, (model.cfg.receptive_field + 1) / sr, sr)

    for generator in (fast, numba):
        generator.generate(mel_fast[:, :4], n_samples=2 * model.cfg.hop_length)  # compile (or load the cache)
    guide, lookback = mel_guide(mel_fast, features, scale, model.cfg, excess_weight=EXCESS_WEIGHT)
    timings = median_times(
        {
            "fast": lambda: fast.generate(mel_fast, n_samples=n_fast),
            f"fast, batch of {BATCH}": lambda: fast.generate(mel_batch, n_samples=n_fast),
            f"fast, guided, {GUIDE} candidates": lambda: fast.generate_guided(
                mel_fast, guide, candidates=GUIDE, beams=default_beams(GUIDE), lookback=lookback, n_samples=n_fast
            ),
            "fast, numba": lambda: numba.generate(mel_fast, n_samples=n_fast),
        },
        repeats=max(1, repeats // 2),
    )
    cached = median_times(
        {"torch-cached": lambda: model.incremental_forward(mel_cached, n_samples=n_cached)},
        repeats=1,
        warmup=0,
    )
    # Every sample past the receptive field costs one step over the full window: time that step, NAIVE_STEPS
    # times, and take the median (timing whole runs and differencing them was noisy: 260-630x on one machine).
    field = model.cfg.receptive_field
    with torch.no_grad():
        cond = model.sample_conditioning(mel_naive, field)
    window = torch.randint(0, model.cfg.n_classes, (1, field), generator=torch.Generator().manual_seed(2))
    uniform = torch.rand(1, dtype=torch.float64)
    naive_steady = median_times(
        {"naive": torch.no_grad()(lambda: model.naive_step(window, cond, uniform))}, repeats=NAIVE_STEPS, warmup=2
    )["naive"]

    audio = {
        "fast": n_fast / sr,
        f"fast, batch of {BATCH}": BATCH * n_fast / sr,
        f"fast, guided, {GUIDE} candidates": n_fast / sr,
        "fast, numba": n_fast / sr,
        "torch-cached": n_cached / sr,
    }
    rtf = {name: timings[name] / audio[name] for name in timings}
    rtf["torch-cached"] = cached["torch-cached"] / audio["torch-cached"]
    rtf["naive"] = naive_steady * sr
    rows = []
    clip = {
        "fast": timings["fast"],
        f"fast, batch of {BATCH}": timings[f"fast, batch of {BATCH}"],
        f"fast, guided, {GUIDE} candidates": timings[f"fast, guided, {GUIDE} candidates"],
        "fast, numba": timings["fast, numba"],
        "torch-cached": cached["torch-cached"],
        "naive": naive_steady * sr,
    }
    for name, value in rtf.items():
        rows.append(
            {
                "benchmark": f"wavenet generation @ {sr} Hz, 1 thread",
                "impl": name,
                "median_s": clip[name],
                "ratio_vs_ours": value / rtf["fast"],
                "rtf": round(value, 4),
                "audio_s": round(audio.get(name, 1.0), 3),
                "threads": 1,
            }
        )
    rows[0]["note"] = (
        f"{note}; {fast.kernel} kernel; {sum(p.numel() for p in model.parameters()) / 1e6:.3f}M parameters, "
        f"{len(model.cfg.dilations)} layers, receptive field {model.cfg.receptive_field}"
    )
    rows[-1]["note"] = (
        f"median of {NAIVE_STEPS} steps over a full receptive field, extrapolated; speed-up of fast: "
        + (f"{rtf['naive'] / rtf['fast']:.0f}x")
    )
    rows[-2]["note"] = f"extrapolated from {CACHED_SECONDS} s"

    wave = 0.1 * torch.randn(n_fast, generator=torch.Generator().manual_seed(1))
    gate = median_times({"mel gate": lambda: mel_gate(wave, mel_fast[0], features, scale)},
                        repeats=max(1, repeats // 2))["mel gate"]
    rows.append(
        {
            "benchmark": f"wavenet post-filter @ {sr} Hz, 1 thread",
            "impl": "mel gate",
            "median_s": gate,
            "ratio_vs_ours": gate / timings["fast"],  # against generating the same clip
            "rtf": round(gate * sr / n_fast, 4),
            "audio_s": round(n_fast / sr, 3),
            "threads": 1,
            "note": "tts.spectrogram.mel_gate on the same clip; glottis vocode's default, its RTF adds to fast's",
        }
    )
    return rows
