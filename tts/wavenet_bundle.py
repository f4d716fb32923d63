"""A WaveNet vocoder folder that needs nothing else: fp16 weights, settings, model card.

    model_dir/
      model.safetensors   weights, fp16 (generation runs in fp32: they are widened on load)
      config.yaml         {format, name, model_config, feature_config, scale, step, parameters, fp16_check,
                           sampling: {temperature}, training_config}
      MODEL_CARD.md       what it is, how it was trained, how it scores

``python -m tts.wavenet_bundle --checkpoint exp/vocoder_wavenet/final.pt --out DIR [--scores scores.json]``
writes one; :func:`tts.vocode.load_vocoder` reads it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch
import yaml
from safetensors.torch import save_file

from audio.atomic import atomic_path, write_text
from audio.training import CheckpointManager, init_label
from tts.vocode import FORMAT, _build

log = logging.getLogger(__name__)

__all__ = ["export_vocoder", "model_card", "main"]


@torch.no_grad()
def _fp16_check(model, n_mels: int) -> dict:
    """Cross-entropy change (nats/sample) and mean |logit| change when the weights are rounded to fp16,
    on a random mel and random inputs."""
    generator = torch.Generator().manual_seed(0)
    mel = torch.rand(1, 12, n_mels, generator=generator)
    inputs = torch.randint(0, model.cfg.n_classes, (1, 10 * model.cfg.hop_length), generator=generator)
    rounded = type(model)(model.cfg).eval()
    rounded.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    a, b = model(inputs, mel), rounded(inputs, mel)
    targets = inputs.roll(-1, dims=1)
    ce = [float(torch.nn.functional.cross_entropy(x.transpose(1, 2), targets)) for x in (a, b)]
    return {"mean_abs_logit_change": float((a - b).abs().mean()), "cross_entropy_change": abs(ce[1] - ce[0])}


DEFAULT_COMMAND = "make setup && make -C recipes/synth_en data vocoder vocoder-bundle"
DEFAULT_CONFIG = "configs/tts/wavenet.yaml"


def _init_text(init: str | None, out: Path) -> str | None:
    """How the card names the ``--init`` weights: a stage trained from the bundle it then replaces would
    otherwise point at itself."""
    if not init:
        return None
    if init == init_label(out):  # labelled the way the trainer labels --init
        return f"the model bundled in `{init}` before this one (see How it was made)"
    return f"`{init}`"


def model_card(
    config: dict,
    scores: dict | None = None,
    notes: str | None = None,
    *,
    command: str = DEFAULT_COMMAND,
    config_path: str = DEFAULT_CONFIG,
    init_text: str | None = None,
) -> str:
    """MODEL_CARD.md text from a bundle's config (and the recipe's scores.json, if given)."""
    m, f = config["model_config"], config["feature_config"]
    train = config.get("training_config", {}).get("train", {})
    layers = m["dilation_cycles"] * (m["max_dilation"].bit_length())
    field = m["dilation_cycles"] * (2 * m["max_dilation"] - 1) + 1
    lines = [
        f"# WaveNet vocoder (Glottis) — {config.get('name', 'model')}",
        "",
        "Mel-conditioned WaveNet (van den Oord et al. 2016) with an 8-bit mu-law softmax output and Fast "
        "WaveNet cached generation, compiled (a C kernel built on first use where a C compiler is found, "
        "else numba; `tts/wavenet.py`)"
        + (f"; it models the wave pre-emphasised by {m['preemphasis']} and de-emphasises what it generates "
           "(LPCNet's noise shaping)." if m.get("preemphasis") else "."),
        "",
        f"- Parameters: {config['parameters'] / 1e6:.3f}M, stored as fp16 (computed in fp32); rounding to fp16 "
        f"changes the cross-entropy by {config['fp16_check']['cross_entropy_change']:.2e} nats/sample.",
        f"- Layout: {layers} layers ({m['dilation_cycles']} cycles of dilations 1..{m['max_dilation']}), "
        f"{m['residual_channels']} residual / {m['skip_channels']} skip channels, receptive field {field} samples "
        f"({1000 * field / f['sample_rate']:.0f} ms); conditioning: {m['cond_layers']} kernel-{m['cond_kernel']} "
        f"convs over mel frames, linearly interpolated to the sample rate.",
        f"- Audio: {f['sample_rate']} Hz; input mel = the Tacotron target (n_fft {f['n_fft']}, hop "
        f"{f['hop_length']}, {f['n_mels']} bands, pre-emphasis {f['preemphasis']}, fixed dB scale to [0, 1]), "
        "so Tacotron's predicted mel can be vocoded directly.",
        f"- Training: {config.get('step', 0)} steps of {train.get('batch_size', '?')} random windows of "
        f"{train.get('window_frames', '?')} frames, on one CPU thread, on the single-voice subset (festival "
        "slt HTS voice) of the synthetic `recipes/synth_en` corpus"
        + (f", starting from the weights of {init_text}." if init_text else "."),
        f"- Sampling: softmax temperature {config.get('sampling', {}).get('temperature', 1.0)}, the default of "
        "`glottis vocode` and `glottis synthesize --vocoder wavenet` with this model (`--temperature` overrides "
        "it in `glottis vocode`). The output then passes the mel gate (`tts.spectrogram.mel_gate`), which "
        "cuts whatever it has above its mel in any band and frame, i.e. the sampling noise (`--no-postfilter` "
        "keeps the raw output). `--candidates N` samples with a guide instead: every 2 frames it draws N "
        "continuations and keeps the one whose mel is closest to the input's, counting what a candidate lacks "
        "ten times as much as what the gate will cut, as 2 beams for an even N >= 4, at about N times the "
        "compute and by default at temperature 1.2 (`tts.wavenet.FastGenerator.generate_guided`, "
        "`tts.vocode.mel_guide`).",
        "",
        "Use: `glottis vocode speech.wav -o copy.wav`, `glottis vocode mel.npy -o out.wav`, "
        '`glottis synthesize "Hello." -o hello.wav --vocoder wavenet`, or `from tts.vocode import Vocoder`.',
        "",
    ]
    if scores:
        lines += ["## Copy synthesis of the test sentences (`make -C recipes/synth_en vocoder`)", ""]
        lines += ["| vocoder | MCD (dB) | round-trip CER | RTF (1 thread) |", "|---|---:|---:|---:|"]
        for name, s in scores["systems"].items():
            cer = f"{100 * s['roundtrip_cer']:.1f}%" if "roundtrip_cer" in s else "n/a"
            lines.append(f"| {name} | {s['mcd_db']:.2f} | {cer} | {s['real_time_factor']:.2f} |")
        if "reference_cer" in scores:
            lines.append(f"| (recordings) | 0 | {100 * scores['reference_cer']:.1f}% | |")
        lines.append("")
    lines += [
        "Limitations: one voice (a synthetic one); trained for a few hours on one CPU core, so the output "
        "keeps a noise floor that a longer training would lower; sampling is random (seeded) and a "
        "softmax over 256 levels limits the dynamic range to that of 8-bit mu-law.",
        "",
        "## How it was made",
        "",
        f"    {command}",
        "",
        f"Config: `{config_path}` (also in `config.yaml`).",
    ]
    if notes:
        lines += ["", notes]
    return "\n".join(lines) + "\n"


def export_vocoder(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    scores: str | os.PathLike | None = None,
    notes: str | None = None,
    command: str = DEFAULT_COMMAND,
    config_path: str = DEFAULT_CONFIG,
) -> Path:
    """Write a vocoder folder from a training checkpoint. Returns the folder. Its sampling temperature (the
    default of :class:`tts.vocode.Vocoder` with it) is the one ``scores`` were measured with, else 1.0."""
    score_data = json.loads(Path(scores).read_text(encoding="utf-8")) if scores else None
    state = CheckpointManager.load(checkpoint)
    loaded = _build(state, state["model"], Path(checkpoint))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state["model"].items()}
    with atomic_path(out / "model.safetensors") as tmp:
        save_file(weights, str(tmp))
    config = {
        "format": FORMAT,
        "name": out.name,
        "model_config": state["model_config"],
        "feature_config": state["feature_config"],
        "scale": state["scale"],
        "step": int(state.get("step", 0)),
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "fp16_check": _fp16_check(loaded.model, loaded.feature_config.n_mels),
        "sampling": {"temperature": float((score_data or {}).get("settings", {}).get("temperature", 1.0))},
        "init": state.get("init"),
        "training_config": state.get("config", {}),
    }
    write_text(out / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    card = model_card(
        config,
        score_data,
        notes,
        command=command,
        config_path=config_path,
        init_text=_init_text(config["init"], out),
    )
    write_text(out / "MODEL_CARD.md", card)
    log.info("wrote %s (%.2f MB)", out, sum(p.stat().st_size for p in out.iterdir()) / 1e6)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tts.wavenet_bundle", description="Export a WaveNet vocoder folder."
    )
    parser.add_argument(
        "--checkpoint", required=True, help="training checkpoint, e.g. exp/vocoder_wavenet/final.pt"
    )
    parser.add_argument("--out", required=True, help="model folder to write")
    parser.add_argument("--scores", help="the recipe's scores.json, quoted in the model card")
    parser.add_argument("--notes", help="free text for the model card (wall time, caveats)")
    parser.add_argument("--command", default=DEFAULT_COMMAND, help="the exact commands that made the model")
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the training config, as the card names it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    export_vocoder(
        args.checkpoint,
        args.out,
        scores=args.scores,
        notes=args.notes,
        command=args.command,
        config_path=args.config,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
