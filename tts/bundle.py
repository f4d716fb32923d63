"""A Tacotron model folder that needs nothing else: weights, model/feature/text/Griffin-Lim settings, card.

    model_dir/
      model.safetensors   weights (fp16 when that changes the output by less than 0.5 dB, else fp32)
      config.json         {"format", "model_config", "feature_config", "text_config", "scale",
                           "griffin_lim", "symbols", "step", "training_config", "fp16_check"}
      README.md           the model card

``python -m tts.bundle --checkpoint exp/tts_tacotron/final.pt --out DIR [--card CARD.md] [--fp32]``
writes one from a training checkpoint. :func:`load_tacotron` reads either a folder or a checkpoint.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from audio.atomic import atomic_path, write_json, write_text
from audio.config import from_dict
from audio.features import FeatureConfig
from audio.training import CheckpointManager
from tts.spectrogram import GriffinLimConfig, SpectrogramScale
from tts.tacotron import Tacotron, TacotronConfig
from tts.text import SYMBOLS, TextConfig, text_to_ids

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL_DIR", "FORMAT", "LoadedTacotron", "load_tacotron", "export_bundle", "main"]

FORMAT = "glottis-tacotron-1"
DEFAULT_MODEL_DIR = Path(__file__).parent / "pretrained" / "tacotron_synth_en"
FP16_MAX_DB = 0.5  # fp16 weights are kept only if the mean output change stays below this
_CHECK_SENTENCE = "The quick brown fox jumps over the lazy dog, doesn't it?"


@dataclass
class LoadedTacotron:
    model: Tacotron  # in eval mode
    feature_config: FeatureConfig
    text_config: TextConfig
    scale: SpectrogramScale
    griffin_lim: GriffinLimConfig
    source: Path
    step: int


def _check_symbols(symbols: list[str] | None, where: Path) -> None:
    if symbols is not None and list(symbols) != list(SYMBOLS):
        raise ValueError(
            f"{where}: the model was trained with a different symbol table than tts.text.SYMBOLS"
        )


def _build(config: dict, where: Path, state: dict[str, torch.Tensor], step: int) -> LoadedTacotron:
    _check_symbols(config.get("symbols"), where)
    model = Tacotron(from_dict(TacotronConfig, config["model_config"], where=f"{where}:model_config"))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return LoadedTacotron(
        model=model.eval(),
        feature_config=from_dict(FeatureConfig, config["feature_config"], where=f"{where}:feature_config"),
        text_config=from_dict(TextConfig, config["text_config"], where=f"{where}:text_config"),
        scale=from_dict(SpectrogramScale, config["scale"], where=f"{where}:scale"),
        griffin_lim=from_dict(GriffinLimConfig, config["griffin_lim"], where=f"{where}:griffin_lim"),
        source=where,
        step=int(config.get("step", 0)),
    )


def is_tacotron_bundle(path: str | os.PathLike) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("format") == FORMAT


def load_tacotron(path: str | os.PathLike | None = None) -> LoadedTacotron:
    """Load a model folder (default: the bundled model) or a training checkpoint (``.pt``), on the CPU.

    Raises:
        FileNotFoundError: with a message saying how to get a model, when there is none at ``path``.
    """
    path = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if path.is_file():
        state = CheckpointManager.load(path)
        return _build(state, path, state["model"], state.get("step", 0))
    if is_tacotron_bundle(path):
        config = json.loads((path / "config.json").read_text())
        return _build(config, path, load_file(str(path / "model.safetensors")), config.get("step", 0))
    if path == DEFAULT_MODEL_DIR:
        raise FileNotFoundError(
            f"the bundled Tacotron model is missing from {path}; train one with `make tts` and export it "
            "with `make -C recipes/synth_en tts-bundle`, or pass --model DIR_OR_CHECKPOINT"
        )
    raise FileNotFoundError(f"{path}: neither a Glottis Tacotron model folder nor a checkpoint file")


@torch.no_grad()
def _fp16_change_db(model: Tacotron, config: dict) -> float:
    """Mean absolute change (dB) of the linear output for a test sentence when weights are rounded to fp16.

    Decoded without pre-net dropout and for a fixed number of steps, so both runs are comparable.
    """
    text_cfg = from_dict(TextConfig, config["text_config"])
    scale = from_dict(SpectrogramScale, config["scale"])
    ids = torch.tensor(text_to_ids(_CHECK_SENTENCE, text_cfg))
    rounded = Tacotron(model.cfg).eval()
    rounded.load_state_dict(
        {k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    )
    outputs = [
        m.inference(ids, max_decoder_steps=60, stop_threshold=2.0, prenet_dropout=False).linear
        for m in (model, rounded)
    ]
    return float((outputs[0] - outputs[1]).abs().mean()) * -scale.min_level_db


def _card_extras(config: dict, extras: dict) -> str:
    """The card's data / command / wall-time / scores sections, from what the recipe hands over."""
    parts = []
    stats = extras.get("data_stats")
    if stats:
        tts = stats.get("tts", {})
        rows = [
            f"| {split} | {v.get('utterances', '?')} | {v.get('hours', 0):.2f} |"
            for split, v in tts.items()
            if isinstance(v, dict) and "hours" in v
        ]
        voice = tts.get("voice") or next(
            (next(iter(v.get("per_voice", {})), None) for v in tts.values() if isinstance(v, dict)), None
        )
        parts += [
            "## Training data",
            "",
            f"The single-voice TTS subset of the synthetic `synth_en` corpus (voice: {voice or '?'}),"
            " sentence-disjoint train/dev/test; built by `make -C recipes/synth_en data`.",
            "",
            "| split | utterances | hours |",
            "|---|---:|---:|",
            *rows,
            "",
        ]
    if extras.get("command"):
        parts += ["## How it was made", "", f"    {extras['command']}", ""]
        parts += [f"Config: `{extras['config']}` (also inside `config.json`)." if extras.get("config") else "", ""]
    seconds = config.get("train_seconds")
    if seconds:
        parts += [f"Training wall time: {seconds / 60:.0f} minutes, {extras.get('hardware', 'CPU')}.", ""]
    if config.get("init"):
        parts += [f"Training started from the weights of `{config['init']}` ({config['step']} steps from there).", ""]
    scores = extras.get("scores")
    if scores:
        att = scores.get("attention", {})
        parts += [
            "## Scores (test sentences, never seen in training)",
            "",
            "| metric | value |",
            "|---|---:|",
            f"| sentences | {scores['n']} |",
            f"| MCD (dB, DTW) mean | {scores['mcd_db']:.2f} |",
        ]
        if "roundtrip_cer" in scores:
            parts.append(f"| round-trip CER (bundled recogniser) | {100 * scores['roundtrip_cer']:.1f}% |")
        if "reference_cer" in scores:
            parts.append(f"| same recogniser on the voice's own recordings | {100 * scores['reference_cer']:.1f}% |")
        if att:
            parts.append(
                f"| attention monotonic / diagonality | {att.get('monotonic', 0):.3f} / {att.get('diagonality', 0):.3f} |"
            )
        parts += [f"| real-time factor (1 thread, incl. Griffin-Lim) | {scores['real_time_factor']:.3f} |", ""]
    if extras.get("notes"):
        parts += ["## Notes", "", extras["notes"], ""]
    return "\n".join(parts)


def _model_card(config: dict, fp16: bool, extras: dict | None = None) -> str:
    feats, model, gl = config["feature_config"], config["model_config"], config["griffin_lim"]
    train = config.get("training_config", {}).get("train", {})
    params = config["parameters"]
    return f"""# Tacotron (Glottis) — {config.get("name", "model")}

Text-to-speech: Tacotron (Wang et al. 2017) with location-sensitive attention and a stop token; the
post-net predicts a linear spectrogram that Griffin-Lim turns into audio.

- Parameters: {params / 1e6:.2f}M, {"fp16" if fp16 else "fp32"} weights; trained for {
        config.get("step", 0)
    } steps
  (batch budget {train.get("max_seconds", "?")} s of audio).
- Input: {
        "IPA phonemes from espeak-ng (" + config["text_config"]["espeak_voice"] + ")"
        if config["text_config"]["phonemes"]
        else "normalised letters"
    }; see `tts/text.py`.
- Audio: {feats["sample_rate"]} Hz, n_fft {feats["n_fft"]}, hop {feats["hop_length"]}, {feats["n_mels"]} mel
  bands, pre-emphasis {feats["preemphasis"]}; {model["r"]} frames per decoder step.
- Vocoder: Griffin-Lim, {gl["n_iter"]} iterations, magnitudes raised to {gl["power"]}.
- fp16 check: rounding the weights to fp16 changes the output spectrogram by
  {config["fp16_check"]["mean_db"]:.3f} dB on average (limit {FP16_MAX_DB} dB).

Use: `glottis synthesize "Hello there." -o hello.wav --model {config.get("name", "DIR")}`, or
`from tts import Synthesizer`.

Limitations: one voice (the training corpus's); English text only; Griffin-Lim phase is audibly
buzzy; long sentences are split at punctuation and synthesised one at a time.

""" + _card_extras(config, extras or {})


def export_bundle(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    card: str | None = None,
    fp16: bool = True,
    extras: dict | None = None,
) -> Path:
    """Write a model folder from a training checkpoint. fp16 weights are used only if they change the
    output by less than ``FP16_MAX_DB`` (else fp32 is written, with a warning). Returns the folder."""
    state = CheckpointManager.load(checkpoint)
    loaded = _build(state, Path(checkpoint), state["model"], state.get("step", 0))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    change_db = _fp16_change_db(loaded.model, state)
    if fp16 and change_db >= FP16_MAX_DB:
        log.warning("fp16 weights change the output by %.2f dB; writing fp32", change_db)
        fp16 = False
    weights = {
        k: (v.half() if fp16 and v.is_floating_point() else v).contiguous() for k, v in state["model"].items()
    }
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(weights, str(tmp))
    config = {
        "format": FORMAT,
        "name": out.name,
        "model_config": state["model_config"],
        "feature_config": state["feature_config"],
        "text_config": state["text_config"],
        "scale": state["scale"],
        "griffin_lim": state["griffin_lim"],
        "symbols": state["symbols"],
        "step": state["step"],
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "fp16_check": {"mean_db": change_db, "fp16": fp16},
        "training_config": state["config"],
        "train_seconds": state.get("train_seconds"),
        "init": state.get("init"),  # the trainer stored it relative to the repository
    }
    write_json(out / "config.json", config)
    if card:
        with atomic_path(out / "README.md") as tmp:
            shutil.copyfile(card, tmp)
    else:
        write_text(out / "README.md", _model_card(config, fp16, extras))
    log.info(
        "wrote %s (%.1f MB, %s; fp16 changes the output by %.3f dB)",
        out,
        sum(f.stat().st_size for f in out.iterdir()) / 1e6,
        "fp16" if fp16 else "fp32",
        change_db,
    )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tts.bundle", description="Export a Tacotron model folder."
    )
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pt), e.g. exp/x/final.pt")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument(
        "--card", help="model card (markdown) to use as README.md instead of the generated one"
    )
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights")
    parser.add_argument("--scores", help="scores.json from `python -m tts.evaluate score`, for the card")
    parser.add_argument("--data-stats", help="the corpus stats.json, for the card's data section")
    parser.add_argument("--command", help="the command that trained the model, for the card")
    parser.add_argument("--config", help="the config file the model was trained with, for the card")
    parser.add_argument("--notes", help="free text for the card's notes section")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    extras = {
        "scores": json.loads(Path(args.scores).read_text()) if args.scores else None,
        "data_stats": json.loads(Path(args.data_stats).read_text()) if args.data_stats else None,
        "command": args.command,
        "config": args.config,
        "notes": args.notes,
    }
    export_bundle(args.checkpoint, args.out, card=args.card, fp16=not args.fp32, extras=extras)
    return 0


if __name__ == "__main__":
    sys.exit(main())
