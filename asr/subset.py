"""A labelled subset of a training manifest: a fixed number of hours, balanced over speakers.

    python -m asr.subset --manifest data/manifests/train.jsonl --hours 1 --out exp/train_1h.jsonl

Speakers take turns, each giving its next utterance (in an order shuffled per speaker with ``--seed``),
until the hours are reached, so every speaker contributes about the same amount of audio and the
subset depends only on the manifest and the seed. Utterances the tokenizer cannot spell, or longer
than ``--max-duration``, are never picked (they would be dropped by the trainers, shrinking the hour).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from asr.tokenizer import CharTokenizer
from audio.manifest import Utterance, read_manifest, resolve_audio, write_manifest

log = logging.getLogger(__name__)

__all__ = ["balanced_subset"]


def balanced_subset(records: Sequence[Utterance], *, hours: float, seed: int = 0,
                    max_duration: float = float("inf")) -> list[Utterance]:
    """Round-robin over speakers (sorted by name) until the total duration reaches ``hours``; the
    result keeps the manifest's order. All of ``records`` if they hold less than that."""
    rng = np.random.default_rng(seed)
    by_speaker: dict[str, list[int]] = {}
    for index, record in enumerate(records):
        if record.duration <= max_duration:
            by_speaker.setdefault(record.speaker, []).append(index)
    queues = [list(rng.permutation(by_speaker[s])) for s in sorted(by_speaker)]
    budget, total, chosen = hours * 3600.0, 0.0, []
    while total < budget and any(queues):
        for queue in queues:
            if queue and total < budget:
                index = int(queue.pop(0))
                chosen.append(index)
                total += records[index].duration
    return [records[i] for i in sorted(chosen)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.subset", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="manifest to pick from (JSON lines)")
    parser.add_argument("--hours", type=float, required=True)
    parser.add_argument("--out", required=True, help="subset manifest to write")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-duration", type=float, default=16.0, help="seconds; longer ones are skipped")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    tokenizer = CharTokenizer()
    records = []
    for record in read_manifest(args.manifest):
        try:
            if tokenizer.encode(record.text):
                records.append(record)
        except ValueError:
            continue
    subset = balanced_subset(records, hours=args.hours, seed=args.seed, max_duration=args.max_duration)
    # Audio paths are relative to the manifest's folder: make them absolute, as the subset lives elsewhere.
    subset = [replace(r, audio=str(resolve_audio(args.manifest, r))) for r in subset]
    write_manifest(args.out, subset)
    log.info("wrote %s: %d utterances, %.3f h, %d speakers", args.out, len(subset),
             sum(r.duration for r in subset) / 3600, len({r.speaker for r in subset}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
