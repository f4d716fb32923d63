"""Train a CTC recogniser.

    python -m asr.train --config configs/asr/conv_bilstm.yaml --exp-dir exp/asr_conv_bilstm \
        --train data/manifests/train.jsonl --dev data/manifests/dev.jsonl --stats exp/.../feature_stats.json

Rerunning the same command resumes from the newest checkpoint (finished or killed). Distributed:
``torchrun --nproc_per_node=N -m asr.train ...`` (gloo on CPU, NCCL on GPU).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from asr.augment import AugmentConfig, WaveAugment
from asr.model import MODELS, ConvBiLSTMConfig
from asr.recognizer import Recognizer, buffer_stats
from asr.tokenizer import load_tokenizer
from audio.config import load_config, to_dict
from audio.datasets import BucketBatchSampler, UtteranceDataset, collate_waves
from audio.features import FeatureConfig
from audio.manifest import read_manifest
from audio.stats import FeatureStats
from audio.training import (
    CheckpointManager,
    TrainLogger,
    add_trainer_arguments,
    init_label,
    load_init_weights,
    start_run,
    warmup_decay,
    write_final,
)

log = logging.getLogger("asr.train")


@dataclass(frozen=True)
class TrainConfig:
    max_seconds: float = 240.0  # audio per batch (sum over the padded batch), seconds
    max_batch_size: int = 64
    max_duration: float = 16.0  # longer training utterances are left out, seconds
    peak_lr: float = 2e-3
    weight_decay: float = 1e-2
    warmup_steps: int = 400
    total_steps: int = 6000
    grad_clip: float = 5.0
    checkpoint_every: int = 250
    eval_every: int = 500
    keep_checkpoints: int = 5
    average_last: int = 3
    num_workers: int = 1
    seed: int = 0
    amp: bool = True  # mixed precision, on CUDA only
    dev_max_utterances: int = 400  # dev CER during training on a fixed subset, for speed
    # Training utterances of these engines (e.g. festival, flite: the few natural-sounding speakers)
    # are repeated this many times per epoch, so they are not drowned by the many espeak voices.
    oversample_engines: tuple[str, ...] = ()
    oversample_factor: int = 1
    engines: tuple[str, ...] = ()  # train only on utterances of these engines (empty: all of them)


@dataclass(frozen=True)
class ASRConfig:
    model_type: str = "conv_bilstm"
    utterance_cmn: bool = False  # take each utterance's mean off its normalised log-mels (Recognizer)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ConvBiLSTMConfig = field(default_factory=ConvBiLSTMConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def keep_utterance(text: str, tokenizer) -> bool:
    try:
        return bool(tokenizer.encode(text))
    except ValueError:
        return False


def build_loader(manifest: Path, cfg: ASRConfig, tokenizer, *, rank: int, world: int, train: bool,
                 limit: int | None = None):
    """A loader of length-bucketed batches. Utterances the tokenizer cannot spell are left out; so are,
    in training, those longer than ``max_duration``. ``limit`` keeps an evenly spaced subset."""
    records = [r for r in read_manifest(manifest) if keep_utterance(r.text, tokenizer)]
    if train:
        records = [r for r in records if r.duration <= cfg.train.max_duration]
        if cfg.train.engines:
            records = [r for r in records if r.engine in cfg.train.engines]
            if not records:
                raise ValueError(f"{manifest}: no training utterance of engines {list(cfg.train.engines)}")
        extra = [r for r in records if r.engine in cfg.train.oversample_engines]
        records += extra * (cfg.train.oversample_factor - 1)
    if limit is not None and len(records) > limit:
        records = records[:: math.ceil(len(records) / limit)]
    transform = WaveAugment(cfg.augment, cfg.features.sample_rate, seed=cfg.train.seed) if train else None
    dataset = UtteranceDataset(manifest, sample_rate=cfg.features.sample_rate, transform=transform,
                               records=records)
    sampler = BucketBatchSampler(
        dataset.durations,
        max_seconds=cfg.train.max_seconds,
        max_batch_size=cfg.train.max_batch_size,
        shuffle=train,
        seed=cfg.train.seed,
        num_replicas=world if train else 1,
        rank=rank if train else 0,
    )
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_waves,
        num_workers=cfg.train.num_workers,
        persistent_workers=False,
    )
    return loader, sampler


@torch.inference_mode()
def evaluate(recognizer: Recognizer, loader, tokenizer, device) -> dict[str, float]:
    """Greedy CER/WER and mean CTC loss over ``loader``."""
    from asr.decode import greedy_decode
    from asr.metrics import cer, wer

    recognizer.eval()
    refs, hyps, losses = [], [], []
    for batch in loader:
        waves, lengths = batch["waves"].to(device), batch["lengths"].to(device)
        log_probs, out_lengths = recognizer(waves, lengths)
        targets = [torch.tensor(tokenizer.encode(t)) for t in batch["texts"]]
        losses.append(ctc_loss(log_probs, out_lengths, targets, tokenizer.blank_id).item())
        hyps += [h.text for h in greedy_decode(log_probs.cpu(), out_lengths.cpu(), tokenizer)]
        refs += batch["texts"]
    recognizer.train()
    return {"cer": cer(refs, hyps), "wer": wer(refs, hyps), "loss": sum(losses) / max(1, len(losses))}


def ctc_loss(log_probs: torch.Tensor, lengths: torch.Tensor, targets: list[torch.Tensor], blank: int):
    """Mean over the batch of per-utterance CTC loss divided by target length."""
    target_lengths = torch.tensor([len(t) for t in targets])
    flat = torch.cat(targets).to(log_probs.device)
    return torch.nn.functional.ctc_loss(
        log_probs.transpose(0, 1),  # (B, T, V) -> (T, B, V) as ctc_loss expects
        flat,
        lengths,
        target_lengths.to(log_probs.device),
        blank=blank,
        reduction="mean",
        zero_infinity=True,
    )


def train(cfg: ASRConfig, args: argparse.Namespace) -> Path:
    device, rank, world, exp_dir, main_proc = start_run(cfg, args, num_workers=cfg.train.num_workers,
                                                        seed=cfg.train.seed)

    tokenizer = load_tokenizer(json.loads(Path(args.tokenizer).read_text()))
    stats = FeatureStats.load(args.stats)
    model_cls, _ = MODELS[cfg.model_type]
    model_cfg = cfg.model.__class__(**{**asdict(cfg.model), "vocab_size": tokenizer.vocab_size,
                                       "n_mels": cfg.features.n_mels})
    spec_args = dict(num_time_masks=cfg.augment.time_masks, max_time_width=cfg.augment.max_time_width,
                     num_freq_masks=cfg.augment.freq_masks, max_freq_width=cfg.augment.max_freq_width)
    recognizer = Recognizer(model_cls(model_cfg), cfg.features, stats, spec_augment_args=spec_args,
                            vtlp_prob=cfg.augment.vtlp_prob, vtlp_range=cfg.augment.vtlp_range,
                            utterance_cmn=cfg.utterance_cmn, blur_prob=cfg.augment.blur_prob,
                            blur_max_bands=cfg.augment.blur_max_bands).to(device)
    n_params = sum(p.numel() for p in recognizer.parameters())
    log.info("model: %s, %.2fM parameters, vocab %d", cfg.model_type, n_params / 1e6, tokenizer.vocab_size)

    train_loader, sampler = build_loader(Path(args.train), cfg, tokenizer, rank=rank, world=world, train=True)
    dev_loader = None
    if args.dev and main_proc:
        dev_loader, _ = build_loader(Path(args.dev), cfg, tokenizer, rank=0, world=1, train=False,
                                     limit=cfg.train.dev_max_utterances)

    optimizer = torch.optim.AdamW(recognizer.parameters(), lr=cfg.train.peak_lr,
                                  weight_decay=cfg.train.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_decay(s, warmup=cfg.train.warmup_steps, total=cfg.train.total_steps))
    checkpoints = CheckpointManager(exp_dir, keep=cfg.train.keep_checkpoints)
    step, best_cer, train_seconds = 0, math.inf, 0.0
    latest = checkpoints.latest()
    if latest is not None:
        state = CheckpointManager.load(latest, map_location=device)
        recognizer.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        step, best_cer = state["step"], state["best_cer"]
        train_seconds = state.get("train_seconds", 0.0)
        log.info("resumed from %s at step %d", latest, step)
    elif args.init:
        load_init_weights(recognizer, args.init)
    # The feature statistics are buffers that come with the weights (an init's, or a resumed run's, whose
    # own may be an init's); record those, not the --stats file's.
    stats = replace(stats, **buffer_stats(recognizer.state_dict()))

    model = DistributedDataParallel(recognizer) if world > 1 else recognizer
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    logger = TrainLogger(exp_dir, enabled=main_proc)

    def snapshot() -> dict:
        return {
            "config": to_dict(cfg),
            "model_config": asdict(model_cfg),
            "feature_config": asdict(cfg.features),
            "feature_stats": asdict(stats),
            "tokenizer": tokenizer.to_dict(),
            "model": recognizer.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(batches_done=batches_done),
            "step": step,
            "best_cer": best_cer,
            "train_seconds": train_seconds + time.time() - t_start,  # wall time over all resumes
            "init": init_label(args.init),
        }

    progress = tqdm(total=cfg.train.total_steps, initial=step, desc="train", unit="step", disable=not main_proc,
                    dynamic_ncols=True)
    recognizer.train()
    t_start, audio_seconds = time.time(), 0.0
    while step < cfg.train.total_steps:
        # The loader reads ahead, so count the batches actually trained on for the resume point.
        batches_done = sampler.state_dict()["batches_done"]
        for batch in train_loader:
            waves, lengths = batch["waves"].to(device), batch["lengths"].to(device)
            targets = [torch.tensor(tokenizer.encode(t)) for t in batch["texts"]]
            with torch.autocast(device.type, enabled=use_amp):
                seed = cfg.train.seed + world * step + rank if cfg.augment.spec_augment else None
                log_probs, out_lengths = model(waves, lengths, augment_seed=seed)
            loss = ctc_loss(log_probs, out_lengths, targets, tokenizer.blank_id)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(recognizer.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            batches_done += 1
            audio_seconds += float(lengths.sum()) / cfg.features.sample_rate
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step % 25 == 0:
                logger.scalar("train/loss", loss.item(), step)
                logger.scalar("train/grad_norm", float(grad_norm), step)
                logger.scalar("train/lr", scheduler.get_last_lr()[0], step)
                logger.scalar("train/audio_x_realtime", audio_seconds / (time.time() - t_start), step)
            if main_proc and dev_loader is not None and (step % cfg.train.eval_every == 0
                                                          or step == cfg.train.total_steps):
                scores = evaluate(recognizer, dev_loader, tokenizer, device)
                for k, v in scores.items():
                    logger.scalar(f"dev/{k}", v, step)
                logger.plot(["train/loss", "dev/loss", "dev/cer", "dev/wer"])
                log.info("step %d: dev CER %.2f%% WER %.2f%% loss %.3f", step, 100 * scores["cer"],
                         100 * scores["wer"], scores["loss"])
                if scores["cer"] < best_cer:
                    best_cer = scores["cer"]
                    checkpoints.save_best(snapshot())
            if main_proc and (step % cfg.train.checkpoint_every == 0 or step == cfg.train.total_steps):
                checkpoints.save(snapshot(), step)
            if step >= cfg.train.total_steps:
                break
        else:
            sampler.set_epoch(sampler.epoch + 1)
    progress.close()
    if main_proc:
        finalize(exp_dir, checkpoints, cfg)
    logger.close()
    return exp_dir


def finalize(exp_dir: Path, checkpoints: CheckpointManager, cfg: ASRConfig) -> None:
    """Write ``final.pt``: the average of the last ``average_last`` step checkpoints."""
    write_final(exp_dir, checkpoints, cfg.train.average_last, drop=("optimizer", "scheduler", "sampler"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.train", description=__doc__.split("\n\n")[0])
    add_trainer_arguments(parser, config_help="YAML mapping onto ASRConfig",
                          exp_help="checkpoints, logs and plots go here",
                          train_help="training manifest (JSON lines)", dev_help="dev manifest for CER during training",
                          init=True)
    parser.add_argument("--tokenizer", required=True, help="tokenizer JSON written by asr.tokenizer")
    parser.add_argument("--stats", required=True, help="feature statistics JSON written by audio.stats")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(ASRConfig, args.config, args.set)
    train(cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
