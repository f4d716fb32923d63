"""Self-supervised wav2vec 2.0 pretraining on untranscribed audio (``transformers.Wav2Vec2ForPreTraining``).

    python -m asr.wav2vec2_pretrain --config configs/asr/wav2vec2_small.yaml --exp-dir exp/w2v_pt \
        --train data/manifests/train.jsonl [--dev data/manifests/dev.jsonl]

Each utterance is cut to a random window of ``pretrain.crop_seconds``; transcripts are never read. Latent
frames are masked in spans (``_compute_mask_indices``); for each masked frame the model must pick the
quantised latent of that frame among ``num_negatives`` distractors drawn from other frames of the same
utterance (``_sample_negative_indices``): the contrastive loss, plus the diversity loss that keeps the
codebooks in use. Logged per step: both losses (per masked frame), the codebook perplexity (of
``groups x codevectors`` possible), the Gumbel temperature, the learning rate.

Rerunning the same command resumes from the newest checkpoint. The result, ``exp-dir/final/``, is a
Hugging Face folder (``config.json``, ``model.safetensors``, ``preprocessor_config.json``) plus
``glottis.json`` with the step count and wall time; ``asr.wav2vec2 finetune --init`` reads it.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from transformers import Wav2Vec2FeatureExtractor, Wav2Vec2ForPreTraining
from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

from asr.wav2vec2 import (
    FbankFrontEnd,
    PretrainConfig,
    Wav2Vec2ExpConfig,
    attach_modules,
    build_loader,
    hf_config,
    normalize_waves,
    receptive_field,
    set_front_end_stats,
    step_seed,
)
from audio.atomic import write_json
from audio.config import load_config, save_config, to_dict
from audio.manifest import read_manifest
from audio.stats import FeatureStats
from audio.training import (
    CheckpointManager,
    TrainLogger,
    add_trainer_arguments,
    choose_device,
    set_threads,
    warmup_decay,
)

log = logging.getLogger("asr.wav2vec2_pretrain")

__all__ = ["RandomCrop", "build_pretraining_model", "gumbel_temperature", "pretraining_loss", "pretrain"]

PRETRAIN_FORMAT = "glottis-wav2vec2-pretrain-1"


class RandomCrop:
    """``(samples,) -> (min(samples, max_samples),)``: a random window, from a generator seeded per
    data-loader worker (as ``asr.augment.WaveAugment``)."""

    def __init__(self, max_samples: int, seed: int = 0):
        self.max_samples = max_samples
        self.seed = seed
        self._gen: torch.Generator | None = None
        self._gen_seed: int | None = None

    def __call__(self, wave: torch.Tensor) -> torch.Tensor:
        base = torch.initial_seed() + self.seed
        if self._gen is None or self._gen_seed != base:
            self._gen, self._gen_seed = torch.Generator().manual_seed(base % (2**63)), base
        if wave.numel() <= self.max_samples:
            return wave
        start = int(torch.randint(wave.numel() - self.max_samples + 1, (), generator=self._gen))
        return wave[start : start + self.max_samples]


def build_pretraining_model(cfg: Wav2Vec2ExpConfig) -> Wav2Vec2ForPreTraining:
    """A randomly initialised ``Wav2Vec2ForPreTraining`` of ``cfg.encoder``'s size."""
    p = cfg.pretrain
    config = hf_config(
        cfg.encoder,
        cfg.sample_rate,
        mask_time_prob=p.mask_time_prob,
        mask_time_length=p.mask_time_length,
        num_negatives=p.num_negatives,
        contrastive_logits_temperature=p.contrastive_logits_temperature,
        diversity_loss_weight=p.diversity_loss_weight,
        **{k: getattr(p, k) for k in ("hidden_dropout", "attention_dropout", "activation_dropout",
                                      "feat_proj_dropout", "feat_quantizer_dropout", "layerdrop")},
    )
    return attach_modules(Wav2Vec2ForPreTraining(config))


def gumbel_temperature(step: int, p: PretrainConfig) -> float:
    """Geometric decay from ``gumbel_start`` to ``gumbel_end`` over ``gumbel_anneal_fraction`` of the run."""
    progress = min(1.0, step / max(1.0, p.gumbel_anneal_fraction * p.total_steps))
    return p.gumbel_start * (p.gumbel_end / p.gumbel_start) ** progress


def pretraining_loss(model: Wav2Vec2ForPreTraining, waves: torch.Tensor, lengths: torch.Tensor,
                     p: PretrainConfig, *, seed: int) -> dict[str, torch.Tensor]:
    """Contrastive + weighted diversity loss of one batch, per masked frame.

    waves ``(B, samples)``, lengths ``(B,)`` samples. Masks and negatives are drawn from numpy seeded
    with ``seed`` (transformers draws them from numpy's global RNG). Returns ``{"loss", "contrastive",
    "diversity", "perplexity", "masked"}`` (0-dim tensors; ``loss`` carries the graph).
    """
    config = model.config
    if waves.shape[1] < receptive_field(config):
        waves = torch.nn.functional.pad(waves, (0, receptive_field(config) - waves.shape[1]))
    x, valid = normalize_waves(waves, lengths)
    frames = int(model._get_feat_extract_output_lengths(torch.tensor(waves.shape[1])))
    frame_lengths = model._get_feat_extract_output_lengths(lengths).long()
    frame_valid = torch.arange(frames)[None, :] < frame_lengths.cpu()[:, None]  # (B, frames) bool
    np.random.seed(seed)
    mask = _compute_mask_indices((len(lengths), frames), mask_prob=p.mask_time_prob,
                                 mask_length=p.mask_time_length, attention_mask=frame_valid.long(), min_masks=2)
    # Distractors come from any unpadded frame of the same utterance, masked or not (as in HF's example).
    negatives = _sample_negative_indices((len(lengths), frames), p.num_negatives,
                                         mask_time_indices=frame_valid.numpy())
    mask_t = torch.from_numpy(mask).to(waves.device)
    out = model(x, attention_mask=valid.long() if config.feat_extract_norm == "layer" else None,
                mask_time_indices=mask_t, sampled_negative_indices=torch.from_numpy(negatives).long().to(waves.device))
    masked = mask_t.sum().clamp(min=1)
    return {"loss": out.loss / masked, "contrastive": out.contrastive_loss.detach() / masked,
            "diversity": out.diversity_loss.detach() / masked, "perplexity": out.codevector_perplexity.detach(),
            "masked": masked}


@torch.no_grad()
def evaluate(model: Wav2Vec2ForPreTraining, loader, p: PretrainConfig, device) -> dict[str, float]:
    """Mean losses and perplexity over ``loader`` in eval mode (hard codevector choice), fixed masks."""
    model.eval()
    totals: dict[str, float] = {}
    for n, batch in enumerate(loader):
        out = pretraining_loss(model, batch["waves"].to(device), batch["lengths"].to(device), p, seed=n)
        for k in ("loss", "contrastive", "diversity", "perplexity"):
            totals[k] = totals.get(k, 0.0) + float(out[k])
    model.train()
    return {k: v / max(1, n + 1) for k, v in totals.items()}


def save_pretrained_dir(model: Wav2Vec2ForPreTraining, out: Path, meta: dict, sample_rate: int) -> None:
    """HF folder plus glottis.json, written as ``out.tmp/`` and renamed."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(str(tmp))
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sample_rate, padding_value=0.0, do_normalize=True,
                             return_attention_mask=model.config.feat_extract_norm == "layer"
                             ).save_pretrained(str(tmp))
    write_json(tmp / "glottis.json", {"format": PRETRAIN_FORMAT, "sample_rate": sample_rate, **meta})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)


def pretrain(cfg: Wav2Vec2ExpConfig, args: argparse.Namespace) -> Path:
    p = cfg.pretrain
    device = choose_device(args.device)
    set_threads(args.threads or max(1, len(os.sched_getaffinity(0)) - p.num_workers))
    torch.manual_seed(p.seed)
    random.seed(p.seed)
    exp_dir = Path(args.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    save_config(exp_dir / "config.yaml", cfg)

    model = build_pretraining_model(cfg)
    if isinstance(model.wav2vec2.feature_extractor, FbankFrontEnd):
        set_front_end_stats(model, FeatureStats.load(args.feature_stats) if args.feature_stats else None)
    model = model.to(device)
    log.info("wav2vec2 pretraining: %.2fM parameters", sum(q.numel() for q in model.parameters()) / 1e6)
    min_seconds = (receptive_field(model.config) + p.mask_time_length * math.prod(model.config.conv_stride)) \
        / cfg.sample_rate
    records = [r for r in read_manifest(args.train) if r.duration >= min_seconds]
    crop = RandomCrop(int(p.crop_seconds * cfg.sample_rate), seed=p.seed)
    loader, sampler = build_loader(Path(args.train), records, sample_rate=cfg.sample_rate, max_seconds=p.max_seconds,
                                   max_batch_size=p.max_batch_size, shuffle=True, seed=p.seed,
                                   num_workers=p.num_workers, transform=crop,
                                   durations=[min(r.duration, p.crop_seconds) for r in records])
    log.info("pretraining on %d utterances, %.2f h (cropped to %.1f s each)", len(records),
             sum(r.duration for r in records) / 3600, p.crop_seconds)
    dev_loader = None
    if args.dev:
        dev = [r for r in read_manifest(args.dev) if r.duration >= min_seconds]
        dev = dev[:: max(1, math.ceil(len(dev) / p.dev_max_utterances))]
        dev_loader, _ = build_loader(Path(args.dev), dev, sample_rate=cfg.sample_rate, max_seconds=p.max_seconds,
                                     max_batch_size=p.max_batch_size, shuffle=False, seed=0, num_workers=0,
                                     transform=lambda w: w[: int(p.crop_seconds * cfg.sample_rate)],
                                     durations=[min(r.duration, p.crop_seconds) for r in dev])

    optimizer = torch.optim.AdamW(model.parameters(), lr=p.peak_lr, weight_decay=p.weight_decay,
                                  betas=(0.9, 0.98), eps=1e-6)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_decay(s, warmup=p.warmup_steps, total=p.total_steps))
    checkpoints = CheckpointManager(exp_dir, keep=p.keep_checkpoints)
    step, train_seconds = 0, 0.0
    latest = checkpoints.latest()
    if latest is not None:
        state = CheckpointManager.load(latest, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        step, train_seconds = state["step"], state["train_seconds"]
        log.info("resumed from %s at step %d", latest, step)
    logger = TrainLogger(exp_dir)

    def snapshot() -> dict:
        return {
            "model_type": "wav2vec2_pretraining",
            "config": to_dict(cfg),
            "hf_config": json.loads(model.config.to_json_string()),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(batches_done=batches_done),
            "step": step,
            "train_seconds": train_seconds + time.time() - t_start,  # wall time over all resumes
        }

    progress = tqdm(total=p.total_steps, initial=step, desc="pretrain", unit="step", dynamic_ncols=True)
    model.train()
    t_start, audio_seconds = time.time(), 0.0
    while step < p.total_steps:
        batches_done = sampler.state_dict()["batches_done"]
        for batch in loader:
            temperature = gumbel_temperature(step, p)
            model.set_gumbel_temperature(temperature)
            waves, lengths = batch["waves"].to(device), batch["lengths"].to(device)
            out = pretraining_loss(model, waves, lengths, p, seed=step_seed(p.seed, step))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), p.grad_clip)
            if torch.isfinite(grad_norm):
                optimizer.step()
            else:
                log.warning("step %d: non-finite gradient norm, update skipped", step)
            scheduler.step()
            step += 1
            batches_done += 1
            audio_seconds += float(lengths.sum()) / cfg.sample_rate
            progress.update(1)
            progress.set_postfix(loss=f"{out['loss'].item():.3f}", ppl=f"{float(out['perplexity']):.1f}")
            if step % 10 == 0 or step == p.total_steps:
                for k in ("loss", "contrastive", "diversity", "perplexity"):
                    logger.scalar(f"train/{k}", float(out[k].detach()), step)
                logger.scalar("train/gumbel_temperature", temperature, step)
                logger.scalar("train/grad_norm", float(grad_norm), step)
                logger.scalar("train/lr", scheduler.get_last_lr()[0], step)
                logger.scalar("train/audio_x_realtime", audio_seconds / (time.time() - t_start), step)
            if dev_loader is not None and (step % p.eval_every == 0 or step == p.total_steps):
                scores = evaluate(model, dev_loader, p, device)
                for k, v in scores.items():
                    logger.scalar(f"dev/{k}", v, step)
                logger.plot(["train/loss", "dev/loss", "train/perplexity", "dev/perplexity"])
                log.info("step %d: dev loss %.3f (contrastive %.3f), perplexity %.1f", step, scores["loss"],
                         scores["contrastive"], scores["perplexity"])
            if step % p.checkpoint_every == 0 or step == p.total_steps:
                checkpoints.save(snapshot(), step)
            if step >= p.total_steps:
                break
        else:
            sampler.set_epoch(sampler.epoch + 1)
    progress.close()
    logger.plot(["train/loss", "dev/loss", "train/perplexity", "dev/perplexity"])
    logger.close()
    final = CheckpointManager.load(checkpoints.latest())
    model.load_state_dict(final["model"])
    meta = {"step": final["step"], "train_seconds": final["train_seconds"], "training_config": final["config"],
            "codebook": {"groups": model.config.num_codevector_groups,
                         "codevectors_per_group": model.config.num_codevectors_per_group}}
    save_pretrained_dir(model, exp_dir / "final", meta, cfg.sample_rate)
    log.info("wrote %s", exp_dir / "final")
    return exp_dir / "final"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.wav2vec2_pretrain", description=__doc__.split("\n\n")[0])
    add_trainer_arguments(parser, config_help="YAML mapping onto asr.wav2vec2.Wav2Vec2ExpConfig",
                          exp_help="checkpoints, logs, plots and final/ go here",
                          train_help="manifest of the audio (transcripts are not used)",
                          dev_help="manifest for a held-out loss during training",
                          threads_help="torch threads (0: one per core left free)")
    parser.add_argument("--feature-stats", help="log-mel statistics JSON (python -m audio.stats) for "
                        "encoder.front_end fbank; other front ends ignore it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(Wav2Vec2ExpConfig, args.config, args.set)
    pretrain(cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
