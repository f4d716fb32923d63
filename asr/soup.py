"""A model soup: one recogniser whose weights are the mean of several fine-tuned siblings.

    python -m asr.soup --out exp/asr_soup/final.pt exp/a/final.pt exp/b/final.pt exp/c/final.pt

Recognisers fine-tuned from the same weights (other data, seeds or schedules, at a low learning rate)
stay in one basin of the loss, and the mean of their weights is usually better than each of them
(Wortsman et al., 2022, "Model soups"). Decoding costs what one model costs, unlike an ensemble.

Members must share the architecture, features, feature statistics and tokenizer; a mismatch raises a
``ValueError`` naming the file. The soup is a checkpoint like a trainer's ``final.pt`` (the first member's
metadata, with ``soup`` listing the members), so ``asr.evaluate`` and ``asr.bundle`` take it as it is.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from asr.recognizer import buffer_stats
from audio.atomic import atomic_path
from audio.training import CheckpointManager, average_state_dicts, init_label

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
    return {k: v for k, v in value.items() if k != "dropout"} if key == "model_config" and value else value


def make_soup(members: list[str | Path], out: str | Path) -> Path:
    """Write ``out``: the first member's checkpoint with its model replaced by the mean of all members'.

    Returns ``out``. Raises ``ValueError`` if there are fewer than two members or one does not match
    the first (architecture, features, feature statistics, tokenizer, weight names and shapes).
    """
    paths = [Path(p) for p in members]
    if len(paths) < 2:
        raise ValueError(f"a soup needs at least two checkpoints, got {len(paths)}")
    first = CheckpointManager.load(paths[0])
    if "model" not in first:
        raise ValueError(f"{paths[0]} is not a recogniser checkpoint (no 'model' entry)")
    shapes = {k: v.shape for k, v in first["model"].items()}
    for path in paths[1:]:
        state = CheckpointManager.load(path)
        if "model" not in state:
            raise ValueError(f"{path} is not a recogniser checkpoint (no 'model' entry)")
        for key in SHARED:
            if _shared(state, key) != _shared(first, key):
                raise ValueError(f"{path}: {key} is not the same as in {paths[0]}; soup members must share it")
        if {k: v.shape for k, v in state["model"].items()} != shapes:
            raise ValueError(f"{path}: its weights' names or shapes differ from {paths[0]}'s")
        for name in ("feat_mean", "feat_std"):
            if name in shapes and not torch.equal(state["model"][name], first["model"][name]):
                raise ValueError(f"{path}: its feature statistics ({name}) differ from {paths[0]}'s")
    # "averaged" named the first member's own averaged checkpoints; the soup's members are in "soup".
    soup = {k: v for k, v in first.items() if k not in ("optimizer", "scheduler", "sampler", "rng", "averaged")}
    soup["model"] = average_state_dicts(paths)
    if "feature_stats" in soup and "feat_mean" in soup["model"]:
        soup["feature_stats"] = {**soup["feature_stats"], **buffer_stats(soup["model"])}
    soup["soup"] = [init_label(p) for p in paths]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        torch.save(soup, tmp)
    log.info("wrote %s: the mean of %d models", out, len(paths))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.soup", description=__doc__.split("\n\n")[0])
    parser.add_argument("members", nargs="+", help="recogniser checkpoints (final.pt) fine-tuned from the same weights")
    parser.add_argument("--out", required=True, help="the soup checkpoint to write (e.g. exp/asr_soup/final.pt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    missing = [m for m in args.members if not Path(m).is_file()]
    if missing:
        print(f"python -m asr.soup: error: no such checkpoint: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        make_soup(args.members, args.out)
    except ValueError as e:
        print(f"python -m asr.soup: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
