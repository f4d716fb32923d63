"""Train the WaveNet vocoder on (mel, waveform) pairs of a single-speaker manifest.

    python -m tts.vocoder_train --config configs/tts/wavenet.yaml --exp-dir exp/vocoder_wavenet \
        --train data/manifests/tts/train.jsonl --dev data/manifests/tts/dev.jsonl

Each step trains on ``batch_size`` random windows of ``window_frames`` mel frames (``window_frames * hop``
samples). The mel is Tacotron's target (``tts.spectrogram.TargetExtractor`` with the config's features and
scale), computed once per utterance at start-up and kept in memory (fp16) with the mu-law classes of the
wave (uint8), so a Tacotron output plugs straight into the vocoder. The loss is the cross-entropy of the
256-way mu-law softmax, in nats per sample.

Rerunning the same command resumes from the newest checkpoint (model, optimiser, schedule, window sampler
and random state), and a finished run (``final.pt`` present) does nothing. ``--stop-after-steps N`` ends a
run after N steps with a checkpoint. By default training uses one thread (``train.threads``).
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from audio.config import load_config, save_config, to_dict
from audio.features import FeatureConfig
from audio.io import load, save
from audio.manifest import read_manifest, resolve_audio
from audio.training import (
    CheckpointManager,
    TrainLogger,
    add_trainer_arguments,
    choose_device,
    init_label,
    load_init_weights,
    set_threads,
    warmup_decay,
    write_final,
)
from tts.spectrogram import TTS_FEATURES, SpectrogramScale, TargetExtractor
from tts.wavenet import FastGenerator, WaveNet, WaveNetConfig, decode_classes, encode_wave, mu_law_encode

log = logging.getLogger("tts.vocoder_train")

__all__ = [
    "VocoderTrainConfig",
    "VocoderConfig",
    "WindowCorpus",
    "build_model",
    "model_metadata",
    "window_loss",
    "add_input_noise",
    "train",
    "main",
]


@dataclass(frozen=True)
class VocoderTrainConfig:
    batch_size: int = 4  # windows per step
    window_frames: int = 24  # mel frames per window (x hop samples: 24 x 256 = 0.28 s at 22.05 kHz)
    max_utterances: int = 0  # 0: the whole training manifest
    peak_lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 200
    total_steps: int = 5000
    grad_clip: float = 1.0
    log_every: int = 25
    checkpoint_every: int = 250
    eval_every: int = 500  # dev loss, and a short generated dev sample
    keep_checkpoints: int = 5
    average_last: int = 3
    seed: int = 0
    threads: int = 1  # torch intra-op threads (0: all cores this process may use)
    dev_max_utterances: int = 16
    dev_windows: int = 32  # fixed dev windows for the dev loss
    dev_sample_seconds: float = 0.5  # audio generated at each evaluation (costs about that much CPU time)
    # Noise injection (as LPCNet): every training input class moves by a uniform integer offset in
    # [-input_noise, input_noise]. At generation the network reads its own samples, not the recording's, so
    # a network trained only on clean inputs leans on them more than on the mel and drifts; the targets and
    # the dev loss stay clean. 0: off.
    input_noise: int = 0


@dataclass(frozen=True)
class VocoderConfig:
    features: FeatureConfig = TTS_FEATURES
    scale: SpectrogramScale = field(default_factory=SpectrogramScale)
    model: WaveNetConfig = field(default_factory=WaveNetConfig)
    train: VocoderTrainConfig = field(default_factory=VocoderTrainConfig)


def build_model(cfg: VocoderConfig) -> WaveNet:
    """A WaveNet whose mel size and hop come from the features."""
    return WaveNet(replace(cfg.model, n_mels=cfg.features.n_mels, hop_length=cfg.features.hop_length))


def model_metadata(cfg: VocoderConfig, model: WaveNet) -> dict:
    """Everything besides the weights that rebuilds ``model`` and its analysis."""
    return {
        "config": to_dict(cfg),
        "model_config": to_dict(model.cfg),
        "feature_config": to_dict(cfg.features),
        "scale": to_dict(cfg.scale),
    }


# --- data -----------------------------------------------------------------------------------------


class WindowCorpus:
    """Utterances held in memory as mel (fp16, padded by the conditioning margin) and mu-law classes (uint8),
    from which random or fixed windows are cut.

    A window of ``W`` frames starting at frame ``f`` gives ``inputs (W * hop,)`` (the previous samples'
    classes; the silence class before an utterance), ``targets (W * hop,)`` and ``mel (W + 1 + 2 * margin,
    n_mels)``, the frames ``f - margin .. f + W + margin``.
    """

    def __init__(
        self,
        manifest: str | Path,
        cfg: VocoderConfig,
        *,
        limit: int = 0,
        desc: str = "load",
        progress: bool = False,
    ):
        records = read_manifest(manifest)
        if limit and len(records) > limit:
            records = records[:: math.ceil(len(records) / limit)]
        self.cfg = cfg
        self.hop = cfg.features.hop_length
        self.margin = cfg.model.cond_margin
        self.window = cfg.train.window_frames
        extractor = TargetExtractor(cfg.features, cfg.scale)
        self.ids, self.mels, self.classes = [], [], []
        seconds = 0.0
        for record in tqdm(records, desc=desc, unit="utt", leave=False, disable=not progress):
            wave, _ = load(resolve_audio(manifest, record), cfg.features.sample_rate)
            if wave.shape[0] < (self.window + 1) * self.hop:
                log.warning("%s: shorter than a training window; left out", record.id)
                continue
            with torch.no_grad():
                mel, _, _ = extractor(wave.unsqueeze(0))  # (1, T, M)
            self.ids.append(record.id)
            self.mels.append(F.pad(mel[0].T, (self.margin, self.margin)).T.half())  # (T + 2 * margin, M)
            self.classes.append(encode_wave(wave, cfg.model).to(torch.uint8))
            seconds += wave.shape[0] / cfg.features.sample_rate
        if not self.ids:
            raise ValueError(f"{manifest}: no utterance is longer than a training window")
        # Window starts: any frame whose window lies inside the wave.
        self.starts = torch.tensor([len(c) // self.hop - self.window for c in self.classes])  # (U,) >= 1
        self.silence = int(mu_law_encode(torch.zeros(()), cfg.model.n_classes))
        log.info("%s: %d utterances, %.2f h in memory", manifest, len(self.ids), seconds / 3600)

    def __len__(self) -> int:
        return len(self.ids)

    def window_at(self, utt: int, frame: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        first, n = frame * self.hop, self.window * self.hop
        classes = self.classes[utt]
        targets = classes[first : first + n].long()
        if first == 0:
            inputs = torch.cat([torch.tensor([self.silence]), classes[: n - 1].long()])
        else:
            inputs = classes[first - 1 : first + n - 1].long()
        mel = self.mels[utt][frame : frame + self.window + 1 + 2 * self.margin].float()
        return inputs, targets, mel

    def sample(self, batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``batch`` windows, utterances drawn in proportion to their length.

        Returns ``{"inputs": (B, N) int64, "targets": (B, N) int64, "mel": (B, W + 1 + 2 margin, M)}``."""
        utts = torch.multinomial(self.starts.float(), batch, replacement=True, generator=generator)
        frames = (torch.rand(batch, generator=generator) * (self.starts[utts] + 1)).long()
        items = [self.window_at(int(u), int(f)) for u, f in zip(utts, frames, strict=True)]
        return {k: torch.stack([it[i] for it in items]) for i, k in enumerate(("inputs", "targets", "mel"))}


def add_input_noise(
    inputs: torch.Tensor, amount: int, n_classes: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``inputs`` mu-law classes, each moved by a uniform integer in ``[-amount, amount]`` (clamped). The
    trainer draws from torch's global generator (saved in each checkpoint), so the windows it samples are the
    same with and without noise."""
    if amount <= 0:
        return inputs
    offsets = torch.randint(-amount, amount + 1, inputs.shape, generator=generator)
    return (inputs + offsets).clamp(0, n_classes - 1)


def window_loss(model: WaveNet, batch: dict[str, torch.Tensor], device: torch.device) -> torch.Tensor:
    """Mean cross-entropy (nats per sample) of a batch of windows."""
    logits = model(batch["inputs"].to(device), batch["mel"].to(device), padded=True)  # (B, N, K)
    return F.cross_entropy(logits.flatten(0, 1), batch["targets"].to(device).flatten())  # (B*N, K), (B*N,)


@torch.no_grad()
def evaluate(
    model: WaveNet,
    dev: WindowCorpus,
    dev_batches: list[dict],
    cfg: VocoderConfig,
    *,
    step: int,
    exp_dir: Path,
) -> float:
    """Dev loss over fixed windows, and ``dev_sample_seconds`` of the first dev utterance generated by the
    fast generator into ``exp_dir/samples/step-N.wav`` (with the recording's same stretch beside it)."""
    model.eval()
    device = next(model.parameters()).device
    losses = [float(window_loss(model, batch, device)) for batch in dev_batches]
    frames = max(2, int(cfg.train.dev_sample_seconds * cfg.features.sample_rate / dev.hop))
    mel = dev.mels[0][dev.margin : dev.margin + frames + 1].float().unsqueeze(0)  # (1, frames + 1, M)
    n = frames * dev.hop
    classes = FastGenerator(model).generate(mel, n_samples=n, seed=cfg.train.seed)
    stem = exp_dir / "samples" / f"step-{step:08d}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    save(f"{stem}.wav", decode_classes(classes[0], cfg.model), cfg.features.sample_rate)
    reference = stem.parent / "reference.wav"
    if not reference.exists():
        save(
            reference, decode_classes(dev.classes[0][:n].long(), cfg.model), cfg.features.sample_rate
        )
    model.train()
    return sum(losses) / len(losses)


def _fixed_dev_batches(dev: WindowCorpus, cfg: VocoderConfig) -> list[dict]:
    generator = torch.Generator().manual_seed(1234)
    count, size = cfg.train.dev_windows, cfg.train.batch_size
    return [dev.sample(min(size, count - i), generator) for i in range(0, count, size)]


# --- training -------------------------------------------------------------------------------------


def train(cfg: VocoderConfig, args: argparse.Namespace) -> Path:
    """Train (or resume, or do nothing if finished) in ``args.exp_dir``. Returns the experiment folder."""
    exp_dir = Path(args.exp_dir)
    checkpoints = CheckpointManager(exp_dir, keep=cfg.train.keep_checkpoints)
    latest = checkpoints.latest()
    if (exp_dir / "final.pt").exists() and latest is not None:
        if CheckpointManager.load(latest)["step"] >= cfg.train.total_steps:
            log.info("%s is finished (final.pt exists); nothing to do", exp_dir)
            return exp_dir
    device = choose_device(args.device)
    set_threads(args.threads if args.threads is not None else cfg.train.threads)
    torch.manual_seed(cfg.train.seed)
    exp_dir.mkdir(parents=True, exist_ok=True)
    save_config(exp_dir / "config.yaml", cfg)

    model = build_model(cfg).to(device)
    log.info(
        "WaveNet: %.3fM parameters, %d layers, receptive field %d samples (%.1f ms), window %d samples",
        sum(p.numel() for p in model.parameters()) / 1e6,
        len(model.cfg.dilations),
        model.cfg.receptive_field,
        1000 * model.cfg.receptive_field / cfg.features.sample_rate,
        cfg.train.window_frames * cfg.features.hop_length,
    )
    corpus = WindowCorpus(
        args.train, cfg, limit=cfg.train.max_utterances, desc="load train", progress=args.progress
    )
    dev = dev_batches = None
    if args.dev:
        dev = WindowCorpus(args.dev, cfg, limit=cfg.train.dev_max_utterances, desc="load dev")
        dev_batches = _fixed_dev_batches(dev, cfg)

    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=cfg.train.peak_lr,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=cfg.train.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_decay(s, warmup=cfg.train.warmup_steps, total=cfg.train.total_steps)
    )
    windows = torch.Generator().manual_seed(cfg.train.seed)
    step, best = 0, math.inf
    if latest is not None:
        state = CheckpointManager.load(latest, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        windows.set_state(state["windows_rng"])
        torch.set_rng_state(state["rng"])
        step, best = state["step"], state.get("best_dev_loss", math.inf)
        log.info("resumed from %s at step %d", latest, step)
    elif args.init:
        load_init_weights(model, args.init)
    logger = TrainLogger(exp_dir)

    def snapshot() -> dict:
        return {
            **model_metadata(cfg, model),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "windows_rng": windows.get_state(),
            "rng": torch.get_rng_state(),
            "step": step,
            "best_dev_loss": best,
            "init": init_label(args.init),
        }

    last_step = cfg.train.total_steps
    if args.stop_after_steps:
        last_step = min(last_step, step + args.stop_after_steps)
    progress = tqdm(
        total=cfg.train.total_steps,
        initial=step,
        desc="train",
        unit="step",
        disable=not args.progress,
        dynamic_ncols=True,
    )
    model.train()
    t_start, steps_this_run = time.time(), 0
    while step < last_step:
        batch = corpus.sample(cfg.train.batch_size, windows)
        batch["inputs"] = add_input_noise(batch["inputs"], cfg.train.input_noise, cfg.model.n_classes)
        loss = window_loss(model, batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        optimizer.step()
        scheduler.step()
        step += 1
        steps_this_run += 1
        progress.update(1)
        progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if step % cfg.train.log_every == 0:
            elapsed = time.time() - t_start
            logger.scalar("train/loss", loss.item(), step)
            logger.scalar("train/grad_norm", float(grad_norm), step)
            logger.scalar("train/lr", scheduler.get_last_lr()[0], step)
            logger.scalar("train/seconds_per_step", elapsed / steps_this_run, step)
        if dev is not None and (step % cfg.train.eval_every == 0 or step == cfg.train.total_steps):
            dev_loss = evaluate(model, dev, dev_batches, cfg, step=step, exp_dir=exp_dir)
            logger.scalar("dev/loss", dev_loss, step)
            logger.plot(["train/loss", "dev/loss", "train/grad_norm", "train/seconds_per_step"])
            log.info("step %d: dev loss %.4f nats/sample", step, dev_loss)
            if dev_loss < best:
                best = dev_loss
                checkpoints.save_best({**snapshot(), "dev_loss": dev_loss})
        if step % cfg.train.checkpoint_every == 0 or step == last_step:
            checkpoints.save(snapshot(), step)
    progress.close()
    if steps_this_run:
        log.info("%.3f s/step over %d steps", (time.time() - t_start) / steps_this_run, steps_this_run)
    logger.plot(["train/loss", "dev/loss", "train/grad_norm", "train/seconds_per_step"])
    if step >= cfg.train.total_steps:
        finalize(exp_dir, checkpoints, cfg)
    logger.close()
    return exp_dir


def finalize(exp_dir: Path, checkpoints: CheckpointManager, cfg: VocoderConfig) -> None:
    """Write ``final.pt``: the average of the last ``average_last`` step checkpoints."""
    write_final(exp_dir, checkpoints, cfg.train.average_last, drop=("optimizer", "scheduler", "windows_rng", "rng"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts.vocoder_train", description=__doc__.split("\n\n")[0])
    add_trainer_arguments(
        parser,
        config_help="YAML mapping onto VocoderConfig",
        exp_help="checkpoints, logs, curves and samples go here",
        train_help="training manifest (JSON lines)",
        dev_help="dev manifest for the dev loss and generated samples",
        device_default="cpu",
        init=True,
        threads_default=None,
        threads_help="torch threads (default: train.threads)",
        stoppable=True,
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(VocoderConfig, args.config, args.set)
    train(cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
