"""Tacotron's training targets and their inversion: dB-scaled mel and linear magnitude spectrograms.

Both targets come from one STFT (``audio.features``, magnitude, i.e. ``FeatureConfig.power == 1``, with
pre-emphasis when the config sets it) and use the same **fixed dB scaling**, not corpus statistics::

    db   = 20 * log10(max(magnitude, 1e-5)) - ref_level_db          # dB relative to the reference
    norm = clip((db - min_level_db) / -min_level_db, 0, 1)            # [min_level_db, 0] dB -> [0, 1]

A fixed scale needs no statistics file, means the same thing for every voice, and its [0, 1] range suits
an L1 loss. The linear target is inverted to audio by Griffin-Lim (``audio.inversion.griffin_lim``) after
raising the magnitudes to ``GriffinLimConfig.power``, which sharpens the harmonics against the phasiness
of Griffin-Lim on over-smoothed predictions (Wang et al. 2017 used 1.2; many reimplementations 1.5). It
also stretches every dB contrast by that factor: copy synthesis of the test recordings (true linear
spectrograms, 60 iterations) scores an MCD of about 1.7 dB with power 1.0, 7.4 dB with 1.2, 14.7 with 1.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from audio.features import FeatureConfig, make_window, mel_filterbank, spectrogram
from audio.inversion import griffin_lim

__all__ = [
    "TTS_FEATURES",
    "SpectrogramScale",
    "GriffinLimConfig",
    "amplitude_to_norm",
    "norm_to_amplitude",
    "TargetExtractor",
    "linear_to_wave",
    "mel_to_linear_map",
    "mel_gate",
]

_AMPLITUDE_FLOOR = 1e-5  # -100 dB

# 22.05 kHz, 46 ms windows, 11.6 ms hop: the usual Tacotron analysis.
TTS_FEATURES = FeatureConfig(
    sample_rate=22050,
    n_fft=1024,
    win_length=1024,
    hop_length=256,
    power=1.0,
    n_mels=80,
    fmin=0.0,
    fmax=None,
    preemphasis=0.97,
)


@dataclass(frozen=True)
class SpectrogramScale:
    """The fixed dB normalisation of both targets (see the module docstring)."""

    ref_level_db: float = 20.0  # dB of magnitude that maps to 1.0
    min_level_db: float = -100.0  # dB (relative to ref) that maps to 0.0

    def __post_init__(self):
        if self.min_level_db >= 0:
            raise ValueError(f"min_level_db must be negative, not {self.min_level_db}")


@dataclass(frozen=True)
class GriffinLimConfig:
    """Phase reconstruction settings used at synthesis."""

    n_iter: int = 60
    power: float = 1.2  # predicted magnitudes are raised to this before Griffin-Lim (the paper's value)
    momentum: float = 0.99  # fast Griffin-Lim (Perraudin et al. 2013); 0 is the classic algorithm
    peak: float = 0.9  # output waves are scaled to this peak amplitude (0 leaves them as they are)


def amplitude_to_norm(magnitude: torch.Tensor, scale: SpectrogramScale) -> torch.Tensor:
    """Linear magnitude -> normalised dB in [0, 1]. Any shape."""
    db = 20.0 * torch.log10(magnitude.clamp(min=_AMPLITUDE_FLOOR)) - scale.ref_level_db
    return ((db - scale.min_level_db) / -scale.min_level_db).clamp(0.0, 1.0)


def norm_to_amplitude(norm: torch.Tensor, scale: SpectrogramScale) -> torch.Tensor:
    """Normalised dB -> linear magnitude; the inverse of :func:`amplitude_to_norm` (inputs are clipped to
    [0, 1] first, as a model's output may overshoot). Any shape."""
    db = norm.clamp(0.0, 1.0) * -scale.min_level_db + scale.min_level_db + scale.ref_level_db
    return torch.pow(10.0, db / 20.0)


class TargetExtractor(torch.nn.Module):
    """Waves -> normalised mel and linear targets, from a single STFT."""

    def __init__(self, cfg: FeatureConfig, scale: SpectrogramScale):
        super().__init__()
        if cfg.power != 1.0:
            raise ValueError(f"TTS targets are magnitudes: FeatureConfig.power must be 1.0, not {cfg.power}")
        self.cfg = cfg
        self.scale = scale
        self.register_buffer("mel_fb", mel_filterbank(cfg), persistent=False)  # (n_freqs, n_mels)

    def forward(
        self, waves: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``waves (B, samples)`` float, ``lengths (B,)`` samples ->
        ``mel (B, frames, n_mels)``, ``linear (B, frames, n_freqs)`` in [0, 1], ``frame_lengths (B,)``.
        Frames past an item's length are 0 in both."""
        magnitude, frame_lengths = spectrogram(waves, lengths, self.cfg)  # (B, T, F)
        mel = amplitude_to_norm(magnitude @ self.mel_fb, self.scale)  # (B, T, F) @ (F, M) -> (B, T, M)
        linear = amplitude_to_norm(magnitude, self.scale)
        valid = (torch.arange(magnitude.shape[1])[None, :] < frame_lengths[:, None]).unsqueeze(
            -1
        )  # (B, T, 1)
        return mel * valid, linear * valid, frame_lengths


def linear_to_wave(
    linear: torch.Tensor,
    cfg: FeatureConfig,
    scale: SpectrogramScale,
    gl: GriffinLimConfig,
    *,
    lengths: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised linear spectrogram -> waveform by Griffin-Lim.

    Args:
        linear: ``(B, frames, n_freqs)`` in the [0, 1] scale of :func:`amplitude_to_norm`.
        lengths: ``(B,)`` valid frames (None: all).
    Returns:
        ``(B, samples)`` float32 waveform (de-emphasised when ``cfg.preemphasis`` is set, each item
        scaled to peak ``gl.peak``) and ``(B,)`` int64 lengths in samples.
    """
    magnitude = norm_to_amplitude(linear.float(), scale).pow(gl.power)
    wave, sample_lengths = griffin_lim(
        magnitude,
        cfg,
        lengths=lengths,
        n_iter=gl.n_iter,
        momentum=gl.momentum,
        power=1.0,
        generator=generator,
    )
    if gl.peak > 0:
        peaks = wave.abs().amax(dim=1, keepdim=True)  # (B, 1)
        wave = wave * (gl.peak / peaks.clamp(min=math.ulp(1.0)))
    return wave, sample_lengths


def mel_to_linear_map(cfg: FeatureConfig, scale: SpectrogramScale) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed affine map from the normalised mel to the normalised linear spectrogram:
    ``linear ~= mel @ weight + bias``, ``weight (n_mels, n_freqs)``, ``bias (n_freqs,)``.

    Each mel band's dB level is read as the level of the linear bins under it: the pseudo-inverse of the
    filterbank with every filter scaled to unit sum, after removing each band's dB offset
    ``20 log10(sum of its filter)`` (about -27 dB for every band of Slaney-normalised filters at 21.5 Hz
    per bin). It is the starting point of Tacotron's ``linear_skip`` (``TacotronConfig.postnet_skip``).
    Copy synthesis through it is nearly as intelligible as the true linear spectrogram: the first 40
    synth_en TTS dev recordings, 60 Griffin-Lim iterations at power 1.2, round-trip CER 4.6% against 4.9%
    (the bundled recogniser, 2026-12-01).
    """
    fb = mel_filterbank(cfg).double()  # (F, M)
    sums = fb.sum(0)  # (M,)
    weight = torch.linalg.pinv(fb / sums)  # (M, F): mel band levels -> linear bin levels
    offset = 20.0 * torch.log10(sums) / -scale.min_level_db  # (M,) in normalised units
    bias = -(offset @ weight)
    return weight.float(), bias.float()


def mel_gate(wave: torch.Tensor, mel: torch.Tensor, cfg: FeatureConfig, scale: SpectrogramScale,
             *, floor_db: float = -40.0) -> torch.Tensor:
    """Take ``wave`` down wherever its own mel is louder than ``mel``, the mel it was generated from:
    per frame and band the gain is ``min(1, mel / own mel)`` (at most ``-floor_db`` dB of cut), spread
    onto the STFT bins by the filterbank's weights, and applied to the complex STFT, which is then
    overlap-added back (the phase is kept). Only cuts: nothing the wave lacks is added, so it takes out
    what a sampling vocoder adds, the noise it spreads into quiet bands and pauses, and leaves its
    harmonics as they are. ``wave`` ``(samples,)``; ``mel`` ``(frames, n_mels)`` normalised, framed by
    ``cfg``. Returns ``(samples,)``."""
    fb = mel_filterbank(cfg).to(wave.device)  # (F, M)
    magnitude, _ = spectrogram(wave.float()[None], None, cfg)  # (1, T, F), pre-emphasised as the target
    own = amplitude_to_norm(magnitude[0] @ fb, scale)  # (T, M)
    frames = min(own.shape[0], mel.shape[0])
    # Both are clipped to [0, 1] on the same dB scale, so their difference is a dB difference.
    db = (mel[:frames].float().clamp(0.0, 1.0) - own[:frames]) * -scale.min_level_db
    log_gain = db.clamp(min=floor_db, max=0.0) * (math.log(10.0) / 20.0)  # (T, M), natural log of amplitude
    spread = fb / fb.sum(1, keepdim=True).clamp(min=1e-12)  # (F, M): each bin's bands, weights summing to 1
    window = make_window(cfg).to(wave.device)
    # zeros outside the wave, as the features' own framing (audio.features), so that the gains line up with
    # the frames they were computed on at the edges too, and a wave shorter than half a window works
    spec = torch.stft(wave.float(), cfg.n_fft, cfg.hop_length, cfg.n_fft, window, center=cfg.center,
                      pad_mode="constant", return_complex=True)  # (F, T')
    gains = torch.ones(spec.shape, dtype=torch.float32, device=wave.device)
    frames = min(frames, spec.shape[1])
    gains[:, :frames] = (log_gain[:frames] @ spread.T).exp().T
    return torch.istft(spec * gains, cfg.n_fft, cfg.hop_length, cfg.n_fft, window, center=cfg.center,
                       length=wave.shape[0])
