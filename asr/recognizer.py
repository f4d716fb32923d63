"""A recogniser as one module: waveform -> normalised log-mel -> acoustic model -> CTC log-probs."""

from __future__ import annotations

import torch
from torch import nn

from audio.augment import freq_blur, spec_augment, vtlp_warp
from audio.features import FeatureConfig, FeatureExtractor
from audio.stats import FeatureStats

__all__ = ["Recognizer", "buffer_stats"]


def buffer_stats(weights: dict[str, torch.Tensor]) -> dict[str, tuple[float, ...]]:
    """The feature statistics a recogniser's weights hold (its ``feat_mean``/``feat_std`` buffers), as
    ``FeatureStats`` fields: what a checkpoint records, since those buffers, not a stats file, are used."""
    return {"mean": tuple(weights["feat_mean"].flatten().tolist()), "std": tuple(weights["feat_std"].flatten().tolist())}


def _draw(seed: int, batch: int, bounds: tuple[float, float], prob: float, unchanged: float) -> torch.Tensor:
    """``(batch,)`` float64 values drawn uniformly from ``bounds``, each replaced by ``unchanged`` with
    probability ``1 - prob``: per-utterance settings of a feature augmentation, reproducible from ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    low, high = bounds
    values = low + (high - low) * torch.rand(batch, generator=gen, dtype=torch.float64)
    keep = torch.rand(batch, generator=gen) >= prob
    return values.masked_fill(keep, unchanged)


class Recognizer(nn.Module):
    """Feature extraction, global mean/variance normalisation and the acoustic model.

    The feature statistics are buffers, so they travel in the state dict with the weights. With
    ``utterance_cmn`` each utterance's own mean is then taken off every band (ESPnet's ``utterance_mvn``
    without the variance): what stays of a voice's or a channel's average spectrum is its spread.
    """

    def __init__(self, model: nn.Module, feature_config: FeatureConfig, stats: FeatureStats | None = None,
                 spec_augment_args: dict | None = None, vtlp_prob: float = 0.0,
                 vtlp_range: tuple[float, float] = (0.9, 1.1), utterance_cmn: bool = False,
                 blur_prob: float = 0.0, blur_max_bands: float = 2.0):
        super().__init__()
        self.feature_config = feature_config
        self.utterance_cmn = utterance_cmn
        self.frontend = FeatureExtractor(feature_config, "logmel")
        dim = self.frontend.dim
        if stats is not None and stats.dim != dim:
            raise ValueError(f"feature stats have {stats.dim} dims but the features have {dim} (n_mels)")
        mean = torch.tensor(stats.mean) if stats else torch.zeros(dim)
        std = torch.tensor(stats.std) if stats else torch.ones(dim)
        self.register_buffer("feat_mean", mean.float())
        self.register_buffer("feat_std", std.float().clamp(min=1e-5))
        self.model = model
        self.spec_augment_args = spec_augment_args or {}
        self.vtlp_prob = vtlp_prob
        self.vtlp_range = tuple(vtlp_range)
        self.blur_prob = blur_prob
        self.blur_max_bands = blur_max_bands

    @property
    def subsampling(self) -> int:
        return self.model.cfg.subsampling

    @property
    def frame_shift(self) -> float:
        """Seconds per output frame."""
        return self.feature_config.hop_length * self.subsampling / self.feature_config.sample_rate

    def features(self, waves: torch.Tensor, lengths: torch.Tensor, warp: torch.Tensor | None = None,
                 blur: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, samples)`` -> normalised log-mel ``(B, frames, n_mels)`` (zero past each length), ``(B,)``.

        ``warp`` ``(B,)``: VTLP factors applied to the log-mel bands before normalisation; ``blur`` ``(B,)``:
        then Gaussian widths (bands) of a smoothing across bands (``audio.augment.freq_blur``)."""
        with torch.autocast(waves.device.type, enabled=False):
            feats, frame_lengths = self.frontend(waves.float(), lengths)
            if warp is not None:
                cfg = self.feature_config
                feats = vtlp_warp(feats, warp, fmin=cfg.fmin, fmax=cfg.mel_fmax, scale=cfg.mel_scale)
            if blur is not None:
                feats = freq_blur(feats, blur)
        return self.normalise(feats, frame_lengths), frame_lengths

    def normalise(self, feats: torch.Tensor, frame_lengths: torch.Tensor, scale: torch.Tensor | None = None,
                  shift: torch.Tensor | None = None) -> torch.Tensor:
        """Raw log-mels ``(B, frames, n_mels)`` -> the model's input (zero past each length).

        ``scale``, ``shift`` ``(n_mels,)``: an affine map after the global statistics (adaptation's)."""
        valid = (torch.arange(feats.shape[1], device=feats.device)[None, :] < frame_lengths[:, None])[:, :, None]
        feats = (feats - self.feat_mean) / self.feat_std
        if scale is not None:
            feats = feats * scale + shift
        if self.utterance_cmn:
            mean = (feats * valid).sum(1, keepdim=True) / valid.sum(1, keepdim=True).clamp(min=1)
            feats = feats - mean
        return feats * valid

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, augment_seed: int | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """waves ``(B, samples)`` float at ``feature_config.sample_rate``, lengths ``(B,)`` samples.

        ``augment_seed`` (training only) applies SpecAugment with that seed.
        Returns CTC log-probs ``(B, frames', vocab)`` and ``(B,)`` output lengths.
        """
        warp = blur = None
        if augment_seed is not None and self.training:
            batch = waves.shape[0]
            if self.vtlp_prob > 0:
                warp = _draw(augment_seed + 1, batch, self.vtlp_range, self.vtlp_prob, 1.0).to(waves.device)
            if self.blur_prob > 0:  # width 0: unchanged
                blur = _draw(augment_seed + 2, batch, (0.3, self.blur_max_bands), self.blur_prob, 0.0)
        feats, frame_lengths = self.features(waves, lengths, warp, blur)
        if augment_seed is not None and self.training:
            feats = spec_augment(feats, frame_lengths, generator=augment_seed, **self.spec_augment_args)
        return self.model(feats, frame_lengths)
