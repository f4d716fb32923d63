"""A model soup: one recogniser whose weights are the mean of several fine-tuned siblings.

    python -m asr.soup --out exp/asr_soup/final.pt exp/a/final.pt exp/b/final.pt exp/c/final.pt

Recognisers fine-tuned from the same weights (other data, seeds or schedules, at a low learning rate)
stay in one basin of the loss, and the mean of their weights is usually better than each of them
(Wortsman et al., 2022, "Model soups"). Decoding costs what one model costs, unlike an ensemble.

``--weights`` gives a weighted mean instead, and a member may be a bundle folder: the weights a run was
fine-tuned from are one end of a line through the loss, the run the other, and points between them often
hold the run's gain with less of its drift (Wortsman et al., 2022, "Robust fine-tuning of zero-shot
models", WiSE-FT). Halfway back to the bundle a run started from:

    python -m asr.soup --out exp/asr_half/final.pt exp/a/final.pt asr/pretrained/conv_bilstm_synth_en

Members must share the architecture, features, feature statistics and tokenizer; a mismatch raises a
``ValueError`` naming the file. The soup is a checkpoint like a trainer's ``final.pt`` (the first member's
metadata, with ``soup`` listing the members and ``soup_weights`` their weights), so ``asr.evaluate`` and
``asr.bundle`` take it as it is. The first member must be a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import torch

from asr.bundle import is_ctc_bundle
from asr.recognizer import buffer_stats
from audio.atomic import atomic_path
from audio.training import CheckpointManager, init_label, mean_state_dicts, read_weights

log = logging.getLogger(__name__)

__all__ = ["make_soup"]

# What members must agree on, besides the weights' names and shapes (dropout may differ). The feature
# statistics are compared as the weights' buffers (feat_mean, feat_std), which are what the model uses.
SHARED = ("model_type", "utterance_cmn", "model_config", "feature_config", "tokenizer")


def _shared(state: dict, key: str):
    if key == "model_type":
        return state.get("config", {}).get("model_type")
    if key == "utterance_cmn":  # the input normalisation (absent from checkpoints older than the option)
        return bool(state.get("config", {}).get("utterance_cmn", False))
    value = state.get(key)
    if key == "model_config" and value:
        value = {k: v for k, v in value.items() if k != "dropout"}
    return json.loads(json.dumps(value))  # as a bundle's config.json holds it: tuples are lists there


def _load_member(path: Path) -> dict:
    """A checkpoint, or a bundle folder read as one (its ``config.json`` and fp32 weights)."""
    if not path.is_dir():
        state = CheckpointManager.load(path)
        if "model" not in state:
            raise ValueError(f"{path} is not a recogniser checkpoint (no 'model' entry)")
        return state
    if not is_ctc_bundle(path):
        raise ValueError(f"{path} is not a recogniser bundle (no Glottis CTC config.json)")
    meta = json.loads((path / "config.json").read_text())
    _, weights = read_weights(path, label="member")
    return {"config": {**meta.get("training_config", {}), "model_type": meta.get("model_type")},
            "model_config": meta.get("model_config"), "feature_config": meta.get("feature_config"),
            "tokenizer": meta.get("tokenizer"),
            "model": {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}}


def make_soup(members: list[str | Path], out: str | Path, weights: list[float] | None = None) -> Path:
    """Write ``out``: the first member's checkpoint with its model replaced by the mean of all members'
    (weighted by ``weights``, which are normalised to sum to one; equal by default). Members are
    checkpoints or bundle folders; the first must be a checkpoint.

    Returns ``out``. Raises ``ValueError`` if there are fewer than two members, the weights do not fit
    them, or a member does not match the first (architecture, features, feature statistics, tokenizer,
    weight names and shapes).
    """
    paths = [Path(p) for p in members]
    if len(paths) < 2:
        raise ValueError(f"a soup needs at least two checkpoints, got {len(paths)}")
    weights = [1.0] * len(paths) if weights is None else [float(w) for w in weights]
    if len(weights) != len(paths) or min(weights) < 0 or sum(weights) <= 0:
        raise ValueError(f"--weights: {len(paths)} non-negative weights with a positive sum are needed, got {weights}")
    if paths[0].is_dir():
        raise ValueError(f"{paths[0]}: the first member must be a checkpoint (its metadata is the soup's)")
    states = [_load_member(path) for path in paths]
    first = states[0]
    shapes = {k: v.shape for k, v in first["model"].items()}
    for path, state in zip(paths[1:], states[1:], strict=True):
        for key in SHARED:
            if _shared(state, key) != _shared(first, key):
                raise ValueError(f"{path}: {key} is not the same as in {paths[0]}; soup members must share it")
        if {k: v.shape for k, v in state["model"].items()} != shapes:
            raise ValueError(f"{path}: its weights' names or shapes differ from {paths[0]}'s")
        for name in ("feat_mean", "feat_std"):
            if name in shapes and not torch.equal(state["model"][name].float(), first["model"][name].float()):
                raise ValueError(f"{path}: its feature statistics ({name}) differ from {paths[0]}'s")
    total = sum(weights)
    # "averaged" named the first member's own averaged checkpoints; the soup's members are in "soup".
    soup = {k: v for k, v in first.items() if k not in ("optimizer", "scheduler", "sampler", "rng", "averaged")}
    soup["model"] = mean_state_dicts((state["model"] for state in states), weights)
    if "feature_stats" in soup and "feat_mean" in soup["model"]:
        soup["feature_stats"] = {**soup["feature_stats"], **buffer_stats(soup["model"])}
    soup["soup"] = [init_label(p) for p in paths]
    soup["soup_weights"] = [w / total for w in weights]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(soup, tmp)
    log.info("wrote %s: the mean of %d models, weights %s", out, len(paths),
             " ".join(f"{w / total:.3g}" for w in weights))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.soup", description=__doc__.split("\n\n")[0])
    parser.add_argument("members", nargs="+",
                        help="recogniser checkpoints (final.pt) fine-tuned from the same weights, or bundle folders "
                             "(such as the weights they started from); the first must be a checkpoint")
    parser.add_argument("--out", required=True, help="the soup checkpoint to write (e.g. exp/asr_soup/final.pt)")
    parser.add_argument("--weights", type=float, nargs="+", metavar="W",
                        help="one weight per member, normalised to sum to one (default: equal)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    missing = [m for m in args.members if not Path(m).exists()]
    if missing:
        print(f"python -m asr.soup: error: no such checkpoint: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        make_soup(args.members, args.out, args.weights)
    except ValueError as e:
        print(f"python -m asr.soup: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
