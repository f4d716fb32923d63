"""Feature benchmarks: log-mel of 60 s at 16 kHz, and 32 Griffin-Lim iterations on 5 s at 22.05 kHz.

Ours against torchaudio and librosa with identical parameters; each peer is optional. Besides the
time, each row records how far its result is from ours (log-mel) or its spectral convergence (GL), so a
fast but wrong implementation cannot hide in the table.
"""

from __future__ import annotations

import importlib

import numpy as np
import torch

from audio.features import FeatureConfig, FeatureExtractor, spectrogram
from audio.inversion import griffin_lim, spectral_convergence
from bench.run import make_rows, median_times

__all__ = ["run", "bench_log_mel", "bench_griffin_lim"]

LOG_MEL_SECONDS = 60.0
GL_SECONDS = 5.0
GL_ITERS = 32


def _optional(name: str):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def _missing(**peers) -> tuple[str, ...]:
    """Names of the optional peers that failed to import."""
    return tuple(name for name, module in peers.items() if module is None)


def _test_signal(seconds: float, sample_rate: int, seed: int = 0) -> np.ndarray:
    """A chirp plus harmonics plus a little noise: speech-like spectra, deterministic. ``(samples,)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sample_rate
    wave = sum(0.3 / k * np.sin(k * phase) for k in range(1, 6)) + 0.01 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def bench_log_mel(repeats: int) -> list[dict]:
    """Log-mel (80 bins, 25 ms / 10 ms) of 60 s of 16 kHz audio, one thread."""
    cfg = FeatureConfig()
    wave = _test_signal(LOG_MEL_SECONDS, cfg.sample_rate)
    batch = torch.from_numpy(wave)[None]  # (1, samples)
    extractor = FeatureExtractor(cfg, "logmel")

    def ours():
        with torch.inference_mode():
            return extractor(batch)[0][0].numpy()  # (frames, n_mels)

    impls = {"ours": ours}
    torchaudio = _optional("torchaudio")
    if torchaudio is not None:
        transform = torchaudio.transforms.MelSpectrogram(
            sample_rate=cfg.sample_rate,
            n_fft=cfg.n_fft,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            n_mels=cfg.n_mels,
            power=cfg.power,
            center=True,
            pad_mode="constant",
            norm="slaney",
            mel_scale="slaney",
        )

        def torchaudio_log_mel():
            with torch.inference_mode():
                mel = transform(batch)  # (1, n_mels, frames)
                return torch.log(torch.clamp(mel, min=cfg.log_floor))[0].numpy().T

        impls["torchaudio"] = torchaudio_log_mel
    librosa = _optional("librosa")
    if librosa is not None:

        def librosa_log_mel():
            mel = librosa.feature.melspectrogram(
                y=wave,
                sr=cfg.sample_rate,
                n_fft=cfg.n_fft,
                hop_length=cfg.hop_length,
                win_length=cfg.win_length,
                pad_mode="constant",
                power=cfg.power,
                n_mels=cfg.n_mels,
                norm="slaney",
                htk=False,
            )  # (n_mels, frames)
            return np.log(np.maximum(mel, cfg.log_floor)).T

        impls["librosa"] = librosa_log_mel

    reference = ours()
    diffs = {name: float(np.abs(fn() - reference).max()) for name, fn in impls.items()}
    rows = make_rows(
        f"log-mel {LOG_MEL_SECONDS:.0f}s@16kHz",
        median_times(impls, repeats=repeats),
        missing=_missing(torchaudio=torchaudio, librosa=librosa),
        threads=1,
    )
    for row in rows:
        if row["impl"] in diffs:
            row["max_abs_diff_vs_ours"] = round(diffs[row["impl"]], 6)
    return rows


def bench_griffin_lim(repeats: int) -> list[dict]:
    """32 fast Griffin-Lim iterations on 5 s at 22.05 kHz (n_fft 1024, hop 256), one thread."""
    cfg = FeatureConfig(sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, power=1.0)
    wave = torch.from_numpy(_test_signal(GL_SECONDS, cfg.sample_rate))[None]
    magnitude, _ = spectrogram(wave, None, cfg)  # (1, frames, n_freqs)
    length = (magnitude.shape[1] - 1) * cfg.hop_length

    def ours():
        return griffin_lim(magnitude, cfg, n_iter=GL_ITERS, generator=torch.Generator().manual_seed(0))[0]

    impls = {"ours": ours}
    torchaudio = _optional("torchaudio")
    if torchaudio is not None:
        transform = torchaudio.transforms.GriffinLim(
            n_fft=cfg.n_fft,
            n_iter=GL_ITERS,
            win_length=cfg.win_length,
            hop_length=cfg.hop_length,
            power=1.0,
            momentum=0.99,
            length=length,
        )
        spec = magnitude[0].T.contiguous()  # (frames, F) -> (F, frames)
        impls["torchaudio"] = lambda: transform(spec)[None]  # (samples,) -> (1, samples)
    librosa = _optional("librosa")
    if librosa is not None:
        spec_np = magnitude[0].numpy().T  # (F, frames)

        def librosa_gl():
            out = librosa.griffinlim(
                spec_np,
                n_iter=GL_ITERS,
                hop_length=cfg.hop_length,
                win_length=cfg.win_length,
                n_fft=cfg.n_fft,
                momentum=0.99,
                length=length,
                random_state=0,
            )
            return torch.from_numpy(out)[None]

        impls["librosa"] = librosa_gl

    quality = {name: float(spectral_convergence(fn(), magnitude, cfg)[0]) for name, fn in impls.items()}
    timings = median_times(impls, repeats=repeats, warmup=0)  # the quality pass above warmed up
    rows = make_rows(
        f"griffin-lim {GL_ITERS} it, {GL_SECONDS:.0f}s@22.05kHz",
        timings,
        missing=_missing(torchaudio=torchaudio, librosa=librosa),
        threads=1,
    )
    for row in rows:
        if row["impl"] in quality:
            row["spectral_convergence"] = round(quality[row["impl"]], 4)
    return rows


def run(repeats: int) -> list[dict]:
    """All feature benchmarks as result rows (see ``bench.run``)."""
    torch.set_num_threads(1)
    return bench_log_mel(repeats) + bench_griffin_lim(max(1, repeats // 2))
