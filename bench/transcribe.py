"""Recognition speed and accuracy, ours (bundled model) vs pocketsphinx's en-US model, on one thread.

Both read the same utterances of three sets:

* the synth_en test split, whose synthetic voices are never seen in training (an even sample of 60);
* real recordings (``recipes/real_en``, ``audio.real_speech``): Asterisk's telephone prompts, one
  professional voice at 8 kHz (an even sample of 100), and the recordings of pinned PyPI sdists, 9
  speakers (all 31). pocketsphinx's model was trained on real speech; ours has heard only synthesisers.

The real-time factor (RTF) is compute seconds per second of audio, audio already in memory. "adapted" is
ours after unsupervised adaptation to each voice's or speaker's utterances here (``asr.adapt``, as
``glottis transcribe --adapt all`` run once per voice); its RTF includes the adaptation.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from audio.io import load
from audio.manifest import read_manifest, resolve_audio

ROOT = Path(__file__).resolve().parents[1]
TEST_MANIFEST = ROOT / "recipes" / "synth_en" / "data" / "manifests" / "test.jsonl"
REAL_MANIFESTS = ROOT / "recipes" / "real_en" / "data" / "manifests"
# (label, manifest, utterances sampled, how to build it)
SETS = [
    ("synth_en test, unseen voices", TEST_MANIFEST, 60, "make data"),
    ("real: Asterisk prompts, 8 kHz", REAL_MANIFESTS / "asterisk.jsonl", 100, "make -C recipes/real_en data"),
    ("real: PyPI sdist recordings", REAL_MANIFESTS / "pypi.jsonl", 31, "make -C recipes/real_en data"),
]


def _sample(manifest: Path, limit: int) -> list[tuple[str, torch.Tensor, str]]:
    """(text, 16 kHz wave, voice) of an even sample of ``limit`` utterances of a manifest."""
    records = read_manifest(manifest)
    records = records[:: max(1, len(records) // limit)][:limit]
    return [(r.text, load(resolve_audio(manifest, r), 16000)[0], r.voice_or_speaker) for r in records]


def _pocketsphinx(data) -> tuple[list[str], float]:
    from pocketsphinx import Decoder

    decoder = Decoder(samprate=16000, logfn="/dev/null")
    hyps, compute = [], 0.0
    for _, wave, _ in data:
        pcm = (wave.clamp(-1, 1) * 32767).to(torch.int16).numpy().tobytes()
        start = time.perf_counter()
        decoder.start_utt()
        decoder.process_raw(pcm, full_utt=True)
        decoder.end_utt()
        compute += time.perf_counter() - start
        hyp = decoder.hyp()
        hyps.append(hyp.hypstr.lower() if hyp else "")
    return hyps, compute


def _ours(data, *, use_lm: bool, adapt: bool = False) -> tuple[list[str], float]:
    from asr.transcribe import Transcriber

    transcriber = Transcriber(use_lm=use_lm)
    hyps, compute = [""] * len(data), 0.0
    groups = {}
    for k, (_, _, voice) in enumerate(data):
        groups.setdefault(voice if adapt else None, []).append(k)
    for rows in groups.values():
        start = time.perf_counter()
        if adapt:
            transcriber.adapt([data[k][1] for k in rows])
        for k in rows:
            hyps[k], _ = transcriber.decode(transcriber.log_probs(data[k][1]))
        compute += time.perf_counter() - start
    return hyps, compute


def _rows(label: str, data) -> list[dict]:
    """Rows for one set: RTF and WER/CER for ours (greedy, LM, adapted) and pocketsphinx."""
    from asr.metrics import cer, wer

    refs = [text for text, _, _ in data]
    audio_s = sum(w.numel() for _, w, _ in data) / 16000
    results = {"ours (greedy)": _ours(data, use_lm=False), "ours (LM)": _ours(data, use_lm=True),
               "ours (LM, adapted)": _ours(data, use_lm=True, adapt=True)}
    try:
        results["pocketsphinx"] = _pocketsphinx(data)
    except ImportError:
        results["pocketsphinx"] = None
    base = results["ours (greedy)"][1]
    rows = []
    for impl, result in results.items():
        if result is None:
            rows.append({"benchmark": f"transcribe: {label}", "impl": impl, "median_s": None,
                         "ratio_vs_ours": None, "note": "pocketsphinx is not installed"})
            continue
        hyps, compute = result
        rows.append({
            "benchmark": f"transcribe {len(data)} utts ({audio_s:.0f} s): {label}",
            "impl": impl,
            "median_s": compute,
            "ratio_vs_ours": compute / base,
            "rtf": round(compute / audio_s, 4),
            "wer": round(wer(refs, hyps), 4),
            "cer": round(cer(refs, hyps), 4),
        })
    return rows


def run(repeats: int) -> list[dict]:
    """Rows per set (see the module's docstring); a set whose manifest is missing gets a note instead."""
    torch.set_num_threads(1)
    rows = []
    for label, manifest, limit, command in SETS:
        if not manifest.exists():
            rows.append({"benchmark": f"transcribe: {label}", "impl": "ours", "median_s": None,
                         "ratio_vs_ours": None, "note": f"{manifest} missing: run `{command}` first"})
            continue
        rows += _rows(label, _sample(manifest, limit))
    return rows


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.transcribe [--manifest M [--limit N]]``: the bench's sets, or every (or an even
    sample of ``N``) utterance of one manifest, scored the same way; a markdown table on stdout."""
    import argparse

    from bench.run import markdown_table

    parser = argparse.ArgumentParser(
        prog="python -m bench.transcribe",
        description="Transcription accuracy and speed on one thread, ours (greedy, LM, adapted) beside "
                    "pocketsphinx: on the bench's sets, or on one manifest.")
    parser.add_argument("--manifest", type=Path, help="score this manifest instead of the bench's sets")
    parser.add_argument("--limit", type=int, default=0, help="an even sample of this many utterances (0: all)")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.manifest is None:
        rows = run(1)
    else:
        rows = _rows(args.manifest.name, _sample(args.manifest, args.limit or sys.maxsize))
    print(json.dumps(rows, indent=1) if args.json else markdown_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
