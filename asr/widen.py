"""Widen a trained Conv1D+BiLSTM's LSTM without changing what it computes (Net2Net-style growth).

    python -m asr.widen --model asr/pretrained/conv_bilstm_synth_en --lstm-hidden 384 --out exp/wide/init.pt
    python -m asr.train --config configs/asr/conv_bilstm_wide.yaml --init exp/wide/init.pt ...

A recogniser trained for many hours underfits its training set (the bundled one errs on 3.3% of the
characters of training utterances), and training a bigger one from scratch costs those hours again.
Growing it keeps what it learnt: every LSTM layer gets ``new - old`` more units per direction, whose
incoming weights are freshly initialised and whose outgoing weights (into the old units' gates, the next
layer and the output layer) are zero. The old units therefore see exactly what they saw before, and the
widened model's outputs equal the original's; training then teaches the old units to use the new ones
(the zero weights have non-zero gradients, since the new units' activations are not zero).

The output is a checkpoint with a ``model`` entry, which ``asr.train --init`` reads when the config's
``model.lstm_hidden`` is the new width. Everything else (convolutions, feature statistics, vocabulary)
is copied unchanged.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
from pathlib import Path

import torch

from audio.training import grow_checkpoint

log = logging.getLogger(__name__)

__all__ = ["widen_lstm_state"]

_LSTM = re.compile(r"^(?P<prefix>.*lstm\.)(?P<kind>weight_ih|weight_hh|bias_ih|bias_hh)_l(?P<layer>\d+)(?P<rev>_reverse)?$")


def _gate_rows(old: torch.Tensor, hidden: int, new: int, fresh: torch.Tensor) -> torch.Tensor:
    """``(4*hidden, ...)`` -> ``(4*new, ...)``: each of the four gate blocks keeps its old rows first and
    takes its new rows from ``fresh`` ``(4*new, ...)``."""
    out = fresh.clone()
    for gate in range(4):
        out[gate * new:gate * new + hidden] = old[gate * hidden:(gate + 1) * hidden]
    return out


def _spread_columns(old: torch.Tensor, hidden: int, new: int) -> torch.Tensor:
    """``(rows, 2*hidden)`` -> ``(rows, 2*new)``: the forward units' columns to ``[0, hidden)``, the
    backward units' to ``[new, new + hidden)``, zeros for the new units."""
    out = old.new_zeros(old.shape[0], 2 * new)
    out[:, :hidden] = old[:, :hidden]
    out[:, new:new + hidden] = old[:, hidden:]
    return out


def widen_lstm_state(state: dict[str, torch.Tensor], new_hidden: int, *, seed: int = 0) -> dict[str, torch.Tensor]:
    """A copy of a ConvBiLSTM (or Recognizer) state dict whose bidirectional LSTM has ``new_hidden`` units
    per direction and whose output layer reads them; the model it describes computes what ``state`` did.

    The new units' incoming weights and biases are drawn as ``nn.LSTM`` initialises them,
    ``U(-1/sqrt(new_hidden), 1/sqrt(new_hidden))``; their outgoing weights are zero. Raises ``ValueError``
    if ``state`` has no LSTM, if the LSTM is not bidirectional, or if ``new_hidden`` is smaller than the
    present width."""
    keys = {k: _LSTM.match(k) for k in state}
    lstm_keys = {k: m for k, m in keys.items() if m}
    if not lstm_keys:
        raise ValueError("the state dict has no LSTM weights (…lstm.weight_hh_l0)")
    if not any(m["rev"] for m in lstm_keys.values()):
        raise ValueError("the LSTM is not bidirectional; only the Conv1D+BiLSTM's is widened")
    prefix = next(iter(lstm_keys.values()))["prefix"]
    hidden = state[f"{prefix}weight_hh_l0"].shape[1]
    if new_hidden < hidden:
        raise ValueError(f"--lstm-hidden {new_hidden} is smaller than the model's {hidden}")
    head_key = prefix[: -len("lstm.")] + "head.weight"
    if head_key not in state or state[head_key].shape[1] != 2 * hidden:
        raise ValueError(f"expected the output layer {head_key} to read the LSTM's {2 * hidden} outputs")
    gen = torch.Generator().manual_seed(seed)
    bound = 1.0 / math.sqrt(new_hidden)
    out = dict(state)
    for key, m in lstm_keys.items():
        old = state[key]
        # Old rows keep their weights, with zeros from the new units: the old units do not listen to them.
        if m["kind"] == "weight_hh":
            old = torch.cat([old, old.new_zeros(old.shape[0], new_hidden - hidden)], dim=1)
        elif m["kind"] == "weight_ih" and int(m["layer"]) > 0:  # reads the layer below's two directions
            old = _spread_columns(old, hidden, new_hidden)
        fresh = (torch.rand((4 * new_hidden, *old.shape[1:]), generator=gen) * 2 - 1).mul_(bound).to(old.dtype)
        out[key] = _gate_rows(old, hidden, new_hidden, fresh).contiguous()
    out[head_key] = _spread_columns(state[head_key], hidden, new_hidden).contiguous()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.widen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path,
                        help="a bundle folder (model.safetensors) or a trainer checkpoint (final.pt)")
    parser.add_argument("--lstm-hidden", required=True, type=int, help="the new LSTM width per direction")
    parser.add_argument("--out", required=True, type=Path, help="the widened checkpoint to write (.pt)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the new units' initial weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        n_old, n_new = grow_checkpoint(args.model, args.out, lambda state: widen_lstm_state(
            state, args.lstm_hidden, seed=args.seed), lstm_hidden=args.lstm_hidden)
    except (FileNotFoundError, ValueError) as e:
        print(f"python -m asr.widen: error: {e}", file=sys.stderr)
        return 2
    log.info("wrote %s: LSTM widened to %d units per direction, %.2fM -> %.2fM numbers", args.out,
             args.lstm_hidden, n_old / 1e6, n_new / 1e6)
    return 0


if __name__ == "__main__":
    sys.exit(main())
