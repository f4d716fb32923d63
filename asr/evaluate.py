"""Score a recogniser on manifests, tune the LM decoder on dev, and write the recipe's RESULTS.md.

    python -m asr.evaluate tune  --model M --lm lm.arpa --manifest dev.jsonl --out decoder.json
    python -m asr.evaluate score --model M --lm lm.arpa --decoder decoder.json \
        --split dev=dev.jsonl --split test=test.jsonl --out scores.json
    python -m asr.evaluate report --scores scores.json --out RESULTS.md

``M`` is a training checkpoint (``final.pt``) or a model folder. ``tune --adapt`` and ``score --adapt``
first adapt the recogniser to each voice of a split on that voice's own audio, without its transcripts
(``asr.adapt``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from tqdm import tqdm

from asr.adapt import AdaptConfig, adapt_recognizer
from asr.bundle import LoadedModel, load_recognizer
from asr.decode import DecoderConfig, LMBeamSearchDecoder, greedy_decode, tune_lm_weights
from asr.metrics import cer, wer
from audio.atomic import write_json, write_text
from audio.datasets import BucketBatchSampler, UtteranceDataset, collate_waves
from audio.manifest import read_manifest
from audio.training import set_threads

log = logging.getLogger(__name__)

__all__ = ["manifest_log_probs", "score_split"]


@torch.inference_mode()
def manifest_log_probs(model: LoadedModel, manifest: str | Path, *, limit: int | None = None,
                       max_seconds: float = 200.0, records: list | None = None
                       ) -> tuple[list[str], list[str], list[torch.Tensor], float]:
    """CTC log-probs of every utterance of a manifest (transcripts the tokenizer cannot spell are left out).

    ``records``: only these records of the manifest. Returns ``(ids, refs, log_probs [(frames, vocab)],
    seconds of compute)``.
    """
    records = scorable_records(model, manifest) if records is None else records
    if limit is not None and len(records) > limit:
        records = records[:: math.ceil(len(records) / limit)]
    dataset = UtteranceDataset(manifest, sample_rate=model.feature_config.sample_rate, records=records)
    return _log_probs(model, dataset, dataset.durations, Path(manifest).name, max_seconds)


def _log_probs(model: LoadedModel, items, durations: list[float], name: str, max_seconds: float = 200.0
               ) -> tuple[list[str], list[str], list[torch.Tensor], float]:
    """``manifest_log_probs`` of ``items`` (an ``UtteranceDataset``, or the list of its items already read)."""
    sampler = BucketBatchSampler(durations, max_seconds=max_seconds, shuffle=False)
    loader = torch.utils.data.DataLoader(items, batch_sampler=sampler, collate_fn=collate_waves)
    ids, refs, outputs, compute = [], [], [], 0.0
    for batch in tqdm(loader, desc=f"acoustic model {name}", unit="batch", leave=False):
        start = time.perf_counter()
        log_probs, lengths = model.recognizer(batch["waves"], batch["lengths"])
        compute += time.perf_counter() - start
        ids += batch["ids"]
        refs += batch["texts"]
        outputs += [lp[:n] for lp, n in zip(log_probs, lengths.tolist(), strict=True)]
    return ids, refs, outputs, compute


def scorable_records(model: LoadedModel, manifest: str | Path) -> list:
    """The manifest's records whose transcripts the model's tokenizer can spell."""
    records = []
    for r in read_manifest(manifest):
        try:
            model.tokenizer.encode(r.text)
        except ValueError:
            continue
        records.append(r)
    return records


def adapted_log_probs(model: LoadedModel, manifest: str | Path, cfg: AdaptConfig
                      ) -> tuple[list[str], list[str], list[torch.Tensor], float, dict]:
    """As ``manifest_log_probs``, each voice (or speaker) decoded by the recogniser adapted to its audio.

    The compute seconds include the adaptation; the last item is the adaptation report per voice."""
    groups: dict[str, list] = {}
    for r in scorable_records(model, manifest):
        groups.setdefault(r.voice_or_speaker, []).append(r)
    ids, refs, outputs, compute, reports = [], [], [], 0.0, {}
    for voice, records in tqdm(sorted(groups.items()), desc="adapting per voice", unit="voice", leave=False):
        dataset = UtteranceDataset(manifest, sample_rate=model.feature_config.sample_rate, records=records)
        items = [dataset[k] for k in range(len(dataset))]  # read once, for adapting and for decoding
        adapted, report = adapt_recognizer(model.recognizer, [item["wave"] for item in items], cfg)
        reports[voice] = report
        i, r, lp, seconds = _log_probs(replace(model, recognizer=adapted), items, dataset.durations,
                                       f"{Path(manifest).name} ({voice})")
        ids, refs, outputs = ids + i, refs + r, outputs + lp
        compute += seconds + report["wall_seconds"]
    return ids, refs, outputs, compute, reports


def _decode_all(decode, log_probs: list[torch.Tensor]) -> list[str]:
    return [decode(lp[None], torch.tensor([lp.shape[0]]))[0].text for lp in log_probs]


def score_split(model: LoadedModel, manifest: str, lm_decoder: LMBeamSearchDecoder | None,
                adapt: AdaptConfig | None = None) -> dict:
    """Greedy and LM CER/WER for one manifest, plus the acoustic model's real-time factor.

    ``adapt``: adapt the recogniser to each voice first (the real-time factor then includes it)."""
    reports = None
    if adapt is None:
        ids, refs, log_probs, compute = manifest_log_probs(model, manifest)
    else:
        ids, refs, log_probs, compute, reports = adapted_log_probs(model, manifest, adapt)
    records = {r.id: r for r in read_manifest(manifest)}
    audio_seconds = sum(records[i].duration for i in ids)
    greedy = _decode_all(lambda lp, n: greedy_decode(lp, n, model.tokenizer), log_probs)
    result = {
        "utterances": len(ids),
        "hours": round(audio_seconds / 3600, 3),
        "greedy": {"cer": cer(refs, greedy), "wer": wer(refs, greedy)},
        "acoustic_rtf": compute / audio_seconds,
    }
    examples = list(zip(ids[:5], refs[:5], greedy[:5], strict=True))
    if lm_decoder is not None:
        start = time.perf_counter()
        with_lm = _decode_all(lm_decoder, log_probs)
        result["lm_decode_rtf"] = (time.perf_counter() - start) / audio_seconds
        result["lm"] = {"cer": cer(refs, with_lm), "wer": wer(refs, with_lm)}
        examples = [(*e, h) for e, h in zip(examples, with_lm[:5], strict=False)]
    result["examples"] = [dict(zip(("id", "ref", "greedy", "lm"), e, strict=False)) for e in examples]
    result["per_voice"] = per_voice_scores([records[i].voice_or_speaker for i in ids], refs,
                                           greedy, with_lm if lm_decoder is not None else None)
    if reports is not None:
        result["adaptation"] = reports
    return result


def per_voice_scores(voices: list[str], refs: list[str], greedy: list[str], with_lm: list[str] | None
                     ) -> dict[str, dict]:
    """CER/WER per voice: a test set of unseen voices is only as good as its worst voice."""
    groups: dict[str, list[int]] = {}
    for k, voice in enumerate(voices):
        groups.setdefault(voice, []).append(k)
    out = {}
    for voice, rows in sorted(groups.items()):
        r = [refs[k] for k in rows]
        entry = {"utterances": len(rows), "greedy_cer": cer(r, [greedy[k] for k in rows])}
        if with_lm is not None:
            entry["lm_cer"] = cer(r, [with_lm[k] for k in rows])
            entry["lm_wer"] = wer(r, [with_lm[k] for k in rows])
        out[voice] = entry
    return out


def cmd_tune(args) -> int:
    start = time.time()
    model = load_recognizer(args.model)
    adapt = AdaptConfig(epochs=args.adapt_epochs) if args.adapt else None
    if adapt:  # every utterance: each voice's adaptation sees all of its audio, as when scoring
        _, refs, log_probs, _, _ = adapted_log_probs(model, args.manifest, adapt)
    else:
        _, refs, log_probs, _ = manifest_log_probs(model, args.manifest, limit=args.limit)
    weights = [float(x) for x in args.lm_weights.split(",")]
    scores = [float(x) for x in args.word_scores.split(",")]
    decoder = LMBeamSearchDecoder(model.tokenizer, lm_path=args.lm, config=DecoderConfig(beam=args.beam))
    best, table = tune_lm_weights(log_probs, refs, {"lm_weight": weights, "word_score": scores}, decoder=decoder)
    adapted = {"adapted": asdict(adapt)} if adapt else {}
    write_json(args.out, {**asdict(best), "tuned_on": str(args.manifest), "utterances": len(refs), **adapted,
                          "grid": table, "wall_seconds": round(time.time() - start, 1)})
    log.info("best on dev: %s", best)
    return 0


def cmd_score(args) -> int:
    start = time.time()
    model = load_recognizer(args.model)
    lm_decoder = None
    if args.lm:
        tuned = json.loads(Path(args.decoder).read_text()) if args.decoder else {}
        cfg = DecoderConfig(**{k: v for k, v in tuned.items() if k in DecoderConfig.__dataclass_fields__})
        lm_decoder = LMBeamSearchDecoder(model.tokenizer, lm_path=args.lm, config=cfg)
    adapt = AdaptConfig(epochs=args.adapt_epochs) if args.adapt else None
    out = {"model": str(args.model), "lm": str(args.lm) if args.lm else None, "splits": {}}
    if adapt is not None:
        out["adapted"] = asdict(adapt)
    for item in args.split:
        name, manifest = item.split("=", 1)
        out["splits"][name] = score_split(model, manifest, lm_decoder, adapt)
        s = out["splits"][name]
        log.info("%s: greedy CER %.2f%% WER %.2f%%%s", name, 100 * s["greedy"]["cer"], 100 * s["greedy"]["wer"],
                 f"; LM CER {100 * s['lm']['cer']:.2f}% WER {100 * s['lm']['wer']:.2f}%" if "lm" in s else "")
    if args.decoder:
        out["decoder"] = {k: v for k, v in json.loads(Path(args.decoder).read_text()).items() if k != "grid"}
    out["wall_seconds"] = round(time.time() - start, 1)
    write_json(args.out, out)
    return 0


def _pct(value: float | None) -> str:
    return f"{100 * value:.2f}%" if value is not None else "-"


def cmd_report(args) -> int:
    scores = json.loads(Path(args.scores).read_text())
    lines = ["# Results", "", f"Model: `{scores['model']}`  ", f"LM: `{scores.get('lm')}`", ""]
    if "decoder" in scores:
        d = scores["decoder"]
        lines += [f"Decoder (tuned on dev): beam {d.get('beam')}, LM weight {d.get('lm_weight')}, "
                  f"word score {d.get('word_score')}", ""]
    if "adapted" in scores:
        a = scores["adapted"]
        lines += [f"Adapted to each voice before decoding, without transcripts (`asr.adapt`: {a['epochs']} passes "
                  f"over up to {a['max_seconds']:g} s of the voice's audio, lr {a['lr']}); the real-time factor "
                  "includes the adaptation.", ""]
    lines += ["| split | utts | hours | greedy CER | greedy WER | LM CER | LM WER |",
              "|---|---|---|---|---|---|---|"]
    for name, s in scores["splits"].items():
        lm = s.get("lm", {})
        lines.append(f"| {name} | {s['utterances']} | {s['hours']} | {_pct(s['greedy']['cer'])} | "
                     f"{_pct(s['greedy']['wer'])} | {_pct(lm.get('cer'))} | {_pct(lm.get('wer'))} |")
    for name, s in scores["splits"].items():
        if "per_voice" not in s:
            continue
        lines += ["", f"Per voice, {name}:", "", "| voice | utts | greedy CER | LM CER | LM WER |",
                  "|---|---|---|---|---|"]
        for voice, v in s["per_voice"].items():
            lines.append(f"| {voice} | {v['utterances']} | {_pct(v['greedy_cer'])} | {_pct(v.get('lm_cer'))} | "
                         f"{_pct(v.get('lm_wer'))} |")
    write_text(args.out, "\n".join(lines) + "\n")
    return 0


def _provenance(state: dict, hours: float | None) -> str:
    """The model card's sentence on how the weights came about: one training run, or a soup of several."""
    start = f" starting from the weights of `{state['init']}`" if state.get("init") else ""
    if state.get("soup"):
        members = ", ".join(f"`{m}`" for m in state["soup"])
        return (f"The weights are the mean of {len(state['soup'])} recognisers (a model soup, `python -m asr.soup`): "
                f"{members}, each fine-tuned{start}; the first trained for {state['step']} steps. ")
    return (f"Trained for {state['step']} steps{start}" + (f" in {hours / 60:.0f} minutes of wall time" if hours else "")
            + f"; the exported weights average the last {state['config']['train']['average_last']} checkpoints. ")


def cmd_card(args) -> int:
    """MODEL_CARD.md: what the model is, what it was trained on, how, how long, and how well."""
    from audio.training import CheckpointManager

    scores = json.loads(Path(args.scores).read_text())
    state = CheckpointManager.load(args.checkpoint)
    data = json.loads(Path(args.data_stats).read_text())["asr"]
    train, extra = data["train"], ""
    if args.train_manifest:  # what the last stage really trained on (e.g. train_plus.jsonl)
        from audio.synth_corpus import split_stats

        train = split_stats(read_manifest(args.train_manifest))
        if train["utterances"] != data["train"]["utterances"]:
            extra = f" (training manifest `{Path(args.train_manifest).name}`)"
    cfg = state["config"]
    n_params = sum(v.numel() for k, v in state["model"].items() if not k.startswith("feat_"))
    hours = state.get("train_seconds")
    lines = [
        "# Glottis Conv1D+BiLSTM CTC recogniser (synth_en)", "",
        f"A {cfg['model_type']} model ({n_params / 1e6:.2f}M parameters, fp16 weights): "
        f"{cfg['model']['conv_channels']} Conv1D channels with strides {cfg['model']['conv_strides']}, "
        f"{cfg['model']['lstm_layers']} BiLSTM layers of {cfg['model']['lstm_hidden']} per direction, "
        "characters (a-z, apostrophe, space) with CTC; 80 log-mel features at 16 kHz.", "",
        "## Training data", "",
        f"The synth_en corpus built by `make data`{extra}: {train['hours']} h of training speech "
        f"({train['utterances']} utterances, {train['voices']} voices of "
        f"{train['speakers']} speakers from espeak-ng, flite and festival) reading WordNet "
        "glosses and examples. Dev and test voices and sentences are never seen in training "
        f"(dev: {data['dev']['voices']} voices, test: {data['test']['voices']} voices). "
        "The LM is a 3-gram Kneser-Ney model of the training-pool sentences only.", "",
        "## How it was made", "",
        "```sh", args.recipe.strip(), "```", "",
        _provenance(state, hours) + f"Config: `{args.config}`. {args.notes or ''}".rstrip(), "",
        "## Scores", "",
        "| split | greedy CER | greedy WER | LM CER | LM WER |", "|---|---|---|---|---|",
    ]
    for name, s in scores["splits"].items():
        lm = s.get("lm", {})
        lines.append(f"| {name} | {_pct(s['greedy']['cer'])} | {_pct(s['greedy']['wer'])} | "
                     f"{_pct(lm.get('cer'))} | {_pct(lm.get('wer'))} |")
    d = scores.get("decoder", {})
    lines += ["", f"LM decoding: beam {d.get('beam')}, LM weight {d.get('lm_weight')}, word score "
              f"{d.get('word_score')} (tuned on dev). Per-voice scores are in the recipe's RESULTS.md.", "",
              "## Limits", "",
              "Trained only on synthetic speech, which the augmentation (noise, reverberation, telephone "
              "band, speed, equalisation, SpecAugment) does not make real: `make -C recipes/real_en "
              "MODEL=<this folder>` measures it on real recordings (Asterisk's telephone prompts and the "
              "recordings in pinned PyPI sdists; `make bench` puts pocketsphinx beside it)."]
    write_text(args.out, "\n".join(lines) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.evaluate", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    tune = sub.add_parser("tune", help="grid-search LM weight and word score on a dev manifest")
    tune.add_argument("--model", required=True)
    tune.add_argument("--lm", required=True)
    tune.add_argument("--manifest", required=True)
    tune.add_argument("--out", required=True)
    tune.add_argument("--beam", type=int, default=50)
    tune.add_argument("--limit", type=int, default=300, help="dev utterances used for tuning")
    tune.add_argument("--lm-weights", default="0.2,0.4,0.6,0.8,1.0,1.3,1.6")
    tune.add_argument("--word-scores", default="-1,0,1,2")
    score = sub.add_parser("score", help="CER/WER per split, greedy and with the LM")
    score.add_argument("--model", required=True)
    score.add_argument("--lm")
    score.add_argument("--decoder")
    score.add_argument("--split", action="append", required=True, metavar="NAME=MANIFEST")
    score.add_argument("--out", required=True)
    for sub_parser in (tune, score):
        sub_parser.add_argument("--adapt", action="store_true",
                                help="adapt the recogniser to each voice's audio first (unsupervised, asr.adapt)")
        sub_parser.add_argument("--adapt-epochs", type=int, default=AdaptConfig.epochs,
                                help="passes over each voice's audio")
    report = sub.add_parser("report", help="RESULTS.md from scores.json")
    report.add_argument("--scores", required=True)
    report.add_argument("--out", required=True)
    card = sub.add_parser("card", help="MODEL_CARD.md for a bundled model")
    card.add_argument("--scores", required=True)
    card.add_argument("--checkpoint", required=True)
    card.add_argument("--data-stats", required=True)
    card.add_argument("--train-manifest", help="the manifest the model trained on (default: the corpus's train split, "
                      "as in --data-stats)")
    card.add_argument("--config", required=True)
    card.add_argument("--command", dest="recipe", required=True, help="the exact commands that produced the model")
    card.add_argument("--notes", help="anything else the reader must know")
    card.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_threads(None)
    commands = {"tune": cmd_tune, "score": cmd_score, "report": cmd_report, "card": cmd_card}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
