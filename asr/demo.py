"""Show what a recogniser does on a few utterances of a manifest: reference vs hypothesis, then WER/CER.

    python -m asr.demo --manifest data/manifests/test.jsonl --limit 8 [--model DIR] [--no-lm]

Uses the bundled model by default. Each utterance is decoded greedily and, when the model folder has an
LM, with the LM beam search (its tuned settings from ``decoder.json``). Used by ``make demo``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass

import torch

from asr.bundle import LoadedModel, load_recognizer
from asr.decode import DecoderConfig, LMBeamSearchDecoder, greedy_decode
from asr.evaluate import manifest_log_probs
from asr.metrics import cer, wer
from audio.manifest import read_manifest
from audio.training import set_threads

__all__ = ["DemoRow", "demo_rows", "format_table", "main"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoRow:
    id: str
    reference: str
    greedy: str
    lm: str | None  # None when decoded without an LM


def demo_rows(model: LoadedModel, manifest: str, *, limit: int, use_lm: bool = True) -> list[DemoRow]:
    """Decode ``limit`` evenly spaced utterances of ``manifest`` (those the tokenizer can spell)."""
    ids, refs, log_probs, _ = manifest_log_probs(model, manifest, limit=limit)
    lm_decoder = None
    if use_lm and model.lm_path is not None:
        tuned = {k: v for k, v in model.decoder.items() if k in DecoderConfig.__dataclass_fields__}
        lm_decoder = LMBeamSearchDecoder(model.tokenizer, lm_path=model.lm_path, config=DecoderConfig(**tuned))
    position = {r.id: i for i, r in enumerate(read_manifest(manifest))}
    rows = []
    for utt_id, ref, lp in zip(ids, refs, log_probs, strict=True):
        lengths = torch.tensor([lp.shape[0]])
        greedy = greedy_decode(lp[None], lengths, model.tokenizer)[0].text
        with_lm = lm_decoder(lp[None], lengths)[0].text if lm_decoder is not None else None
        rows.append(DemoRow(utt_id, ref, greedy, with_lm))
    return sorted(rows, key=lambda r: position[r.id])  # the loader batches by length; show manifest order


def format_table(rows: list[DemoRow]) -> str:
    """A Markdown table of the rows, then one line of corpus WER/CER per decoder."""
    with_lm = any(r.lm is not None for r in rows)
    header = ["id", "reference", "greedy"] + (["with LM"] if with_lm else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r.id, r.reference, r.greedy] + ([r.lm or ""] if with_lm else [])
        lines.append("| " + " | ".join(cells) + " |")
    refs = [r.reference for r in rows]
    lines.append("")
    scores = [("greedy", [r.greedy for r in rows])] + ([("with LM", [r.lm or "" for r in rows])] if with_lm else [])
    for name, hyps in scores:
        lines.append(f"{name}: WER {100 * wer(refs, hyps):.1f}%  CER {100 * cer(refs, hyps):.1f}%  "
                     f"({len(rows)} utterances)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--manifest", required=True, help="JSON-lines manifest with references")
    parser.add_argument("--limit", type=int, default=8, help="utterances to show (evenly spaced)")
    parser.add_argument("--model", help="model folder or checkpoint (default: the bundled model)")
    parser.add_argument("--no-lm", action="store_true", help="greedy decoding only")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.limit < 1:
        parser.error("--limit must be at least 1")
    set_threads(args.threads)
    try:
        model = load_recognizer(args.model)
        rows = demo_rows(model, args.manifest, limit=args.limit, use_lm=not args.no_lm)
    except (FileNotFoundError, ValueError) as err:
        print(f"{parser.prog}: {err}", file=sys.stderr)
        return 2
    if not rows:
        print(f"{parser.prog}: {args.manifest}: no utterance the model's tokenizer can spell", file=sys.stderr)
        return 1
    print(f"model: {model.source}")
    print(format_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
