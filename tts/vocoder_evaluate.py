"""Score the WaveNet vocoder against Griffin-Lim by copy synthesis of a test manifest.

    python -m tts.vocoder_evaluate synth --model exp/vocoder_wavenet/final.pt --manifest test.jsonl \
        --out-dir exp/vocoder_wavenet/copy --limit 30
    glottis transcribe exp/vocoder_wavenet/copy/wavenet --format jsonl > .../roundtrip_wavenet.jsonl      # recipe
    glottis transcribe exp/vocoder_wavenet/copy/griffin-lim --format jsonl > .../roundtrip_griffin-lim.jsonl
    python -m tts.vocoder_evaluate score --synth-dir exp/vocoder_wavenet/copy \
        --roundtrip wavenet=.../roundtrip_wavenet.jsonl --roundtrip griffin-lim=.../roundtrip_griffin-lim.jsonl \
        --reference .../reference.jsonl --out exp/vocoder_wavenet/scores.json
    python -m tts.vocoder_evaluate report --scores exp/vocoder_wavenet/scores.json --out .../RESULTS.md

Both vocoders get the *same* mel of each recording (the Tacotron target, ``tts.spectrogram``): WaveNet
samples from it; Griffin-Lim first inverts the mel filterbank (non-negative least squares,
``audio.inversion.mel_to_linear``), then recovers the phase. MCD and round-trip CER are those of
``tts.evaluate`` (the recogniser runs as ``glottis transcribe``; ``tts`` never imports ``asr``).
The ``synth`` step writes ``manifest.jsonl`` (the utterances used, audio paths absolute) and, last,
``synth.jsonl``, whose presence means the folder is complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from audio.atomic import write_json, write_lines, write_text
from audio.inversion import griffin_lim, mel_to_linear
from audio.io import load, save
from audio.manifest import read_manifest, resolve_audio, write_manifest
from audio.training import set_threads
from tts.evaluate import MCD_FEATURES, mel_cepstral_distortion, roundtrip_cer
from tts.spectrogram import GriffinLimConfig, norm_to_amplitude
from tts.vocode import CANDIDATES_HELP, Vocoder

log = logging.getLogger(__name__)

__all__ = ["SYSTEMS", "mel_griffin_lim", "copy_synthesis", "score", "report", "main"]

SYSTEMS = ("wavenet", "griffin-lim")


def mel_griffin_lim(
    mel: torch.Tensor, vocoder: Vocoder, gl: GriffinLimConfig, *, n_samples: int, seed: int = 0
) -> torch.Tensor:
    """``(frames, n_mels)`` normalised mel -> ``(n_samples,)`` wave by NNLS mel inversion and Griffin-Lim,
    peak-normalised to ``gl.peak`` as Tacotron's Griffin-Lim output is."""
    cfg, scale = vocoder.loaded.feature_config, vocoder.loaded.scale
    linear = mel_to_linear(norm_to_amplitude(mel.unsqueeze(0), scale), cfg)  # (1, T, F) magnitudes
    wave, _ = griffin_lim(
        linear.pow(gl.power),
        cfg,
        n_iter=gl.n_iter,
        momentum=gl.momentum,
        power=1.0,
        generator=torch.Generator().manual_seed(seed),
    )
    wave = wave[0, :n_samples]
    if gl.peak > 0:
        wave = wave * (gl.peak / wave.abs().max().clamp(min=1e-9))
    return torch.nn.functional.pad(wave, (0, n_samples - wave.shape[0]))


def copy_synthesis(
    model: str | Path | None,
    manifest: str | Path,
    out_dir: str | Path,
    *,
    limit: int | None = 30,
    batch_size: int = 4,
    gl: GriffinLimConfig | None = None,
    seed: int = 0,
    temperature: float = 1.0,
    postfilter: bool = True,
    candidates: int = 1,
    beams: int | None = None,
) -> Path:
    """Re-synthesise the first ``limit`` utterances of ``manifest`` with both vocoders into
    ``out_dir/{wavenet,griffin-lim}/<id>.wav``. WaveNet generates ``batch_size`` utterances at a time
    (similar lengths together); each utterance is charged its share of the batch's time. Returns the path
    of ``synth.jsonl``."""
    out_dir = Path(out_dir)
    gl = gl or GriffinLimConfig(power=1.0)
    vocoder = Vocoder(model, seed=seed, temperature=temperature, postfilter=postfilter, candidates=candidates,
                      beams=beams)
    records = read_manifest(manifest)[:limit]
    write_manifest(
        out_dir / "manifest.jsonl",
        [dataclasses.replace(r, audio=str(resolve_audio(manifest, r))) for r in records],
    )
    waves = {r.id: load(resolve_audio(manifest, r), vocoder.sample_rate)[0] for r in records}
    mels = {r.id: vocoder.mel(waves[r.id]) for r in records}
    rows = {
        r.id: {
            "id": r.id,
            "text": r.text,
            "audio_s": waves[r.id].shape[0] / vocoder.sample_rate,
            "compute_s": {},
        }
        for r in records
    }
    order = sorted(rows, key=lambda u: waves[u].shape[0])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    for batch in tqdm(batches, desc="wavenet", unit="batch"):
        start = time.perf_counter()
        outs = vocoder.vocode_batch([mels[u] for u in batch], [waves[u].shape[0] for u in batch])
        seconds = time.perf_counter() - start
        total = sum(w.shape[0] for w in outs)
        for utt, wave in zip(batch, outs, strict=True):
            save(out_dir / "wavenet" / f"{utt}.wav", wave, vocoder.sample_rate)
            rows[utt]["compute_s"]["wavenet"] = round(seconds * wave.shape[0] / total, 4)
    for utt in tqdm(order, desc="griffin-lim", unit="utt"):
        start = time.perf_counter()
        wave = mel_griffin_lim(mels[utt], vocoder, gl, n_samples=waves[utt].shape[0], seed=seed)
        rows[utt]["compute_s"]["griffin-lim"] = round(time.perf_counter() - start, 4)
        save(out_dir / "griffin-lim" / f"{utt}.wav", wave, vocoder.sample_rate)
    info = {
        "model": str(vocoder.loaded.source),
        "step": vocoder.loaded.step,
        "batch_size": batch_size,
        "temperature": temperature,
        "candidates": candidates,
        "beams": vocoder.beams,
        "postfilter": postfilter,
        "griffin_lim": dataclasses.asdict(gl),
    }
    write_json(out_dir / "settings.json", info)
    listing = out_dir / "synth.jsonl"
    write_lines(listing, (json.dumps(rows[r.id], ensure_ascii=False) for r in records))
    return listing


def score(
    synth_dir: str | Path, *, roundtrips: dict[str, str] | None = None, reference: str | Path | None = None
) -> dict:
    """MCD of each system against the recordings, round-trip CERs, real-time factors -> JSON-safe dict."""
    synth_dir = Path(synth_dir)
    manifest = synth_dir / "manifest.jsonl"
    rows = [json.loads(line) for line in (synth_dir / "synth.jsonl").read_text(encoding="utf-8").splitlines()]
    records = {r.id: r for r in read_manifest(manifest)}
    per = []
    for row in tqdm(rows, desc="MCD", unit="utt"):
        ref, _ = load(resolve_audio(manifest, records[row["id"]]), MCD_FEATURES.sample_rate)
        entry = {"id": row["id"], "text": row["text"], "audio_s": row["audio_s"]}
        for system in SYSTEMS:
            syn, _ = load(synth_dir / system / f"{row['id']}.wav", MCD_FEATURES.sample_rate)
            entry[f"{system}_mcd_db"] = mel_cepstral_distortion(ref, syn)
        per.append(entry)
    audio = sum(r["audio_s"] for r in rows)
    systems = {
        system: {
            "mcd_db": statistics.fmean(p[f"{system}_mcd_db"] for p in per),
            "mcd_db_median": statistics.median(p[f"{system}_mcd_db"] for p in per),
            "real_time_factor": sum(r["compute_s"][system] for r in rows) / max(audio, 1e-9),
        }
        for system in SYSTEMS
    }
    for system, path in (roundtrips or {}).items():
        if system not in systems:
            raise ValueError(f"--roundtrip {system}=...: unknown system; choose from {SYSTEMS}")
        cer = roundtrip_cer(manifest, path)
        systems[system]["roundtrip_cer"] = cer["cer"]
        systems[system]["roundtrip_missing"] = cer["missing"]
        for p in per:
            p[f"{system}_hyp"] = cer["per_utterance"][p["id"]]["hyp"]
            p[f"{system}_cer"] = cer["per_utterance"][p["id"]]["cer"]
    scores: dict = {"n": len(per), "audio_s": audio, "systems": systems}
    settings = synth_dir / "settings.json"
    if settings.exists():
        scores["settings"] = json.loads(settings.read_text(encoding="utf-8"))
    if reference:
        ref = roundtrip_cer(manifest, reference)
        scores["reference_cer"] = ref["cer"]
        scores["reference_missing"] = ref["missing"]
    scores["per_utterance"] = per
    return scores


def _guide_text(candidates: int, beams: int = 1) -> str:
    if candidates <= 1:
        return ""
    how = f"best of {candidates}" if beams <= 1 else f"{candidates} draws as {beams} beams"
    return f", mel-guided sampling ({how} every 2 frames, tts.wavenet.FastGenerator.generate_guided)"


def report(scores: dict) -> str:
    """RESULTS.md text from :func:`score`'s dict."""
    systems = scores["systems"]
    settings = scores.get("settings", {})
    gl = settings.get("griffin_lim", {})
    lines = [
        "# WaveNet vocoder vs Griffin-Lim: copy synthesis of the test sentences",
        "",
        f"{scores['n']} test utterances ({scores['audio_s']:.1f} s); both vocoders get the same mel (the "
        f"Tacotron target). WaveNet: {settings.get('model', '?')} (step {settings.get('step', '?')}), batches "
        f"of {settings.get('batch_size', '?')}, temperature {settings.get('temperature', 1.0)}"
        f"{_guide_text(settings.get('candidates', 1), settings.get('beams', 1))}"
        f"{', mel-gated (tts.spectrogram.mel_gate)' if settings.get('postfilter') else ''}; Griffin-Lim: NNLS mel inversion, {gl.get('n_iter', '?')} "
        f"iterations, magnitudes raised to {gl.get('power', '?')}.",
        "",
        "| metric | " + " | ".join(SYSTEMS) + " |",
        "|---|" + "---:|" * len(SYSTEMS),
        "| MCD (dB, DTW, c1-c24) mean | " + " | ".join(f"{systems[s]['mcd_db']:.2f}" for s in SYSTEMS) + " |",
        "| MCD median | " + " | ".join(f"{systems[s]['mcd_db_median']:.2f}" for s in SYSTEMS) + " |",
    ]
    if all("roundtrip_cer" in systems[s] for s in SYSTEMS):
        lines.append(
            "| round-trip CER (Glottis ASR) | "
            + " | ".join(f"{100 * systems[s]['roundtrip_cer']:.2f}%" for s in SYSTEMS)
            + " |"
        )
    lines.append(
        "| real-time factor (1 thread) | "
        + " | ".join(f"{systems[s]['real_time_factor']:.3f}" for s in SYSTEMS)
        + " |"
    )
    if "reference_cer" in scores:
        lines += [
            "",
            f"Reference CER (the same recogniser on the recordings): {100 * scores['reference_cer']:.2f}%.",
        ]
    wins = [
        name
        for name, key in (("MCD", "mcd_db"), ("round-trip CER", "roundtrip_cer"))
        if key in systems["wavenet"] and systems["wavenet"][key] < systems["griffin-lim"][key]
    ]
    lines += [
        "",
        f"WaveNet is better than Griffin-Lim on: {', '.join(wins) if wins else 'neither metric'}.",
        "",
        "Definitions: `tts/evaluate.py` (MCD, CER), `tts/vocoder_evaluate.py` (this comparison).",
        "",
        "## Per utterance",
        "",
        "| id | MCD WaveNet | MCD Griffin-Lim | CER WaveNet | CER Griffin-Lim | text |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for p in scores["per_utterance"]:
        cers = [f"{100 * p[f'{s}_cer']:.1f}%" if f"{s}_cer" in p else "" for s in SYSTEMS]
        lines.append(
            f"| {p['id']} | {p['wavenet_mcd_db']:.2f} | {p['griffin-lim_mcd_db']:.2f} | {cers[0]} | {cers[1]} "
            f"| {p['text'].replace('|', ' ')} |"
        )
    return "\n".join(lines) + "\n"


def _named_paths(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep:
            raise ValueError(f"--roundtrip {item!r}: expected SYSTEM=FILE")
        out[name] = path
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tts.vocoder_evaluate", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    synth = sub.add_parser("synth", help="copy synthesis of a manifest with WaveNet and Griffin-Lim")
    synth.add_argument("--model", help="vocoder folder or checkpoint (default: the bundled vocoder)")
    synth.add_argument("--manifest", required=True)
    synth.add_argument("--out-dir", required=True)
    synth.add_argument("--limit", type=int, default=30, help="only the first N utterances (default 30)")
    synth.add_argument("--batch-size", type=int, default=4, help="utterances WaveNet generates together")
    synth.add_argument("--gl-iters", type=int, default=60)
    synth.add_argument(
        "--gl-power", type=float, default=1.0, help="exponent of the magnitudes (1.0: faithful)"
    )
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument(
        "--temperature",
        type=float,
        default=1.0,
        help="WaveNet softmax temperature (tune it on dev, not test)",
    )
    synth.add_argument(
        "--no-postfilter",
        dest="postfilter",
        action="store_false",
        help="score WaveNet's raw output (default: through the vocoder's post-filter, tts.spectrogram.mel_gate)",
    )
    synth.add_argument("--candidates", type=int, default=1, help=CANDIDATES_HELP)
    synth.add_argument(
        "--beams",
        type=int,
        help="with --candidates: search with this many beams of N / beams draws "
        "(default: tts.vocode.default_beams, 2 for an even N of at least 4)",
    )
    synth.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1, for a comparable RTF)"
    )
    sc = sub.add_parser("score", help="MCD and round-trip CER of both systems -> scores.json")
    sc.add_argument("--synth-dir", required=True)
    sc.add_argument(
        "--roundtrip",
        action="append",
        default=[],
        metavar="SYSTEM=FILE",
        help="glottis transcribe --format jsonl output of a system's folder",
    )
    sc.add_argument("--reference", help="the same for the recordings")
    sc.add_argument("--out", required=True)
    rep = sub.add_parser("report", help="RESULTS.md from scores.json")
    rep.add_argument("--scores", required=True)
    rep.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.command == "synth":
        set_threads(args.threads)
        copy_synthesis(
            args.model,
            args.manifest,
            args.out_dir,
            limit=args.limit,
            batch_size=args.batch_size,
            gl=GriffinLimConfig(n_iter=args.gl_iters, power=args.gl_power),
            seed=args.seed,
            temperature=args.temperature,
            postfilter=args.postfilter,
            candidates=args.candidates,
            beams=args.beams,
        )
    elif args.command == "score":
        write_json(
            args.out, score(args.synth_dir, roundtrips=_named_paths(args.roundtrip), reference=args.reference)
        )
    else:
        write_text(args.out, report(json.loads(Path(args.scores).read_text(encoding="utf-8"))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
