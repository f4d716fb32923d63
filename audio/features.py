"""Batched, torch-native feature extraction: spectrogram, mel, log-mel and MFCC.

All extractors take ``(B, samples)`` float waveforms plus lengths in samples and return
``(B, frames, features)`` plus lengths in frames. Padding never leaks into valid frames: framing uses
zero ("constant") padding at both ends as librosa does by default, so a padded batch row gives exactly
the frames of the unpadded item.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FeatureConfig"]


@dataclass(frozen=True)
class FeatureConfig:
    """Every audio parameter a model depends on. Stored with every model and checkpoint."""

    sample_rate: int = 16000  # Hz
    n_fft: int = 400  # samples
    win_length: int = 400  # samples
    hop_length: int = 160  # samples
    window: str = "hann"
    center: bool = True  # frames centred on t * hop, zero-padded by n_fft // 2 at both ends
    power: float = 2.0  # 1.0 magnitude, 2.0 power
    n_mels: int = 80
    fmin: float = 0.0  # Hz
    fmax: float | None = None  # Hz; None means sample_rate / 2
    mel_scale: str = "slaney"  # "slaney" or "htk", as librosa
    mel_norm: str | None = "slaney"  # area normalisation of the filters, as librosa
    log_floor: float = 1e-10  # log-mel = log(max(mel, floor))
    n_mfcc: int = 13
    preemphasis: float = 0.0  # 0 disables; Tacotron-style front ends use 0.97
