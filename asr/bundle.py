"""A model folder that needs nothing else: weights, configs, tokenizer, LM and tuned decoder settings.

    model_dir/
      model.safetensors   fp16 weights (feature statistics included as buffers)
      config.json         {"format", "model_type", "model_config", "feature_config", "tokenizer"}
      decoder.json        tuned LM weight / word score / beam (optional)
      lm.arpa.gz          word n-gram LM, gzipped ARPA (optional; KenLM reads it as it is, and a
                          plain lm.arpa of an older folder is read too)
      README.md           the model card

``python -m asr.bundle --checkpoint exp/x/final.pt --out DIR [--lm lm.arpa] [--decoder decoder.json]``
writes one from a training checkpoint. ``load_recognizer`` reads either a folder or a checkpoint, and
also a wav2vec 2.0 model folder or fine-tuning checkpoint (``asr.wav2vec2``, imported only then).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from asr.model import MODELS
from asr.recognizer import Recognizer
from asr.tokenizer import Tokenizer, load_tokenizer
from audio.atomic import atomic_path, write_json
from audio.config import from_dict
from audio.features import FeatureConfig
from audio.training import CheckpointManager

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_MODEL_DIR", "LoadedModel", "load_recognizer", "export_bundle", "is_ctc_bundle", "folder_lm",
           "copy_lm",
           "is_wav2vec2_folder"]

FORMAT = "glottis-ctc-1"
WAV2VEC2_FORMAT = "glottis-wav2vec2-1"  # glottis.json beside a Hugging Face Wav2Vec2ForCTC folder
DEFAULT_MODEL_DIR = Path(__file__).parent / "pretrained" / "conv_bilstm_synth_en"


@dataclass
class LoadedModel:
    recognizer: torch.nn.Module  # (B, samples), (B,) -> log-probs (B, T, V), (B,)
    tokenizer: Tokenizer
    feature_config: FeatureConfig
    decoder: dict  # tuned decoder settings ({} if none)
    lm_path: Path | None
    source: Path


LM_NAMES = ("lm.arpa.gz", "lm.arpa")  # what a model folder's LM may be called, the preferred first


def folder_lm(folder: Path) -> Path | None:
    """The LM of a model folder (``lm.arpa.gz``, or an older folder's plain ``lm.arpa``), if any."""
    return next((folder / name for name in LM_NAMES if (folder / name).is_file()), None)


def copy_lm(src: str | os.PathLike, dest: Path) -> None:
    """Write ``dest`` (``lm.arpa.gz``) atomically from an ARPA file, gzipping a plain one. An ARPA LM
    shrinks about 3x, and no timestamp goes into the gzip header, so the same LM gives the same bytes."""
    with atomic_path(dest) as tmp:
        if str(src).endswith(".gz"):
            shutil.copyfile(src, tmp)
        else:
            with open(src, "rb") as f, open(tmp, "wb") as raw, \
                    gzip.GzipFile(filename="lm.arpa", mode="wb", fileobj=raw, mtime=0) as out:
                shutil.copyfileobj(f, out, 1 << 20)


def is_ctc_bundle(path: str | os.PathLike) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("format") == FORMAT


def is_wav2vec2_folder(path: str | os.PathLike) -> bool:
    meta = Path(path) / "glottis.json"
    return meta.is_file() and json.loads(meta.read_text()).get("format") == WAV2VEC2_FORMAT


def _build(model_type: str, model_config: dict, feature_config: dict, training_config: dict) -> Recognizer:
    if model_type not in MODELS:
        raise ValueError(f"unknown model type {model_type!r}; known: {sorted(MODELS)}")
    model_cls, config_cls = MODELS[model_type]
    fcfg = from_dict(FeatureConfig, feature_config)
    return Recognizer(model_cls(from_dict(config_cls, model_config)), fcfg,
                      utterance_cmn=bool(training_config.get("utterance_cmn", False)))


def load_recognizer(path: str | os.PathLike | None = None, *, device: str | torch.device = "cpu") -> LoadedModel:
    """Load a model folder (default: the bundled model) or a training checkpoint (``.pt``)."""
    path = Path(path) if path is not None else DEFAULT_MODEL_DIR
    if path.is_file():
        state = CheckpointManager.load(path)
        if state.get("model_type") == "wav2vec2":
            from asr.wav2vec2 import load_wav2vec2

            return load_wav2vec2(path, state=state, device=device)
        recognizer = _build(state["config"]["model_type"], state["model_config"], state["feature_config"],
                            state["config"])
        recognizer.load_state_dict(state["model"])
        tokenizer = load_tokenizer(state["tokenizer"])
        decoder, lm_path = {}, None
    elif is_ctc_bundle(path):
        config = json.loads((path / "config.json").read_text())
        recognizer = _build(config["model_type"], config["model_config"], config["feature_config"],
                            config.get("training_config", {}))
        weights = {k: v.float() for k, v in load_file(str(path / "model.safetensors")).items()}
        recognizer.load_state_dict(weights)
        tokenizer = load_tokenizer(config["tokenizer"])
        decoder_file = path / "decoder.json"
        decoder = json.loads(decoder_file.read_text()) if decoder_file.is_file() else {}
        lm_path = folder_lm(path)
    elif is_wav2vec2_folder(path):
        from asr.wav2vec2 import load_wav2vec2

        return load_wav2vec2(path, device=device)
    elif path == DEFAULT_MODEL_DIR:
        raise FileNotFoundError(f"the bundled model is missing from {path}; train one with `make asr`")
    else:
        raise FileNotFoundError(f"{path}: neither a Glottis CTC model folder nor a checkpoint file")
    recognizer.eval().to(device)
    return LoadedModel(recognizer, tokenizer, recognizer.feature_config, decoder, lm_path, path)


def export_bundle(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, *, lm: str | None = None,
                  decoder: str | None = None, card: str | None = None, fp16: bool = True) -> Path:
    """Write a model folder from a training checkpoint. Returns the folder."""
    state = CheckpointManager.load(checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.half() if fp16 and v.is_floating_point() and "feat_" not in k else v).contiguous()
               for k, v in state["model"].items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(weights, str(tmp))
    write_json(out / "config.json", {
        "format": FORMAT,
        "model_type": state["config"]["model_type"],
        "model_config": state["model_config"],
        "feature_config": state["feature_config"],
        "tokenizer": state["tokenizer"],
        "training_config": state["config"],
        "step": state["step"],
    })
    for name in LM_NAMES:  # a stale LM of an earlier export would be used
        (out / name).unlink(missing_ok=True)
    if lm:
        copy_lm(lm, out / LM_NAMES[0])
    for src, name in ((decoder, "decoder.json"), (card, "README.md")):
        if src:
            with atomic_path(out / name) as tmp:
                shutil.copyfile(src, tmp)
        else:
            (out / name).unlink(missing_ok=True)  # a stale file of an earlier export would be used
    log.info("wrote %s (%.1f MB)", out, sum(f.stat().st_size for f in out.iterdir()) / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.bundle", description="Export a CTC model folder.")
    parser.add_argument("--checkpoint", required=True, help="training checkpoint (.pt)")
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--lm", help="ARPA LM to include")
    parser.add_argument("--decoder", help="decoder.json with tuned LM weight and word score")
    parser.add_argument("--card", help="model card (markdown) to include as README.md")
    parser.add_argument("--fp32", action="store_true", help="keep float32 weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    export_bundle(args.checkpoint, args.out, lm=args.lm, decoder=args.decoder, card=args.card,
                  fp16=not args.fp32)
    return 0


if __name__ == "__main__":
    sys.exit(main())

