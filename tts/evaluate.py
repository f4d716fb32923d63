"""Score a synthesiser on a test manifest: mel-cepstral distortion, round-trip CER, attention quality.

    python -m tts.evaluate synth --model M --manifest test.jsonl --out-dir exp/x/synth/test
    glottis transcribe exp/x/synth/test --format jsonl > exp/x/roundtrip.jsonl     # (in the recipe)
    glottis transcribe $(python -m tts.evaluate paths --manifest test.jsonl) --format jsonl > exp/x/reference.jsonl
    python -m tts.evaluate score --manifest test.jsonl --synth-dir exp/x/synth/test \
        --roundtrip exp/x/roundtrip.jsonl --reference exp/x/reference.jsonl --out exp/x/scores.json
    python -m tts.evaluate report --scores exp/x/scores.json --out exp/x/RESULTS.md
    python -m tts.evaluate plot --synth-dir exp/x/synth/test --out exp/x/alignment.png

``tts`` never imports ``asr``: the recogniser runs as ``glottis transcribe`` and only its JSON lines are read.

**Mel-cepstral distortion** (dB, lower is better), per utterance::

    MCD = mean over the DTW path of  (10 / ln 10) * sqrt(2 * sum_{d=1}^{24} (c_d - c'_d)^2)

where ``c_1..c_24`` are mel-cepstra without the energy term ``c_0``: the orthonormal DCT-II of the natural
log of the mel *amplitude* spectrum, ``ln sqrt(mel power)`` (80 slaney mel bands of a 1024-point STFT,
hop 256, at 22.05 kHz, no pre-emphasis; power floored 50 dB below the utterance's loudest band, so
digital silence and the overall level do not matter). For MFCCs ``m`` in dB (the DCT of
``10 log10(mel power)``, as ``audio.features.mfcc``) that is ``sqrt(sum_d (m_d - m'_d)^2 / 2)``. Silence
more than 40 dB below the loudest frame is trimmed from both ends of each signal first; the frames are
then paired by dynamic time warping (librosa) on the Euclidean cepstral distance. Without ``c_0`` the
score ignores overall loudness.

**Round-trip CER**: the recogniser's transcript of the synthesised audio against the text that was
read aloud (``tts.text.normalize_text``, then ``audio.text.normalize_transcript`` on both sides), corpus
level (``jiwer.cer``). The same recogniser on the voice's own recordings gives the reference CER, the
floor for the round trip. **Attention** scores are those of ``tts.alignment`` per test sentence.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from audio.atomic import atomic_path, write_json, write_lines, write_text
from audio.features import FeatureConfig, dct_matrix, mel_spectrogram
from audio.io import load
from audio.manifest import read_manifest, resolve_audio
from audio.text import normalize_transcript
from tts.alignment import alignment_scores, mean_scores
from tts.text import normalize_text

log = logging.getLogger(__name__)

__all__ = [
    "MCD_FEATURES",
    "mel_cepstra",
    "mel_cepstral_distortion",
    "read_transcripts",
    "roundtrip_cer",
    "synthesize_manifest",
    "score",
    "report",
    "main",
]

MCD_FEATURES = FeatureConfig(
    sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, power=2.0, n_mels=80, n_mfcc=25
)
TRIM_DB = 40.0  # end silence below the loudest frame by more than this is left out of the MCD
FLOOR_DB = 50.0  # mel power is floored this far below the utterance's loudest band
_MCD_SCALE = 1.0 / math.sqrt(2.0)  # (10 / ln 10) * sqrt(2) * (ln 10 / 20), from dB-MFCCs to MCD


def mel_cepstra(wave: torch.Tensor, cfg: FeatureConfig = MCD_FEATURES) -> np.ndarray:
    """``(samples,)`` -> ``(frames, n_mfcc - 1)`` dB mel-cepstra without c0, end silence trimmed."""
    mel, _ = mel_spectrogram(wave.float().unsqueeze(0), None, cfg)  # (1, frames, n_mels) power
    mel = mel[0].double()
    energy_db = 10.0 * torch.log10(mel.sum(dim=1).clamp(min=1e-30))  # (frames,)
    loud = torch.nonzero(energy_db >= energy_db.max() - TRIM_DB).flatten()
    mel = mel[int(loud[0]) : int(loud[-1]) + 1]
    db = 10.0 * torch.log10(mel.clamp(min=float(mel.max()) * 10 ** (-FLOOR_DB / 10)))
    return (db @ dct_matrix(cfg.n_mels, cfg.n_mfcc).double())[:, 1:].numpy()  # (frames, n_mfcc - 1)


def mel_cepstral_distortion(
    reference: torch.Tensor, synthesized: torch.Tensor, cfg: FeatureConfig = MCD_FEATURES
) -> float:
    """MCD in dB between two ``(samples,)`` waves at ``cfg.sample_rate`` (see the module docstring)."""
    import librosa

    a, b = mel_cepstra(reference, cfg), mel_cepstra(synthesized, cfg)
    cost = np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).sum(-1))  # (Ta, Tb) Euclidean, in dB
    _, path = librosa.sequence.dtw(C=cost)
    return float(_MCD_SCALE * cost[path[:, 0], path[:, 1]].mean())


def read_transcripts(path: str | Path) -> list[dict]:
    """The rows of a ``glottis transcribe --format jsonl`` file: ``{"path", "text"}`` or ``{"path", "error"}``."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{lineno}: not a JSON line ({err})") from None
    return rows


def _spoken(text: str) -> str:
    """What a recogniser should hear for ``text``: normalised words, no punctuation."""
    return normalize_transcript(normalize_text(text))


def roundtrip_cer(manifest: str | Path, transcripts: str | Path) -> dict:
    """CER of transcripts of (synthesised or recorded) audio of a manifest's utterances.

    A transcript belongs to an utterance when its file is the utterance's audio, or is named
    ``<utterance id>.wav``. Utterances with no transcript (or an error) count as empty hypotheses.
    Returns ``{"cer", "n", "missing", "per_utterance": {id: {"ref", "hyp", "cer"}}}``.
    """
    import jiwer

    records = read_manifest(manifest)
    by_path = {resolve_audio(manifest, r).resolve(): r.id for r in records}
    by_name = {resolve_audio(manifest, r).name: r.id for r in records}
    ids = {r.id for r in records}
    hyps: dict[str, str] = {}
    foreign = 0
    for row in read_transcripts(transcripts):
        path = Path(row["path"])
        utt = (
            by_path.get(path.resolve()) or by_name.get(path.name) or (path.stem if path.stem in ids else None)
        )
        if utt is None:
            foreign += 1
        elif "text" in row:
            hyps[utt] = normalize_transcript(row["text"])
    if foreign:
        log.warning(
            "%s: %d transcript(s) of files that are not audio of %s; ignored", transcripts, foreign, manifest
        )
    refs = {r.id: _spoken(r.text) for r in records}
    order = [r.id for r in records]
    per = {
        utt: {
            "ref": refs[utt],
            "hyp": hyps.get(utt, ""),
            "cer": float(jiwer.cer(refs[utt], hyps.get(utt, ""))),
        }
        for utt in order
    }
    missing = [utt for utt in order if utt not in hyps]
    if missing:
        log.warning("%d of %d utterances have no transcript in %s", len(missing), len(order), transcripts)
    cer = float(jiwer.cer([refs[u] for u in order], [hyps.get(u, "") for u in order]))
    return {"cer": cer, "n": len(order), "missing": len(missing), "per_utterance": per}


# --- synth ----------------------------------------------------------------------------------------


def synthesize_manifest(
    model: str | Path | None,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    limit: int | None = None,
    seed: int = 0,
    gl_power: float | None = None,
    gl_iters: int | None = None,
) -> Path:
    """Synthesise every utterance's text to ``out_dir/<id>.wav``, the alignments to ``alignments.npz``
    (key ``<id>`` or ``<id>.<k>`` per sentence), and last ``synth.jsonl``, one row per utterance with
    its timing and attention scores (its presence means the folder is complete). Returns that list."""
    from tts.synthesize import Synthesizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    synthesizer = Synthesizer(model, seed=seed)
    synthesizer.override_griffin_lim(n_iter=gl_iters, power=gl_power)
    records = read_manifest(manifest)[:limit]
    rows, alignments = [], {}
    for record in tqdm(records, desc="synthesise", unit="utt"):
        start = time.perf_counter()
        result = synthesizer.synthesize_to_file(record.text, out_dir / f"{record.id}.wav")
        seconds = time.perf_counter() - start
        sentence_scores = []
        for k, attn in enumerate(result.alignments):
            alignments[record.id if len(result.alignments) == 1 else f"{record.id}.{k}"] = attn.numpy()
            sentence_scores.append(alignment_scores(attn))
        rows.append(
            {
                "id": record.id,
                "wav": f"{record.id}.wav",
                "text": record.text,
                "sentences": result.sentences,
                "audio_s": round(result.duration, 3),
                "compute_s": round(seconds, 3),
                "stopped": all(result.stopped),
                "attention": mean_scores(sentence_scores),
            }
        )
    with atomic_path(out_dir / "alignments.npz") as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **alignments)
    listing = out_dir / "synth.jsonl"
    write_lines(listing, (json.dumps(row, ensure_ascii=False) for row in rows))
    log.info("synthesised %d utterances into %s", len(rows), out_dir)
    return listing


# --- score and report -----------------------------------------------------------------------------


def score(
    manifest: str | Path,
    synth_dir: str | Path,
    *,
    roundtrip: str | Path | None = None,
    reference: str | Path | None = None,
) -> dict:
    """All scores of a synthesised test set (the ``synth`` step's folder) as one JSON-safe dict."""
    synth_dir = Path(synth_dir)
    rows = [json.loads(line) for line in (synth_dir / "synth.jsonl").read_text(encoding="utf-8").splitlines()]
    records = {r.id: r for r in read_manifest(manifest)}
    per = []
    for row in tqdm(rows, desc="MCD", unit="utt"):
        ref_wave, _ = load(resolve_audio(manifest, records[row["id"]]), MCD_FEATURES.sample_rate)
        syn_wave, _ = load(synth_dir / row["wav"], MCD_FEATURES.sample_rate)
        per.append(
            {
                "id": row["id"],
                "text": row["text"],
                "mcd_db": mel_cepstral_distortion(ref_wave, syn_wave),
                "audio_s": row["audio_s"],
                "stopped": row["stopped"],
                **row["attention"],
            }
        )
    scores: dict = {
        "n": len(per),
        "mcd_db": statistics.fmean(p["mcd_db"] for p in per),
        "mcd_db_median": statistics.median(p["mcd_db"] for p in per),
        "attention": mean_scores([{k: p[k] for k in rows[0]["attention"]} for p in per]),
        "stopped": statistics.fmean(float(p["stopped"]) for p in per),
        "real_time_factor": sum(r["compute_s"] for r in rows) / max(1e-9, sum(r["audio_s"] for r in rows)),
    }
    if roundtrip:
        cer = roundtrip_cer(manifest, roundtrip)
        scores["roundtrip_cer"] = cer["cer"]
        scores["roundtrip_missing"] = cer["missing"]
        for p in per:
            p.update(hyp=cer["per_utterance"][p["id"]]["hyp"], cer=cer["per_utterance"][p["id"]]["cer"])
    if reference:
        ref = roundtrip_cer(manifest, reference)
        scores["reference_cer"] = ref["cer"]
        scores["reference_missing"] = ref["missing"]
    scores["per_utterance"] = per
    return scores


def report(scores: dict) -> str:
    """RESULTS.md text from :func:`score`'s dict."""
    att = scores["attention"]
    lines = [
        "# Tacotron + Griffin-Lim: test results",
        "",
        "| metric | value |",
        "|---|---:|",
        f"| test sentences | {scores['n']} |",
        f"| MCD (dB, DTW, c1-c24) mean / median | {scores['mcd_db']:.2f} / {scores['mcd_db_median']:.2f} |",
    ]
    if "roundtrip_cer" in scores:
        lines.append(f"| round-trip CER (ASR on synthesised audio) | {100 * scores['roundtrip_cer']:.2f}% |")
    if "reference_cer" in scores:
        lines.append(
            f"| reference CER (same ASR on the voice's recordings) | {100 * scores['reference_cer']:.2f}% |"
        )
    lines += [
        f"| attention monotonic / focus rate / diagonality | {att['monotonic']:.3f} / {att['focus_rate']:.3f}"
        f" / {att['diagonality']:.3f} |",
        f"| text read to the end (attention) | {100 * att['end_reached']:.1f}% |",
        f"| decoder stopped by the stop token | {100 * scores['stopped']:.1f}% |",
        f"| synthesis real-time factor (1 thread, incl. Griffin-Lim) | {scores['real_time_factor']:.3f} |",
        "",
        "Definitions: `tts/evaluate.py` (MCD, CER) and `tts/alignment.py` (attention scores).",
        "",
        "## Per sentence",
        "",
        "| id | MCD dB | CER | monotonic | focus | diagonal | end | text |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for p in scores["per_utterance"]:
        cer = f"{100 * p['cer']:.1f}%" if "cer" in p else ""
        lines.append(
            f"| {p['id']} | {p['mcd_db']:.2f} | {cer} | {p['monotonic']:.2f} | {p['focus_rate']:.2f} "
            f"| {p['diagonality']:.2f} | {p['end_reached']:.0f} | {p['text'].replace('|', ' ')} |"
        )
    return "\n".join(lines) + "\n"


def plot_synth_alignment(synth_dir: str | Path, out: str | Path, utt_id: str | None = None) -> None:
    """Plot one synthesised utterance's alignment (default: the first) from ``alignments.npz``."""
    from audio.plot import plot_alignment

    with np.load(Path(synth_dir) / "alignments.npz") as data:
        key = utt_id or sorted(data.files)[0]
        if key not in data.files:
            raise ValueError(f"no alignment for {key!r} in {synth_dir}")
        plot_alignment(data[key], out, title=f"alignment: {key}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts.evaluate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="synthesise a manifest's texts into a folder")
    synth.add_argument("--model", help="model folder or checkpoint (default: the bundled model)")
    synth.add_argument("--manifest", required=True)
    synth.add_argument("--out-dir", required=True)
    synth.add_argument("--limit", type=int, help="only the first N utterances")
    synth.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1, for a comparable RTF)"
    )
    synth.add_argument("--gl-power", type=float, help="Griffin-Lim magnitude power (default: the model's)")
    synth.add_argument("--gl-iters", type=int, help="Griffin-Lim iterations (default: the model's)")
    sc = sub.add_parser("score", help="MCD, round-trip CER and attention scores -> scores.json")
    sc.add_argument("--manifest", required=True)
    sc.add_argument("--synth-dir", required=True)
    sc.add_argument("--roundtrip", help="glottis transcribe --format jsonl output for the synthesised audio")
    sc.add_argument("--reference", help="the same for the manifest's own recordings")
    sc.add_argument("--out", required=True)
    rep = sub.add_parser("report", help="RESULTS.md from scores.json")
    rep.add_argument("--scores", required=True)
    rep.add_argument("--out", required=True)
    paths = sub.add_parser("paths", help="print the audio paths of a manifest, one per line")
    paths.add_argument("--manifest", required=True)
    pl = sub.add_parser("plot", help="alignment PNG of one synthesised utterance")
    pl.add_argument("--synth-dir", required=True)
    pl.add_argument("--id", help="utterance id (default: the first)")
    pl.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "synth":
        from audio.training import set_threads

        set_threads(args.threads)
        synthesize_manifest(
            args.model, args.manifest, args.out_dir, limit=args.limit, gl_power=args.gl_power,
            gl_iters=args.gl_iters,
        )
    elif args.command == "score":
        write_json(
            args.out, score(args.manifest, args.synth_dir, roundtrip=args.roundtrip, reference=args.reference)
        )
    elif args.command == "report":
        write_text(args.out, report(json.loads(Path(args.scores).read_text(encoding="utf-8"))))
    elif args.command == "paths":
        for record in read_manifest(args.manifest):
            print(resolve_audio(args.manifest, record))
        return 0
    else:
        plot_synth_alignment(args.synth_dir, args.out, args.id)
    log.info("done: %s", args.command)
    return 0


if __name__ == "__main__":
    sys.exit(main())
