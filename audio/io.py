"""Reading and writing audio with soundfile, resampling with torchaudio.

Every failure raises :class:`AudioError`, whose message names the file and the reason, so a batch
job can report a bad file and keep going.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from audio.atomic import atomic_path

__all__ = ["AudioError", "AudioInfo", "info", "load", "save", "resample"]

MAX_SAMPLE_RATE = 768_000  # the highest rate any common converter produces
MIN_SAMPLE_RATE = 1_000
MAX_CHANNELS = 64


class AudioError(ValueError):
    """A file that cannot be used as audio. ``str(err)`` names the file and the reason."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return self.frames / self.sample_rate


def _check_header(path: Path, sample_rate: int, channels: int) -> None:
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(path, f"implausible sample rate {sample_rate} Hz")
    if not 1 <= channels <= MAX_CHANNELS:
        raise AudioError(path, f"implausible channel count {channels}")


def info(path: str | os.PathLike) -> AudioInfo:
    """Sample rate, channels and length of an audio file, without reading the samples."""
    path = Path(path)
    if not path.is_file():
        raise AudioError(path, "no such file")
    if path.stat().st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    try:
        meta = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(path, f"not a readable audio file ({err})") from None
    _check_header(path, meta.samplerate, meta.channels)
    return AudioInfo(sample_rate=meta.samplerate, channels=meta.channels, frames=meta.frames)


def resample(wave: torch.Tensor, orig_sr: int, new_sr: int) -> torch.Tensor:
    """Band-limited resampling along the last axis (samples). Returns ``wave`` itself if rates match."""
    if orig_sr == new_sr:
        return wave
    return AF.resample(wave, orig_freq=orig_sr, new_freq=new_sr)


def load(
    path: str | os.PathLike,
    sample_rate: int | None = None,
    *,
    mono: bool = True,
    start: float = 0.0,
    duration: float | None = None,
) -> tuple[torch.Tensor, int]:
    """Read an audio file as float32 in [-1, 1].

    Args:
        path: any format libsndfile reads (wav, flac, ogg, mp3, ...).
        sample_rate: resample to this rate (Hz); ``None`` keeps the file's rate.
        mono: average the channels. Returns ``(samples,)`` if True, else ``(channels, samples)``.
        start, duration: read only a window, in seconds of the file.

    Returns:
        ``(wave, sample_rate)``.

    Raises:
        AudioError: missing, empty, corrupt or non-audio file; zero length; NaN/inf samples;
            an implausible sample rate or channel count.
    """
    path = Path(path)
    meta = info(path)
    first = int(round(start * meta.sample_rate))
    count = -1 if duration is None else int(round(duration * meta.sample_rate))
    try:
        data, sr = sf.read(str(path), start=first, frames=count, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as err:
        raise AudioError(path, f"cannot decode audio ({err})") from None
    if data.shape[0] == 0:
        raise AudioError(path, "audio has zero length")
    if not np.isfinite(data).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    wave = torch.from_numpy(np.ascontiguousarray(data.T))  # (samples, C) -> (C, samples)
    if mono:
        wave = wave.mean(dim=0)
    if sample_rate is not None and sample_rate != sr:
        wave = resample(wave, sr, sample_rate)
        sr = sample_rate
    return wave.contiguous(), sr


def save(
    path: str | os.PathLike,
    wave: torch.Tensor | np.ndarray,
    sample_rate: int,
    *,
    subtype: str = "PCM_16",
) -> None:
    """Write ``(samples,)`` or ``(channels, samples)`` audio atomically (``path.tmp`` then rename).

    The format follows the suffix (``.wav``, ``.flac``, ``.ogg``). Samples are clipped to [-1, 1].
    """
    path = Path(path)
    if isinstance(wave, torch.Tensor):
        wave = wave.detach().float().cpu().numpy()
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim == 2:
        wave = wave.T  # (C, samples) -> (samples, C), as soundfile expects
    elif wave.ndim != 1:
        raise AudioError(path, f"cannot save an array of shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise AudioError(path, "refusing to save NaN or infinite samples")
    if not MIN_SAMPLE_RATE <= sample_rate <= MAX_SAMPLE_RATE:
        raise AudioError(path, f"implausible sample rate {sample_rate} Hz")
    fmt = {".wav": "WAV", ".flac": "FLAC", ".ogg": "OGG"}.get(path.suffix.lower())
    if fmt is None:
        what = path.suffix or "a file without a suffix"
        raise AudioError(path, f"cannot write {what}; use .wav, .flac or .ogg")
    sub = subtype if fmt != "OGG" else "VORBIS"
    with atomic_path(path) as tmp:  # removes the partial file if the write fails
        sf.write(str(tmp), np.clip(wave, -1.0, 1.0), sample_rate, format=fmt, subtype=sub)
