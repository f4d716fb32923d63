"""Several recognisers side by side: one scores.json and a RESULTS.md table, with the wall time of every
stage that produced them.

    python -m asr.compare scores --system "w2v2 pretrained=exp/w2v/ft_pretrained" \
        --system "Conv1D+BiLSTM=exp/w2v/bilstm_1h" --stage "pretraining=exp/w2v/pretrain/final/glottis.json" \
        --reference "w2v2 pretrained" --started exp/w2v/started --out exp/w2v/scores.json
    python -m asr.compare report --scores exp/w2v/scores.json --out exp/w2v/RESULTS.md

A system folder holds ``scores.json`` and ``decoder.json`` (``asr.evaluate score`` / ``tune``, each with
its ``wall_seconds``) and its training result: ``final/glottis.json`` (``asr.wav2vec2``) or ``final.pt``
(``asr.train``), each with ``train_seconds``. A ``--stage`` is any other such file (e.g. pretraining).
The ``--reference`` system is checked against every other: its test CER must be the lowest, greedy and
with the LM.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from audio.atomic import write_json, write_text

log = logging.getLogger(__name__)

__all__ = ["train_seconds", "compare"]


def train_seconds(path: Path) -> float:
    """``train_seconds`` of a ``glottis.json``, a training checkpoint, or a folder holding either
    (``final/glottis.json`` or ``final.pt``)."""
    if path.is_dir():
        for candidate in (path / "final" / "glottis.json", path / "final.pt", path / "glottis.json"):
            if candidate.is_file():
                return train_seconds(candidate)
        raise FileNotFoundError(f"{path}: no final/glottis.json or final.pt")
    if path.suffix == ".json":
        return float(json.loads(path.read_text())["train_seconds"])
    from audio.training import CheckpointManager

    return float(CheckpointManager.load(path)["train_seconds"])


def _split_scores(split: dict) -> dict:
    out = {"greedy_cer": split["greedy"]["cer"], "greedy_wer": split["greedy"]["wer"]}
    if "lm" in split:
        out |= {"lm_cer": split["lm"]["cer"], "lm_wer": split["lm"]["wer"]}
    return out


def compare(systems: dict[str, Path], stages: dict[str, Path], *, reference: str | None = None,
            started: Path | None = None) -> dict:
    """The combined scores: per system its split scores and stage times, the extra stages, and checks."""
    out: dict = {"systems": {}, "stages": []}
    for name, path in stages.items():
        out["stages"].append({"stage": name, "seconds": round(train_seconds(path), 1)})
    for name, folder in systems.items():
        scores = json.loads((folder / "scores.json").read_text())
        decoder_file = folder / "decoder.json"
        decoder = json.loads(decoder_file.read_text()) if decoder_file.is_file() else {}
        entry = {"exp_dir": str(folder), "splits": {k: _split_scores(v) for k, v in scores["splits"].items()}}
        out["systems"][name] = entry
        out["stages"].append({"stage": f"{name}: training", "seconds": round(train_seconds(folder), 1)})
        if "wall_seconds" in decoder:
            out["stages"].append({"stage": f"{name}: LM weight tuning", "seconds": decoder["wall_seconds"]})
        if "wall_seconds" in scores:
            out["stages"].append({"stage": f"{name}: scoring dev and test", "seconds": scores["wall_seconds"]})
    out["stage_seconds_total"] = round(sum(s["seconds"] for s in out["stages"]), 1)
    if started is not None:
        out["wall_seconds_since_start"] = round(time.time() - started.stat().st_mtime, 1)
    if reference is not None:
        if reference not in out["systems"]:
            raise ValueError(f"--reference {reference!r} is not one of the systems {sorted(out['systems'])}")
        mine = out["systems"][reference]["splits"]["test"]
        checks = {}
        for key in ("greedy_cer", "lm_cer"):
            others = [s["splits"]["test"].get(key) for n, s in out["systems"].items() if n != reference]
            if key in mine and all(o is not None for o in others):
                checks[f"test_{key}_lowest"] = all(mine[key] < o for o in others)
        out["reference"] = {"system": reference, **checks}
    return out


def _pct(value: float | None) -> str:
    return f"{100 * value:.2f}%" if value is not None else "-"


def _duration(seconds: float) -> str:
    minutes = seconds / 60
    return f"{minutes:.1f} min" if minutes < 120 else f"{minutes / 60:.2f} h"


def report(result: dict) -> str:
    lines = ["# Results", "", "| system | split | greedy CER | greedy WER | LM CER | LM WER |",
             "|---|---|---|---|---|---|"]
    for name, s in result["systems"].items():
        for split, v in s["splits"].items():
            lines.append(f"| {name} | {split} | {_pct(v['greedy_cer'])} | {_pct(v['greedy_wer'])} | "
                         f"{_pct(v.get('lm_cer'))} | {_pct(v.get('lm_wer'))} |")
    lines += ["", "| stage | wall time |", "|---|---|"]
    lines += [f"| {s['stage']} | {_duration(s['seconds'])} |" for s in result["stages"]]
    lines.append(f"| all stages, one after another | {_duration(result['stage_seconds_total'])} |")
    if "wall_seconds_since_start" in result:
        lines.append(f"| recipe, first start to this table (pauses included) | "
                     f"{_duration(result['wall_seconds_since_start'])} |")
    if "reference" in result:
        ref = result["reference"]
        checks = ", ".join(f"{k}: {'yes' if v else 'no'}" for k, v in ref.items() if k != "system")
        lines += ["", f"{ref['system']} against the others: {checks}."]
    return "\n".join(lines) + "\n"


def _pairs(items: list[str], flag: str) -> dict[str, Path]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{flag} {item!r} is not NAME=PATH")
        name, path = item.rsplit("=", 1)
        out[name] = Path(path)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.compare", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    scores = sub.add_parser("scores", help="combined scores.json")
    scores.add_argument("--system", action="append", required=True, metavar="NAME=EXP_DIR")
    scores.add_argument("--stage", action="append", default=[], metavar="NAME=FILE",
                        help="another stage's glottis.json or checkpoint (its train_seconds)")
    scores.add_argument("--reference", help="the system that should have the lowest test CER")
    scores.add_argument("--started", type=Path, help="a file created when the recipe first started")
    scores.add_argument("--out", required=True)
    rep = sub.add_parser("report", help="RESULTS.md from the combined scores.json")
    rep.add_argument("--scores", required=True)
    rep.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "report":
        write_text(args.out, report(json.loads(Path(args.scores).read_text())))
        return 0
    result = compare(_pairs(args.system, "--system"), _pairs(args.stage, "--stage"), reference=args.reference,
                     started=args.started)
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
