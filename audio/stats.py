"""Per-dimension mean and standard deviation of log-mel features over a corpus, for normalisation.

Computed once per recipe (``python -m audio.stats --manifest M --config FEATURE_YAML --out stats.json``)
and applied by models to their input features. Sums are accumulated in float64, so a long corpus does
not lose precision.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from audio.atomic import write_json
from audio.config import to_dict
from audio.features import FeatureConfig, FeatureExtractor, load_feature_config
from audio.io import AudioError, load
from audio.manifest import read_manifest, resolve_audio

__all__ = ["FeatureStats", "StatsAccumulator", "compute_stats", "main"]

log = logging.getLogger(__name__)

STD_FLOOR = 1e-5  # a constant feature dimension is divided by this rather than by zero


@dataclass(frozen=True)
class FeatureStats:
    """Mean and standard deviation of each feature dimension over ``count`` frames."""

    mean: tuple[float, ...]
    std: tuple[float, ...]
    count: int  # frames
    feature_config: dict | None = None  # the FeatureConfig (as a dict) the stats were computed with

    def __post_init__(self):
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean has {len(self.mean)} dims but std has {len(self.std)}")

    @property
    def dim(self) -> int:
        return len(self.mean)

    def save(self, path: str | os.PathLike) -> None:
        """Write as JSON, atomically."""
        write_json(path, dataclasses.asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStats:
        """Read a JSON file written by :meth:`save`. Unknown keys are an error."""
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(data, dict) or set(data) - names or not {"mean", "std", "count"} <= set(data):
            raise ValueError(
                f"{path}: not a FeatureStats file (keys {sorted(data) if isinstance(data, dict) else data})"
            )
        return cls(
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            count=int(data["count"]),
            feature_config=data.get("feature_config"),
        )

    def normalize(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``(feats - mean) / std`` with padded frames kept at zero.

        Args: feats ``(B, frames, dim)`` (or ``(frames, dim)`` with lengths None); lengths ``(B,)`` frames.
        Returns: a tensor of the same shape and dtype.
        """
        if feats.shape[-1] != self.dim:
            raise ValueError(f"features have {feats.shape[-1]} dims, stats have {self.dim}")
        mean = torch.tensor(self.mean, dtype=feats.dtype, device=feats.device)
        std = torch.tensor(self.std, dtype=feats.dtype, device=feats.device).clamp(min=STD_FLOOR)
        out = (feats - mean) / std
        if lengths is not None:
            valid = (
                torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths.to(feats.device)[:, None]
            )
            out = out * valid.unsqueeze(-1).to(out.dtype)  # (B, frames, 1)
        return out

    apply = normalize

    def denormalize(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """The inverse of :meth:`normalize`: ``feats * std + mean``; padded frames stay zero. Same shapes."""
        mean = torch.tensor(self.mean, dtype=feats.dtype, device=feats.device)
        std = torch.tensor(self.std, dtype=feats.dtype, device=feats.device).clamp(min=STD_FLOOR)
        out = feats * std + mean
        if lengths is not None:
            valid = (
                torch.arange(feats.shape[1], device=feats.device)[None, :] < lengths.to(feats.device)[:, None]
            )
            out = out * valid.unsqueeze(-1).to(out.dtype)
        return out


class StatsAccumulator:
    """Running float64 sums of features and their squares, per dimension."""

    def __init__(self, dim: int):
        self.sum = np.zeros(dim, dtype=np.float64)
        self.sum_sq = np.zeros(dim, dtype=np.float64)
        self.count = 0

    def add(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> None:
        """Add the valid frames of ``feats (B, frames, dim)`` (lengths ``(B,)``) or ``(frames, dim)``."""
        if feats.dim() == 2:
            feats = feats.unsqueeze(0)
        for i, item in enumerate(feats):
            n = item.shape[0] if lengths is None else int(lengths[i])
            frames = item[:n].detach().cpu().to(torch.float64).numpy()
            self.sum += frames.sum(axis=0)
            self.sum_sq += np.square(frames).sum(axis=0)
            self.count += n

    def stats(self, feature_config: FeatureConfig | None = None) -> FeatureStats:
        if self.count == 0:
            raise ValueError("no frames were accumulated")
        mean = self.sum / self.count
        var = np.maximum(self.sum_sq / self.count - np.square(mean), 0.0)
        return FeatureStats(
            mean=tuple(mean.tolist()),
            std=tuple(np.sqrt(var).tolist()),
            count=self.count,
            feature_config=to_dict(feature_config) if feature_config is not None else None,
        )


def compute_stats(
    manifest: str | os.PathLike,
    cfg: FeatureConfig,
    *,
    kind: str = "logmel",
    progress: bool = True,
    max_utterances: int | None = None,
) -> FeatureStats:
    """Stats of ``kind`` features over the utterances of a manifest (audio loaded at ``cfg.sample_rate``).

    ``max_utterances`` keeps an evenly spaced subset: a few thousand utterances pin the mean and std
    down to well under 1% of the std, at a fraction of the cost of reading a whole corpus.
    Raises AudioError on the first unreadable file, naming it.
    """
    records = read_manifest(manifest)
    if max_utterances is not None and len(records) > max_utterances:
        records = records[:: -(-len(records) // max_utterances)]
    extractor = FeatureExtractor(cfg, kind)
    acc = StatsAccumulator(extractor.dim)
    with torch.inference_mode():
        for rec in tqdm(records, desc="feature stats", unit="utt", disable=not progress):
            wave, _ = load(resolve_audio(manifest, rec), cfg.sample_rate)
            feats, frame_lengths = extractor(wave.unsqueeze(0))  # (1, samples) -> (1, frames, dim)
            acc.add(feats, frame_lengths)
    stats = acc.stats(cfg)
    log.info("feature stats over %d utterances, %d frames", len(records), stats.count)
    return stats


def main(argv: list[str] | None = None, prog: str = "python -m audio.stats") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Mean/std of log-mel features over a manifest.")
    parser.add_argument("--manifest", required=True, help="JSON-lines manifest of the training audio")
    parser.add_argument(
        "--config", help="feature YAML (a FeatureConfig, or a file with a 'features:' section)"
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a FeatureConfig field, e.g. --set n_mels=40 (repeatable)",
    )
    parser.add_argument("--out", required=True, help="stats JSON to write")
    parser.add_argument("--max-utterances", type=int, help="use an evenly spaced subset of this size")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_feature_config(args.config, args.overrides)
        stats = compute_stats(args.manifest, cfg, max_utterances=args.max_utterances)
    except (AudioError, ValueError, OSError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    stats.save(args.out)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
