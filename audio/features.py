"""Batched, torch-native feature extraction: spectrogram, mel, log-mel and MFCC.

All extractors take ``(B, samples)`` float waveforms plus lengths in samples and return
``(B, frames, features)`` plus lengths in frames. Padding never leaks into valid frames: framing uses
zero ("constant") padding at both ends as librosa does by default, so a padded batch row gives exactly
the frames of the unpadded item. Frames past an item's length are zero.

Definitions (each matches librosa with the same parameters):

- ``spectrogram``: ``|STFT|**power``, shape ``(B, frames, n_fft // 2 + 1)``;
  ``librosa.stft(center=True, pad_mode="constant")`` then ``abs() ** power``.
- ``mel``: the spectrogram times the mel filterbank, ``(B, frames, n_mels)``;
  ``librosa.feature.melspectrogram``. The filterbank equals ``librosa.filters.mel``.
- ``logmel``: natural log, ``log(max(mel, log_floor))``.
- ``mfcc``: the first ``n_mfcc`` coefficients of the orthonormal DCT-II of the mel spectrogram in
  decibels, ``10 * log10(max(mel, log_floor))``; equal to
  ``librosa.feature.mfcc(S=librosa.power_to_db(mel, amin=log_floor, top_db=None), n_mfcc=n_mfcc)``.
  librosa's ``top_db`` clipping is left out on purpose: it depends on the loudest frame of the whole
  utterance, so a frame's features would depend on distant audio.

Pre-emphasis ``y[n] = x[n] - a * x[n - 1]`` (with ``x[-1] = 0``, as ``scipy.signal.lfilter``) is
applied to the waveform before framing when ``FeatureConfig.preemphasis > 0``.
"""

from __future__ import annotations

import functools
import math
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from audio.config import apply_overrides, from_dict, read_yaml

__all__ = [
    "FeatureConfig",
    "KINDS",
    "load_feature_config",
    "feature_dim",
    "num_frames",
    "hz_to_mel",
    "mel_to_hz",
    "mel_frequencies",
    "mel_filterbank",
    "dct_matrix",
    "make_window",
    "preemphasis",
    "deemphasis",
    "spectrogram",
    "mel_spectrogram",
    "log_mel",
    "mfcc",
    "FeatureExtractor",
]

KINDS = ("spectrogram", "mel", "logmel", "mfcc")
_CHUNK_VALUES = 1 << 18  # windowed samples per chunk of frames (1 MB of float32): cache-sized temporaries


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

    def __post_init__(self):
        if self.win_length > self.n_fft:
            raise ValueError(f"win_length {self.win_length} > n_fft {self.n_fft}")
        if self.hop_length <= 0 or self.n_fft <= 0 or self.sample_rate <= 0:
            raise ValueError("sample_rate, n_fft and hop_length must be positive")
        if self.mel_scale not in ("slaney", "htk"):
            raise ValueError(f"mel_scale must be 'slaney' or 'htk', not {self.mel_scale!r}")
        if self.mel_norm not in ("slaney", None):
            raise ValueError(f"mel_norm must be 'slaney' or null, not {self.mel_norm!r}")
        if self.power <= 0:
            raise ValueError(f"power must be positive, not {self.power}")

    @property
    def n_freqs(self) -> int:
        """Number of STFT bins, ``n_fft // 2 + 1``."""
        return self.n_fft // 2 + 1

    @property
    def mel_fmax(self) -> float:
        """The upper mel edge in Hz (``fmax`` or Nyquist)."""
        return float(self.sample_rate) / 2 if self.fmax is None else float(self.fmax)


def load_feature_config(path: str | os.PathLike | None, overrides: list[str] | None = None) -> FeatureConfig:
    """A FeatureConfig from YAML: the whole file, or its top-level ``features:`` section if it has one.

    ``overrides`` are ``key=value`` strings (``features.key=value`` also accepted); unknown keys are
    errors that name them. ``path=None`` starts from the defaults.
    """
    data: dict = {}
    if path is not None:
        data = read_yaml(path)
        if isinstance(data.get("features"), dict):
            data = dict(data["features"])
    overrides = [o.removeprefix("features.") for o in overrides or []]
    apply_overrides(data, overrides)
    return from_dict(FeatureConfig, data, where=str(path) if path else "FeatureConfig")


def feature_dim(cfg: FeatureConfig, kind: str) -> int:
    """Size of the last axis of ``kind`` features."""
    dims = {"spectrogram": cfg.n_freqs, "mel": cfg.n_mels, "logmel": cfg.n_mels, "mfcc": cfg.n_mfcc}
    if kind not in dims:
        raise ValueError(f"unknown feature kind {kind!r}; choose from {KINDS}")
    return dims[kind]


def num_frames(lengths: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Frames per item: ``1 + len // hop`` when centred, else ``1 + (len - n_fft) // hop`` (>= 0).

    Args: lengths ``(B,)`` int64 samples. Returns ``(B,)`` int64 frames.
    """
    lengths = torch.as_tensor(lengths, dtype=torch.long)
    if cfg.center:
        return 1 + torch.div(lengths, cfg.hop_length, rounding_mode="floor")
    return (1 + torch.div(lengths - cfg.n_fft, cfg.hop_length, rounding_mode="floor")).clamp(min=0)


# --- mel scale and filterbank ---------------------------------------------------------------------

_SLANEY_F_SP = 200.0 / 3  # Hz per mel below 1 kHz
_SLANEY_MIN_LOG_HZ = 1000.0
_SLANEY_MIN_LOG_MEL = _SLANEY_MIN_LOG_HZ / _SLANEY_F_SP
_SLANEY_LOGSTEP = math.log(6.4) / 27.0


def hz_to_mel(freqs: torch.Tensor, scale: str = "slaney") -> torch.Tensor:
    """Hz -> mel, elementwise (``librosa.hz_to_mel``; ``scale="htk"`` is ``2595 log10(1 + f/700)``)."""
    freqs = torch.as_tensor(freqs, dtype=torch.float64)
    if scale == "htk":
        return 2595.0 * torch.log10(1.0 + freqs / 700.0)
    linear = freqs / _SLANEY_F_SP
    log = (
        _SLANEY_MIN_LOG_MEL
        + torch.log(freqs.clamp(min=_SLANEY_MIN_LOG_HZ) / _SLANEY_MIN_LOG_HZ) / _SLANEY_LOGSTEP
    )
    return torch.where(freqs >= _SLANEY_MIN_LOG_HZ, log, linear)


def mel_to_hz(mels: torch.Tensor, scale: str = "slaney") -> torch.Tensor:
    """Mel -> Hz, elementwise; the inverse of :func:`hz_to_mel`."""
    mels = torch.as_tensor(mels, dtype=torch.float64)
    if scale == "htk":
        return 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    linear = _SLANEY_F_SP * mels
    log = _SLANEY_MIN_LOG_HZ * torch.exp(_SLANEY_LOGSTEP * (mels - _SLANEY_MIN_LOG_MEL))
    return torch.where(mels >= _SLANEY_MIN_LOG_MEL, log, linear)


def mel_frequencies(n: int, *, fmin: float, fmax: float, scale: str = "slaney") -> torch.Tensor:
    """``n`` frequencies (Hz, float64) equally spaced on the mel scale from fmin to fmax inclusive."""
    mels = torch.linspace(
        float(hz_to_mel(fmin, scale)), float(hz_to_mel(fmax, scale)), n, dtype=torch.float64
    )
    return mel_to_hz(mels, scale)


def mel_filterbank(cfg: FeatureConfig) -> torch.Tensor:
    """Triangular mel filters as ``(n_freqs, n_mels)`` float32, equal to ``librosa.filters.mel(...).T``.

    Built in float64 like librosa. With ``mel_norm="slaney"`` each filter is divided by its width in Hz
    (times 2), so filters have equal area; with ``None`` each triangle peaks at 1. Built once per setting
    and process (it costs as much as the mel of a second of audio); each call returns a copy.
    """
    return _mel_filterbank(cfg.sample_rate, cfg.n_freqs, cfg.n_mels, cfg.fmin, cfg.mel_fmax, cfg.mel_scale,
                           cfg.mel_norm).clone()


@functools.lru_cache(maxsize=32)
def _mel_filterbank(
    sample_rate: int, n_freqs: int, n_mels: int, fmin: float, fmax: float, scale: str, norm: str | None
) -> torch.Tensor:
    fft_freqs = torch.linspace(0.0, sample_rate / 2, n_freqs, dtype=torch.float64)
    edges = mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax, scale=scale)
    widths = edges.diff()  # (n_mels + 1,)
    ramps = edges[:, None] - fft_freqs[None, :]  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = torch.minimum(lower, upper).clamp(min=0.0)  # (n_mels, n_freqs)
    if norm == "slaney":
        weights = weights * (2.0 / (edges[2:] - edges[:-2]))[:, None]
    return weights.T.to(torch.float32).contiguous()  # (n_mels, n_freqs) -> (n_freqs, n_mels)


def dct_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """Orthonormal DCT-II as an ``(n_in, n_out)`` float32 matrix: ``x @ D`` equals
    ``scipy.fft.dct(x, type=2, norm="ortho")[..., :n_out]``."""
    n = torch.arange(n_in, dtype=torch.float64)
    k = torch.arange(n_out, dtype=torch.float64)
    basis = torch.cos(math.pi / n_in * (n[:, None] + 0.5) * k[None, :]) * math.sqrt(2.0 / n_in)
    basis[:, 0] /= math.sqrt(2.0)
    return basis.to(torch.float32)


def make_window(cfg: FeatureConfig) -> torch.Tensor:
    """The periodic analysis window, zero-padded (centred) to ``n_fft`` as librosa does. ``(n_fft,)`` float32."""
    makers = {"hann": torch.hann_window, "hamming": torch.hamming_window, "blackman": torch.blackman_window}
    if cfg.window not in makers:
        raise ValueError(f"unknown window {cfg.window!r}; choose from {sorted(makers)}")
    win = makers[cfg.window](cfg.win_length, periodic=True, dtype=torch.float64)
    left = (cfg.n_fft - cfg.win_length) // 2
    return F.pad(win, (left, cfg.n_fft - cfg.win_length - left)).to(torch.float32)


# --- waveform helpers -----------------------------------------------------------------------------


def _length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size)`` bool, True at positions below each item's length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def preemphasis(wave: torch.Tensor, coef: float) -> torch.Tensor:
    """``y[n] = x[n] - coef * x[n - 1]`` along the last axis, with ``x[-1] = 0``. Same shape as ``wave``."""
    if coef == 0:
        return wave
    out = wave.clone()
    out[..., 1:] -= coef * wave[..., :-1]
    return out


def deemphasis(wave: torch.Tensor, coef: float) -> torch.Tensor:
    """The inverse of :func:`preemphasis`: ``y[n] = x[n] + coef * y[n - 1]``. Same shape as ``wave``."""
    if coef == 0:
        return wave
    import torchaudio.functional as AF  # an IIR filter; only inversion needs it

    a = torch.tensor([1.0, -coef], dtype=wave.dtype)
    b = torch.tensor([1.0, 0.0], dtype=wave.dtype)
    return AF.lfilter(wave, a_coeffs=a, b_coeffs=b, clamp=False)


# --- extractors -----------------------------------------------------------------------------------


def _prepare(wave: torch.Tensor, lengths: torch.Tensor | None, cfg: FeatureConfig):
    """Validate, trim to the longest item, zero samples past each length, apply pre-emphasis."""
    if wave.dim() != 2:
        raise ValueError(f"expected a (B, samples) waveform, got shape {tuple(wave.shape)}")
    if not wave.is_floating_point():
        raise ValueError(f"expected a float waveform, got {wave.dtype}")
    if lengths is None:
        lengths = torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)
    lengths = torch.as_tensor(lengths, dtype=torch.long, device=wave.device)
    longest = int(lengths.max()) if lengths.numel() else 0
    if longest > wave.shape[1] or (lengths.numel() and int(lengths.min()) < 0):
        raise ValueError(f"lengths must lie in [0, {wave.shape[1]}], got {lengths.tolist()}")
    if not cfg.center and longest < cfg.n_fft:
        raise ValueError(f"center=False needs at least n_fft={cfg.n_fft} samples, longest item has {longest}")
    wave = wave[:, :longest]
    wave = preemphasis(wave, cfg.preemphasis)
    if bool((lengths < longest).any()):
        # Batch padding may hold anything; zero it so a row frames exactly like the lone item.
        wave = wave * _length_mask(lengths, longest)
    return wave, lengths


def _stft(wave: torch.Tensor, window: torch.Tensor, cfg: FeatureConfig) -> torch.Tensor:
    """Complex STFT of already padded ``(B, samples)`` audio, uncentred, as ``(B, frames, n_freqs)``."""
    spec = torch.stft(
        wave,
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.n_fft,  # the window is already padded to n_fft
        window=window.to(wave.dtype),
        center=False,
        return_complex=True,
    )
    return spec.transpose(1, 2)  # (B, F, T) -> (B, T, F); torch computes this layout, so it is contiguous


def _power(spec: torch.Tensor, power: float) -> torch.Tensor:
    """``|spec|**power`` of a complex ``(B, T, F)`` STFT, same shape, real."""
    if power == 2.0:
        # re^2 + im^2 skips the square root (and its rounding) that abs() would take.
        squares = torch.view_as_real(spec).square()  # (B, T, F, 2)
        return squares[..., 0] + squares[..., 1]
    mag = spec.abs()
    return mag if power == 1.0 else mag.pow(power)


def _mask_frames(feats: torch.Tensor, frame_lengths: torch.Tensor) -> torch.Tensor:
    """Zero frames past each item's frame length. feats ``(B, frames, C)``."""
    if bool((frame_lengths < feats.shape[1]).any()):
        feats = feats * _length_mask(frame_lengths, feats.shape[1]).unsqueeze(-1).to(feats.dtype)
    return feats


def _frames_segment(wave: torch.Tensor, start: int, stop: int, cfg: FeatureConfig) -> torch.Tensor:
    """The samples under frames ``[start, stop)`` of ``(B, samples)``, as ``(B, segment)``.

    When centred, frame ``t`` covers samples ``[t * hop - n_fft // 2, t * hop + n_fft // 2)`` with zeros
    outside the signal (librosa's ``pad_mode="constant"``); only the two edge chunks need padding, so
    the middle ones are plain views and the whole wave is never copied.
    """
    offset = cfg.n_fft // 2 if cfg.center else 0
    first = start * cfg.hop_length - offset
    last = (stop - 1) * cfg.hop_length + cfg.n_fft - offset  # exclusive
    segment = wave[:, max(first, 0) : min(last, wave.shape[1])]
    if first < 0 or last > wave.shape[1]:
        segment = F.pad(segment, (max(-first, 0), max(last - wave.shape[1], 0)))
    return segment


def _features(
    spec: torch.Tensor,
    cfg: FeatureConfig,
    *,
    kind: str,
    mel_fb: torch.Tensor | None,
    dct: torch.Tensor | None,
) -> torch.Tensor:
    """``kind`` features from a complex ``(B, T, F)`` STFT, as ``(B, T, dim)``."""
    if kind == "spectrogram":
        return _power(spec, cfg.power)  # (B, T, F)
    feats = torch.matmul(_power(spec, cfg.power), mel_fb.to(spec.real.dtype))  # (B, T, n_mels)
    if kind in ("logmel", "mfcc"):
        feats = feats.clamp_(min=cfg.log_floor).log_()
    if kind == "mfcc":
        # log -> dB, folded into the DCT matrix: 10 log10(x) = (10 / ln 10) ln(x).
        feats = torch.matmul(feats, dct.to(feats.dtype) * (10.0 / math.log(10.0)))  # (B, T, n_mfcc)
    return feats


def _extract(
    wave: torch.Tensor,
    lengths: torch.Tensor | None,
    cfg: FeatureConfig,
    *,
    kind: str,
    window: torch.Tensor,
    mel_fb: torch.Tensor | None,
    dct: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    wave, lengths = _prepare(wave, lengths, cfg)
    frame_lengths = num_frames(lengths, cfg)
    frames = int(frame_lengths.max())
    # Work through the frames in chunks whose temporaries stay in cache; one pass over a minute of
    # audio is ~1.5x slower, as every intermediate then makes a round trip through main memory.
    chunk = max(32, _CHUNK_VALUES // (wave.shape[0] * cfg.n_fft))
    parts = []
    for start in range(0, frames, chunk):
        stop = min(frames, start + chunk)
        segment = _frames_segment(wave, start, stop, cfg)
        parts.append(_features(_stft(segment, window, cfg), cfg, kind=kind, mel_fb=mel_fb, dct=dct))
    feats = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (B, frames, dim)
    return _mask_frames(feats.contiguous(), frame_lengths), frame_lengths


def _functional(kind: str, wave, lengths, cfg):
    mel_fb = mel_filterbank(cfg) if kind != "spectrogram" else None
    dct = dct_matrix(cfg.n_mels, cfg.n_mfcc) if kind == "mfcc" else None
    return _extract(wave, lengths, cfg, kind=kind, window=make_window(cfg), mel_fb=mel_fb, dct=dct)


def spectrogram(
    wave: torch.Tensor, lengths: torch.Tensor | None, cfg: FeatureConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``|STFT|**cfg.power``.

    Args:
        wave: ``(B, samples)`` float waveform.
        lengths: ``(B,)`` int64 valid samples per item (None: all full length).
    Returns:
        ``(B, frames, n_fft // 2 + 1)`` features and ``(B,)`` int64 frame lengths.
    """
    return _functional("spectrogram", wave, lengths, cfg)


def mel_spectrogram(
    wave: torch.Tensor, lengths: torch.Tensor | None, cfg: FeatureConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mel spectrogram (linear amplitude, in the units of ``cfg.power``).

    ``wave (B, samples)``, ``lengths (B,)`` samples -> ``(B, frames, n_mels)``, ``(B,)`` frames.
    """
    return _functional("mel", wave, lengths, cfg)


def log_mel(
    wave: torch.Tensor, lengths: torch.Tensor | None, cfg: FeatureConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Natural-log mel spectrogram, ``log(max(mel, cfg.log_floor))``.

    ``wave (B, samples)``, ``lengths (B,)`` samples -> ``(B, frames, n_mels)``, ``(B,)`` frames.
    """
    return _functional("logmel", wave, lengths, cfg)


def mfcc(
    wave: torch.Tensor, lengths: torch.Tensor | None, cfg: FeatureConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """MFCCs: orthonormal DCT-II of ``10 log10(max(mel, log_floor))``, first ``cfg.n_mfcc`` coefficients.

    ``wave (B, samples)``, ``lengths (B,)`` samples -> ``(B, frames, n_mfcc)``, ``(B,)`` frames.
    """
    return _functional("mfcc", wave, lengths, cfg)


class FeatureExtractor(nn.Module):
    """``kind`` features as a module, with the window, filterbank and DCT cached as buffers.

    The buffers are derived from ``cfg`` and not saved in the state dict (the config is stored with the
    model instead), so changing the extractor never breaks a checkpoint.
    """

    def __init__(self, cfg: FeatureConfig, kind: str = "logmel"):
        super().__init__()
        feature_dim(cfg, kind)  # validates kind
        self.cfg = cfg
        self.kind = kind
        self.register_buffer("window", make_window(cfg), persistent=False)
        mel_fb = mel_filterbank(cfg) if kind != "spectrogram" else None
        dct = dct_matrix(cfg.n_mels, cfg.n_mfcc) if kind == "mfcc" else None
        self.register_buffer("mel_fb", mel_fb, persistent=False)
        self.register_buffer("dct", dct, persistent=False)

    @property
    def dim(self) -> int:
        """Size of the feature axis."""
        return feature_dim(self.cfg, self.kind)

    def forward(
        self, wave: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``wave (B, samples)`` float, ``lengths (B,)`` int64 samples ->
        ``feats (B, frames, dim)``, ``frame_lengths (B,)`` int64."""
        return _extract(
            wave, lengths, self.cfg, kind=self.kind, window=self.window, mel_fb=self.mel_fb, dct=self.dct
        )

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, dim={self.dim}, sample_rate={self.cfg.sample_rate}"
