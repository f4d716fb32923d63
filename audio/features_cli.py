"""``glottis features``: compute features of one audio file, save them as .npy, optionally plot them."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from audio.atomic import atomic_path
from audio.features import KINDS, FeatureExtractor, load_feature_config
from audio.io import AudioError, load

__all__ = ["main"]

log = logging.getLogger(__name__)

_EPILOG = """\
examples:
  glottis features speech.wav --kind logmel --out speech.npy --plot speech.png
  glottis features speech.wav --kind mfcc --out mfcc.npy --set n_mfcc=20 --set sample_rate=22050
  glottis features speech.wav --kind mel --out mel.npy --config configs/asr/conv_bilstm.yaml

The audio is resampled to the config's sample_rate. The .npy holds a float32 (frames, features) array.
"""


def _parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Compute spectrogram, mel, log-mel or MFCC features of an audio file.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("audio", metavar="IN", help="input audio file (wav, flac, ogg, ...)")
    parser.add_argument("--kind", choices=KINDS, default="logmel", help="feature type (default: logmel)")
    parser.add_argument("--out", required=True, metavar="FEATS.npy", help="where to write the features")
    parser.add_argument("--plot", metavar="PNG", help="also plot the features to this PNG")
    parser.add_argument(
        "--config",
        metavar="YAML",
        help="feature config: a FeatureConfig mapping, or a file with a 'features:' section",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one FeatureConfig field, e.g. --set n_mels=40 (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None, prog: str = "glottis features") -> int:
    """Run the command; returns the exit status (0 ok, 1 bad audio or output, 2 bad config)."""
    args = _parser(prog).parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = load_feature_config(args.config, args.overrides)
    except (ValueError, TypeError, OSError) as err:
        print(f"{prog}: config: {err}", file=sys.stderr)
        return 2
    try:
        wave, _ = load(args.audio, cfg.sample_rate)
    except AudioError as err:
        print(f"{prog}: {err}", file=sys.stderr)  # err reads "<file>: <reason>"
        return 1
    extractor = FeatureExtractor(cfg, args.kind)
    with torch.inference_mode():
        feats, _ = extractor(wave.unsqueeze(0))  # (samples,) -> (1, samples) -> (1, frames, dim)
    feats = feats[0].numpy()
    try:
        with atomic_path(args.out) as tmp, open(tmp, "wb") as f:
            np.save(f, feats)  # a file object, so numpy does not append another ".npy" to the tmp name
        if args.plot:
            from audio.plot import plot_spectrogram  # matplotlib only when asked for

            plot_spectrogram(feats, cfg, args.kind, args.plot, title=f"{Path(args.audio).name} ({args.kind})")
    except OSError as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 1
    log.info("%s: %s %s -> %s", args.audio, args.kind, tuple(feats.shape), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
