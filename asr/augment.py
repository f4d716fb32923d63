"""The recogniser's training-time augmentation policy.

Synthetic speech is clean, studio-flat and perfectly steady; real recordings have other microphones,
rooms, noise and 8 kHz phone channels. Each training utterance therefore goes through a random chain
of speed change, gain, equalisation, reverberation, telephone band-limiting and coloured noise (on the
waveform, in the data-loader workers), and SpecAugment masks on the features (in the model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torchaudio.functional as AF

from audio.augment import add_noise, change_speed, telephone

__all__ = ["AugmentConfig", "WaveAugment", "colored_noise", "reverberate", "synthetic_rir"]


@dataclass(frozen=True)
class AugmentConfig:
    speed_prob: float = 0.6
    speed_range: tuple[float, float] = (0.85, 1.15)
    gain_db: tuple[float, float] = (-20.0, 3.0)
    eq_prob: float = 0.3  # random low-pass (microphone / codec bandwidth)
    reverb_prob: float = 0.25
    rt60_range: tuple[float, float] = (0.15, 0.6)  # seconds
    telephone_prob: float = 0.15
    noise_prob: float = 0.5
    snr_db: tuple[float, float] = (5.0, 35.0)
    spec_augment: bool = True
    vtlp_prob: float = 0.0  # vocal-tract-length perturbation of the log-mel features (in the model)
    vtlp_range: tuple[float, float] = (0.9, 1.1)
    blur_prob: float = 0.0  # Gaussian smoothing of the log-mel across bands (in the model; audio.augment.freq_blur)
    blur_max_bands: float = 2.0  # its width is drawn from 0.3 to this many bands
    time_masks: int = 2
    max_time_width: int = 30  # frames (10 ms each)
    freq_masks: int = 2
    max_freq_width: int = 12  # mel bins


def _fft_size(n: int) -> int:
    """The power of two >= ``n``: pocketfft is several times slower on lengths with large prime factors,
    which utterance lengths have (torchaudio's ``fftconvolve`` uses the exact length: 5x slower here)."""
    return 1 << max(0, n - 1).bit_length()


def colored_noise(samples: int, exponent: float, generator: torch.Generator) -> torch.Tensor:
    """Noise with a 1/f**exponent power spectrum (0 white, 1 pink, 2 brown), unit RMS. ``(samples,)``."""
    size = _fft_size(samples)
    spectrum = torch.fft.rfft(torch.randn(size, generator=generator))
    freqs = torch.arange(spectrum.numel()).clamp(min=1).float()
    noise = torch.fft.irfft(spectrum / freqs.pow(exponent / 2), n=size)[:samples]
    return noise / noise.pow(2).mean().sqrt().clamp(min=1e-8)


def reverberate(wave: torch.Tensor, rir: torch.Tensor) -> torch.Tensor:
    """Convolve ``(..., samples)`` with the impulse response ``(taps,)``, keeping the first ``samples``
    outputs (the reverberant tail past the end is cut, as a recording would stop)."""
    samples = wave.shape[-1]
    size = _fft_size(samples + rir.numel() - 1)
    wet = torch.fft.irfft(torch.fft.rfft(wave, n=size) * torch.fft.rfft(rir, n=size), n=size)
    return wet[..., :samples]


def synthetic_rir(sample_rate: int, rt60: float, generator: torch.Generator, drr_db: float = 3.0) -> torch.Tensor:
    """An exponentially decaying noise impulse response: RT60 ``rt60`` seconds, and a direct path
    ``drr_db`` dB above the energy of the reverberant tail (real rooms at speaking distance: about
    0-10 dB). Unit energy. ``(taps,)``."""
    taps = int(rt60 * sample_rate)
    t = torch.arange(1, taps) / sample_rate
    tail = torch.randn(taps - 1, generator=generator) * torch.exp(-6.9078 * t / rt60)  # -60 dB at rt60
    tail = tail / tail.norm().clamp(min=1e-8) * 10 ** (-drr_db / 20)
    rir = torch.cat([torch.ones(1), tail])  # the direct path first
    return rir / rir.norm()


class WaveAugment:
    """Callable ``(samples,) -> (samples',)`` applying the random chain of :class:`AugmentConfig`.

    Each data-loader worker seeds its own generator from ``torch.initial_seed()`` (which the loader sets
    from the main process's seeded RNG), so a run is reproducible for a given seed and worker count.
    """

    def __init__(self, cfg: AugmentConfig, sample_rate: int, seed: int = 0):
        self.cfg = cfg
        self.sample_rate = sample_rate
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._gen_seed: int | None = None

    def _generator(self) -> torch.Generator:
        base = torch.initial_seed() + self.seed
        if self._gen is None or self._gen_seed != base:
            self._gen = torch.Generator().manual_seed(base % (2**63))
            self._gen_seed = base
        return self._gen

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self._gen))

    def _chance(self, p: float) -> bool:
        return p > 0 and float(torch.rand((), generator=self._gen)) < p

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        cfg, sr, gen = self.cfg, self.sample_rate, self._generator()
        x = wave.unsqueeze(0)  # (samples,) -> (1, samples)
        lengths = torch.tensor([x.shape[-1]])
        if self._chance(cfg.speed_prob):
            factor = round(self._uniform(*cfg.speed_range), 2)
            x, lengths = change_speed(x, lengths, factor)
        if self._chance(cfg.eq_prob):
            cutoff = self._uniform(2500.0, min(7500.0, sr / 2 - 100))
            x = AF.lowpass_biquad(x, sr, cutoff)
        if self._chance(cfg.reverb_prob):
            rir = synthetic_rir(sr, self._uniform(*cfg.rt60_range), gen, drr_db=self._uniform(0.0, 10.0))
            wet = reverberate(x, rir)
            x = wet * (x.abs().max() / wet.abs().max().clamp(min=1e-8))
        if self._chance(cfg.telephone_prob):
            x = telephone(x, lengths, sr)
        if self._chance(cfg.noise_prob):
            exponent = float(torch.randint(3, (), generator=gen))  # white, pink or brown
            noise = colored_noise(x.shape[-1], exponent, gen)
            x = add_noise(x, lengths, snr=self._uniform(*cfg.snr_db), generator=gen, noise=noise)
        gain = 10 ** (self._uniform(*cfg.gain_db) / 20)
        x = (x * gain).clamp(-1.0, 1.0)
        if not math.isfinite(float(x.abs().max())):
            return wave
        return x[0, : int(lengths[0])]
