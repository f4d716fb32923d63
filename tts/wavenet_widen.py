"""Widen a trained WaveNet's residual and skip channels without changing what it computes (Net2Net growth).

    python -m tts.wavenet_widen --model tts/pretrained/wavenet_synth_en --residual 48 --skip 96 \\
        --out exp/vocoder_wavenet_wide/init.pt
    python -m tts.vocoder_train --config configs/tts/wavenet_wide.yaml --init exp/vocoder_wavenet_wide/init.pt ...

The bundled vocoder is small (32 residual / 64 skip channels) so that numba could generate it in real time;
the C kernel (``tts/_wavenet_kernel.c``) leaves room for a wider one, and training one from scratch costs
the many CPU hours the small one took again. Growing keeps what it learnt:

- new residual channels: fresh embedding columns and fresh residual rows feed them, and every weight that
  reads them (the gates' inputs) is zero;
- new gated units: fresh gate rows (filter and gate halves), zero conditioning for them, and zero weights
  from them into the old residual and skip channels (fresh ones into the new channels);
- new skip channels and new first-output units: fresh rows, zero weights into the old units and into the
  logits.

So the old units see exactly what they saw before and the logits are unchanged (tested); training then
teaches the old units to use the new ones (the zero weights have non-zero gradients, since the new units'
activations are not zero). The output is a checkpoint with a ``model`` entry that ``tts.vocoder_train
--init`` reads when the config's ``model.residual_channels`` / ``skip_channels`` are the new widths.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from audio.training import grow_checkpoint

log = logging.getLogger(__name__)

__all__ = ["widen_wavenet_state"]


def _place(old: torch.Tensor, new_shape: tuple[int, ...], blocks: list[tuple[int, int, int]], fresh_rows: bool,
           generator: torch.Generator, scale: float) -> torch.Tensor:
    """A ``new_shape`` tensor holding ``old``. ``blocks``: ``(old_start, new_start, length)`` row ranges of
    dim 0 to copy. New rows are fresh (``N(0, scale²)``) if ``fresh_rows`` else zero; new columns of old rows
    (dim 1, past ``old.shape[1]``) are zero."""
    out = (torch.randn(new_shape, generator=generator) * scale if fresh_rows else torch.zeros(new_shape)).to(old.dtype)
    for old_start, new_start, length in blocks:
        rows = old[old_start : old_start + length]
        if old.dim() == 1:
            out[new_start : new_start + length] = rows
        else:
            out[new_start : new_start + length] = 0
            out[new_start : new_start + length, : old.shape[1]] = rows
    return out


def widen_wavenet_state(state: dict[str, torch.Tensor], residual: int, skip: int, *, seed: int = 0,
                        scale: float = 0.05) -> dict[str, torch.Tensor]:
    """A copy of a :class:`tts.wavenet.WaveNet` state dict with ``residual`` / ``skip`` channels that computes
    what ``state`` did (see the module docstring); new incoming weights are ``N(0, scale²)``."""
    r, s = state["embed.weight"].shape[1], state["out1.weight"].shape[0]
    if residual < r or skip < s:
        raise ValueError(f"can only widen: the model has {r} residual / {s} skip channels")
    layers = sum(1 for k in state if k.startswith("gates.") and k.endswith(".weight"))
    g = torch.Generator().manual_seed(seed)
    out = dict(state)
    # Residual stream: fresh values in the new channels of the embedding.
    emb = state["embed.weight"]
    out["embed.weight"] = torch.cat([emb, torch.randn(emb.shape[0], residual - r, generator=g).to(emb) * scale], 1)
    # Gates: (2R, R, 2) -> (2R', R', 2); filter rows [0, R) and gate rows [R, 2R) keep their places in each half.
    halves = [(0, 0, r), (r, residual, r)]
    for i in range(layers):
        w = state[f"gates.{i}.weight"]
        out[f"gates.{i}.weight"] = _place(w, (2 * residual, residual, 2), halves, True, g, scale)
        out[f"gates.{i}.bias"] = _place(state[f"gates.{i}.bias"], (2 * residual,), halves, False, g, scale)
        # res_skip: (R + S, R, 1) -> (R' + S', R', 1): residual rows, then skip rows; zero from the new units
        # into the old rows, fresh into the new ones.
        w = state[f"res_skip.{i}.weight"]
        rows = [(0, 0, r), (r, residual, s)]
        out[f"res_skip.{i}.weight"] = _place(w, (residual + skip, residual, 1), rows, True, g, scale)
        out[f"res_skip.{i}.bias"] = _place(state[f"res_skip.{i}.bias"], (residual + skip,), rows, False, g, scale)
    # Conditioning projection: layers x [filter R | gate R] rows -> layers x [filter R' | gate R']; zero for the
    # new units (their conditioning is learnt from there).
    proj_rows = [(2 * r * i + h * r, 2 * residual * i + h * residual, r) for i in range(layers) for h in (0, 1)]
    w = state["cond_net.proj.weight"]
    out["cond_net.proj.weight"] = _place(w, (2 * residual * layers, *w.shape[1:]), proj_rows, False, g, scale)
    out["cond_net.proj.bias"] = _place(state["cond_net.proj.bias"], (2 * residual * layers,), proj_rows, False, g,
                                       scale)
    # Output layers: out1 (S, S, 1) -> (S', S', 1), out2 (K, S, 1) -> (K, S', 1).
    out["out1.weight"] = _place(state["out1.weight"], (skip, skip, 1), [(0, 0, s)], True, g, scale)
    out["out1.bias"] = _place(state["out1.bias"], (skip,), [(0, 0, s)], False, g, scale)
    k = state["out2.weight"].shape[0]
    out["out2.weight"] = _place(state["out2.weight"], (k, skip, 1), [(0, 0, k)], False, g, scale)
    return {key: v.contiguous() for key, v in out.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts.wavenet_widen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path,
                        help="a vocoder bundle folder (model.safetensors) or a trainer checkpoint (final.pt)")
    parser.add_argument("--residual", required=True, type=int, help="the new residual channel count")
    parser.add_argument("--skip", required=True, type=int, help="the new skip channel count")
    parser.add_argument("--out", required=True, type=Path, help="the widened checkpoint to write (.pt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new units' initial weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        n_old, n_new = grow_checkpoint(args.model, args.out, lambda state: widen_wavenet_state(
            state, args.residual, args.skip, seed=args.seed), residual_channels=args.residual,
            skip_channels=args.skip)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"python -m tts.wavenet_widen: error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s: %d residual / %d skip channels, %.3fM -> %.3fM numbers", args.out, args.residual,
             args.skip, n_old / 1e6, n_new / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
