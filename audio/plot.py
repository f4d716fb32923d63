"""PNG plots for features, attention alignments and training curves (matplotlib, Agg renderer).

Figures are built with ``matplotlib.figure.Figure`` and rendered by Agg, never through pyplot, so
plotting needs no display, changes no global backend and leaks no figures in a long training run.
Every plot is written atomically (``path.tmp`` then rename), so a dashboard never reads half an image.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from audio.atomic import atomic_path
from audio.features import KINDS, FeatureConfig, mel_frequencies

__all__ = ["plot_spectrogram", "plot_alignment", "plot_curves"]

_DB_RANGE = 80.0  # dB shown below the loudest cell of a linear spectrogram


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)  # attaches the Agg canvas to the figure
    return fig


def _save(fig: Figure, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")


def _to_db(values: np.ndarray, power: float) -> np.ndarray:
    """Linear |X|**power -> dB, clipped to ``_DB_RANGE`` below the peak for a readable colour scale."""
    db = (10.0 * power) * np.log10(np.maximum(values, 1e-10) ** (1.0 / power))
    return np.maximum(db, db.max() - _DB_RANGE)


def plot_spectrogram(
    feats,
    cfg: FeatureConfig,
    kind: str,
    path: str | os.PathLike,
    title: str | None = None,
) -> None:
    """Plot one utterance's features as an image with a colourbar, time in seconds on the x axis.

    Args:
        feats: ``(frames, features)`` tensor or array, as produced by ``audio.features`` for ``kind``.
        kind: ``spectrogram`` (y in Hz, shown in dB), ``mel`` (shown in dB) or ``logmel`` (y in mel
            bins, with a right-hand axis in Hz), or ``mfcc`` (y is the coefficient index).
        path: PNG to write.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown feature kind {kind!r}; choose from {KINDS}")
    values = _as_numpy(feats)
    if values.ndim != 2:
        raise ValueError(f"expected (frames, features), got shape {values.shape}")
    frames, dim = values.shape
    seconds = frames * cfg.hop_length / cfg.sample_rate
    image = values.T  # (frames, features) -> (features, frames): time runs along x
    label = {"spectrogram": "dB", "mel": "dB", "logmel": "log mel", "mfcc": "coefficient"}[kind]
    if kind in ("spectrogram", "mel"):
        image = _to_db(image, cfg.power)
    if kind == "spectrogram":
        extent = (0.0, seconds, 0.0, cfg.sample_rate / 2)
    else:
        extent = (0.0, seconds, -0.5, dim - 0.5)

    fig = _figure(min(4 + seconds * 2, 16), 4)
    ax = fig.subplots()
    im = ax.imshow(image, origin="lower", aspect="auto", interpolation="nearest", extent=extent, cmap="magma")
    ax.set_xlabel("time (s)")
    if kind == "spectrogram":
        ax.set_ylabel("frequency (Hz)")
    elif kind == "mfcc":
        ax.set_ylabel("MFCC index")
    else:
        ax.set_ylabel("mel bin")
        centres = mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin, fmax=cfg.mel_fmax, scale=cfg.mel_scale)
        centres = centres[1:-1].numpy()  # filter peaks, one per bin
        bins = np.arange(dim, dtype=np.float64)
        hz_axis = ax.secondary_yaxis(
            "right",
            functions=(lambda b: np.interp(b, bins, centres), lambda hz: np.interp(hz, centres, bins)),
        )
        hz_axis.set_ylabel("frequency (Hz)")
    fig.colorbar(im, ax=ax, label=label, pad=0.16 if kind in ("mel", "logmel") else 0.02)
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_alignment(attn, path: str | os.PathLike, title: str | None = None) -> None:
    """Plot an attention alignment (Tacotron convention: decoder steps on x, encoder steps on y).

    Args: attn ``(dec_steps, enc_steps)`` attention weights; path: PNG to write.
    """
    weights = _as_numpy(attn)
    if weights.ndim != 2:
        raise ValueError(f"expected (dec_steps, enc_steps), got shape {weights.shape}")
    fig = _figure(6, 4)
    ax = fig.subplots()
    # (dec, enc) -> (enc, dec): encoder position on the y axis, as alignment plots are usually read.
    im = ax.imshow(weights.T, origin="lower", aspect="auto", interpolation="nearest", cmap="viridis")
    ax.set_xlabel("decoder step")
    ax.set_ylabel("encoder step")
    fig.colorbar(im, ax=ax, label="weight")
    if title:
        ax.set_title(title)
    _save(fig, path)


def plot_curves(
    curves: Mapping[str, Sequence[tuple[float, float]]],
    path: str | os.PathLike,
    title: str | None = None,
) -> None:
    """Plot training curves, one subplot per name sharing the step axis (so loss and CER keep their scales).

    Args: curves maps a name (``"train loss"``, ``"dev CER"``) to ``[(step, value), ...]``; path: PNG.
    """
    if not curves:  # e.g. before the first logged step: an explicit empty chart, not a crash in training
        fig = _figure(7, 2.4)
        ax = fig.subplots()
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("step")
        if title:
            ax.set_title(title)
        _save(fig, path)
        return
    fig = _figure(7, 2.4 * len(curves))
    axes = fig.subplots(len(curves), 1, sharex=True, squeeze=False)
    for ax, (name, points) in zip(axes[:, 0], curves.items(), strict=True):
        data = np.asarray(list(points), dtype=np.float64).reshape(-1, 2)
        ax.plot(data[:, 0], data[:, 1], marker="." if len(data) < 50 else None, linewidth=1.2)
        values = data[:, 1][np.isfinite(data[:, 1])]
        if values.size and values.min() > 0 and values.max() / values.min() > 100:
            ax.set_yscale("log")  # losses often fall by orders of magnitude
        ax.set_ylabel(name)
        ax.grid(True, alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    if title:
        axes[0, 0].set_title(title)
    _save(fig, path)
