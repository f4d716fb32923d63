"""How well an attention alignment behaves: monotonic, focused, near the diagonal, reaching the end.

A good Tacotron alignment reads the text once, left to right, one symbol region at a time. For an
alignment ``A`` of shape ``(decoder steps T, encoder steps N)`` with ``a_t = argmax_n A[t, n]``:

- ``monotonic``: the fraction of consecutive steps with ``a_{t+1} >= a_t`` (1.0: never jumps back).
- ``focus_rate``: the mean over steps of ``max_n A[t, n]`` (Ren et al. 2019, FastSpeech; 1.0: each step
  attends to a single symbol; a blurred or lost alignment is near ``1 / N``).
- ``diagonality``: the mean over steps of the attention mass within ``band`` of the diagonal,
  ``sum_n A[t, n] * [|n / N - t / T| <= band]`` (uniform attention scores about ``2 band``).
- ``end_reached``: 1.0 if some step attends to one of the last ``end_window`` symbols (the whole text was
  read), else 0.0.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["alignment_scores", "mean_scores"]


def alignment_scores(
    attn: torch.Tensor | np.ndarray,
    *,
    steps: int | None = None,
    text_length: int | None = None,
    band: float = 0.1,
    end_window: int = 3,
) -> dict[str, float]:
    """Scores of one alignment (see the module docstring).

    Args:
        attn: ``(decoder steps, encoder steps)`` attention weights.
        steps, text_length: the valid region (default: all of it).
    Returns:
        ``{"monotonic", "focus_rate", "diagonality", "end_reached"}``, each in [0, 1].
    """
    a = (
        attn.detach().float().cpu().numpy()
        if isinstance(attn, torch.Tensor)
        else np.asarray(attn, np.float64)
    )
    if a.ndim != 2:
        raise ValueError(f"expected a (decoder steps, encoder steps) alignment, got shape {a.shape}")
    a = a[: steps or a.shape[0], : text_length or a.shape[1]]
    n_steps, n_text = a.shape
    if n_steps == 0 or n_text == 0:
        raise ValueError("an empty alignment has no scores")
    peaks = a.argmax(axis=1)
    monotonic = float(np.mean(np.diff(peaks) >= 0)) if n_steps > 1 else 1.0
    t = np.arange(n_steps)[:, None] / max(1, n_steps - 1)
    n = np.arange(n_text)[None, :] / max(1, n_text - 1)
    near = np.abs(n - t) <= band
    return {
        "monotonic": monotonic,
        "focus_rate": float(a.max(axis=1).mean()),
        "diagonality": float((a * near).sum(axis=1).mean()),
        "end_reached": float(peaks.max() >= n_text - end_window),
    }


def mean_scores(scores: list[dict[str, float]]) -> dict[str, float]:
    """The per-key mean of several score dicts (empty input: empty dict)."""
    if not scores:
        return {}
    return {key: float(np.mean([s[key] for s in scores])) for key in scores[0]}
