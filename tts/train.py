"""Train Tacotron on a single-speaker manifest.

    python -m tts.train --config configs/tts/tacotron.yaml --exp-dir exp/tts_tacotron \
        --train data/manifests/tts/train.jsonl --dev data/manifests/tts/dev.jsonl

Rerunning the same command resumes from the newest checkpoint (finished or killed) and, on one
process, continues exactly as if never interrupted (model, optimiser, schedule, sampler position and
random state are all restored). ``--stop-after-steps N`` ends a run after N steps with a checkpoint,
to share a machine in time slices. Targets (mel and linear spectrograms) are computed on the fly in the
data-loader worker: a 32-utterance batch takes ~0.2 s on one core, overlapped with the training step.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.nn.utils.rnn import pad_sequence
from tqdm import tqdm

from audio.config import load_config, to_dict
from audio.datasets import BucketBatchSampler
from audio.features import FeatureConfig
from audio.io import load, save
from audio.manifest import Utterance, read_manifest, resolve_audio
from audio.plot import plot_alignment, plot_spectrogram
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
from tts.alignment import alignment_scores, mean_scores
from tts.spectrogram import (
    TTS_FEATURES,
    GriffinLimConfig,
    SpectrogramScale,
    TargetExtractor,
    linear_to_wave,
    mel_to_linear_map,
)
from tts.tacotron import Tacotron, TacotronConfig, TacotronOutput, tacotron_loss
from tts.text import PAD_ID, SYMBOLS, TextConfig, normalize_text, texts_to_ids

log = logging.getLogger("tts.train")

__all__ = [
    "TrainConfig",
    "TTSConfig",
    "TTSDataset",
    "collate_tts",
    "build_model",
    "model_metadata",
    "train",
    "main",
]


@dataclass(frozen=True)
class TrainConfig:
    max_seconds: float = 80.0  # audio per batch (batch size times its longest item), seconds
    max_batch_size: int = 32
    max_duration: float = 10.0  # longer training utterances are left out, seconds
    peak_lr: float = 2e-3
    weight_decay: float = 1e-6
    warmup_steps: int = 300
    total_steps: int = 4000
    grad_clip: float = 1.0
    stop_pos_weight: float = 5.0  # the stop token's one positive step per utterance weighs this much
    guided_attention_weight: float = 1.0
    guided_attention_sigma: float = 0.2  # width of the diagonal prior, as a fraction of the text/audio
    log_every: int = 25
    checkpoint_every: int = 250
    eval_every: int = 250  # dev loss, and free-running synthesis of dev sentences with plots
    keep_checkpoints: int = 5
    average_last: int = 3
    num_workers: int = 1
    seed: int = 0
    amp: bool = True  # mixed precision, on CUDA only
    dev_max_utterances: int = 64  # dev loss on a fixed subset
    dev_samples: int = 2  # dev sentences synthesised free-running at each evaluation
    # Scheduled sampling: the chance that a decoder step is fed the model's own previous frame rather
    # than the target's, ramped linearly from 0 over feedback_ramp_steps. 0 is the paper's teacher forcing.
    feedback: float = 0.0
    feedback_ramp_steps: int = 0
    # A stage that trains only some of the model's top-level parts, e.g. [postnet, linear_proj]: a new,
    # larger post-net on a trained encoder and decoder. The rest is frozen and kept in eval mode.
    train_only: tuple[str, ...] = ()
    # Parts whose --init weights are not loaded, so they start afresh (e.g. a resized post-net).
    init_skip: tuple[str, ...] = ()
    # Half the post-net's L1 on the linear bins below this frequency (Hz), where intelligibility lives;
    # 0 weighs all bins alike, as in the paper.
    priority_freq: float = 0.0
    # Weight of an L1 on the mel's frame-to-frame and band-to-band differences (tacotron.delta_loss),
    # against the free-running decoder's blur; 0 (off) is the paper's loss.
    mel_delta_weight: float = 0.0
    # The same for the post-net's linear output, over the priority-frequency bins when priority_freq is set.
    linear_delta_weight: float = 0.0
    # With train_only limited to post-net parts: keep the frozen decoder's outputs per utterance from
    # the first epoch and reuse them after it, so later epochs run only the post-net (DecoderCache).
    decoder_cache: bool = False
    # With model.postnet_skip, where build_model starts linear_skip: "map" (mel_to_linear_map, for a fresh
    # post-net) or "zero" (beside a trained post-net loaded by --init, whose output it then leaves
    # unchanged). Weights --init or a checkpoint loads replace either.
    skip_start: str = "map"

    def __post_init__(self):
        if self.skip_start not in ("map", "zero"):
            raise ValueError(f"train.skip_start must be 'map' or 'zero', not {self.skip_start!r}")
        if self.decoder_cache and (not self.train_only or {"encoder", "decoder"} & set(self.train_only)):
            raise ValueError(
                "train.decoder_cache needs a frozen encoder and decoder: train.train_only must name only "
                f"post-net parts (e.g. [postnet, linear_proj]), not {list(self.train_only)}"
            )

    def feedback_at(self, step: int) -> float:
        """The scheduled-sampling probability for training step ``step`` (0-based)."""
        if self.feedback_ramp_steps <= 0:
            return self.feedback
        return self.feedback * min(1.0, step / self.feedback_ramp_steps)


@dataclass(frozen=True)
class TTSConfig:
    features: FeatureConfig = TTS_FEATURES
    scale: SpectrogramScale = field(default_factory=SpectrogramScale)
    griffin_lim: GriffinLimConfig = field(default_factory=GriffinLimConfig)
    text: TextConfig = field(default_factory=TextConfig)
    model: TacotronConfig = field(default_factory=TacotronConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def build_model(cfg: TTSConfig) -> Tacotron:
    """A Tacotron whose symbol, mel and linear sizes come from the text front end and the features."""
    model_cfg = replace(
        cfg.model, n_symbols=len(SYMBOLS), n_mels=cfg.features.n_mels, n_linear=cfg.features.n_freqs
    )
    model = Tacotron(model_cfg)
    if model_cfg.postnet_skip:  # the post-net's correction starts at zero, the skip path at train.skip_start
        with torch.no_grad():
            model.linear_proj.weight.zero_()
            model.linear_proj.bias.zero_()
            if cfg.train.skip_start == "map":
                weight, bias = mel_to_linear_map(cfg.features, cfg.scale)
                model.linear_skip.weight.copy_(weight.T)
                model.linear_skip.bias.copy_(bias)
            else:
                model.linear_skip.weight.zero_()
                model.linear_skip.bias.zero_()
    return model


def model_metadata(cfg: TTSConfig, model: Tacotron) -> dict:
    """Everything besides the weights that rebuilds ``model`` and its front end and vocoder settings."""
    return {
        "config": to_dict(cfg),
        "model_config": to_dict(model.cfg),
        "feature_config": to_dict(cfg.features),
        "text_config": to_dict(cfg.text),
        "scale": to_dict(cfg.scale),
        "griffin_lim": to_dict(cfg.griffin_lim),
        "symbols": list(SYMBOLS),
    }


# --- data -----------------------------------------------------------------------------------------


class TTSDataset(torch.utils.data.Dataset):
    """Utterances with their symbol ids (computed once, phonemisation batched) and waves loaded on access.

    ``dataset[i]`` is ``{"id": str, "ids": (N,) int64, "wave": (samples,) float32}``. Utterances whose
    text has nothing pronounceable are left out (logged).
    """

    def __init__(
        self, manifest: str | os.PathLike, records: list[Utterance], *, sample_rate: int, text_cfg: TextConfig
    ):
        kept, texts = [], []
        for record in records:
            try:
                texts.append(normalize_text(record.text))
                kept.append(record)
            except ValueError as err:
                log.warning("%s: left out: %s", record.id, err)
        self.records = kept
        self.paths = [resolve_audio(manifest, r) for r in kept]
        self.ids = [torch.tensor(ids) for ids in texts_to_ids(texts, text_cfg, normalized=True)]
        self.sample_rate = sample_rate

    @property
    def durations(self) -> list[float]:
        return [r.duration for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        wave, _ = load(self.paths[index], self.sample_rate)
        return {"id": self.records[index].id, "ids": self.ids[index], "wave": wave}


class collate_tts:  # noqa: N801 (used like a function; a class so that DataLoader workers can pickle it)
    """Pad symbol ids and waves, and compute the normalised mel and linear targets (in the worker).

    Returns ``{"ids": (B, N) int64, "text_lengths": (B,), "mels": (B, T, n_mels), "linears":
    (B, T, n_freqs), "mel_lengths": (B,) frames, "utt_ids": [str]}``.
    """

    def __init__(self, features: FeatureConfig, scale: SpectrogramScale):
        self.targets = TargetExtractor(features, scale)

    def __call__(self, items: list[dict]) -> dict:
        waves = pad_sequence([it["wave"] for it in items], batch_first=True)
        wave_lengths = torch.tensor([len(it["wave"]) for it in items])
        with torch.no_grad():
            mels, linears, mel_lengths = self.targets(waves, wave_lengths)
        return {
            "ids": pad_sequence([it["ids"] for it in items], batch_first=True, padding_value=PAD_ID),
            "text_lengths": torch.tensor([len(it["ids"]) for it in items]),
            "mels": mels,
            "linears": linears,
            "mel_lengths": mel_lengths,
            "utt_ids": [it["id"] for it in items],
        }


def build_loader(
    manifest: Path, cfg: TTSConfig, *, rank: int, world: int, train: bool, limit: int | None = None
):
    """Length-bucketed batches of a manifest (training: utterances over ``max_duration`` left out)."""
    records = read_manifest(manifest)
    if train:
        records = [r for r in records if r.duration <= cfg.train.max_duration]
    if limit is not None and len(records) > limit:
        records = records[:: math.ceil(len(records) / limit)]
    dataset = TTSDataset(manifest, records, sample_rate=cfg.features.sample_rate, text_cfg=cfg.text)
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
        collate_fn=collate_tts(cfg.features, cfg.scale),
        num_workers=cfg.train.num_workers if train else 0,
        # Its own generator: a DataLoader draws a seed from torch's global RNG at every epoch start,
        # which would make a resumed run's pre-net dropout masks differ from an uninterrupted run's.
        generator=torch.Generator().manual_seed(cfg.train.seed),
    )
    return loader, sampler


class DecoderCache:
    """A frozen decoder's outputs per utterance, kept from the first epoch (``train.decoder_cache``).

    A post-net stage spends most of each step in the autoregressive decoder, whose weights do not
    change. Its outputs for an utterance (with that first pass's pre-net dropout and scheduled-sampling
    draws) are kept here, on the CPU, and a batch whose utterances are all kept runs only the post-net.
    For 2 h of speech that is ~0.2 GB of fp32 mel frames (2 h x 86 frames/s x 80 bins) plus fp16
    alignments; a resumed run fills it again. In the stage-12 run the first epoch took ~1.7 s/step and the
    cached steps ~0.6 s.
    """

    def __init__(self, r: int):
        self.r = r
        self.items: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def __contains__(self, utt_ids: list[str]) -> bool:
        return all(u in self.items for u in utt_ids)

    def store(self, utt_ids: list[str], out: TacotronOutput, mel_lengths, text_lengths) -> None:
        steps = (-(-mel_lengths // self.r)).tolist()
        for b, utt in enumerate(utt_ids):
            n, k = steps[b], int(text_lengths[b])
            self.items[utt] = (
                out.mel[b, : n * self.r].detach().cpu(),
                out.stop_logits[b, :n].detach().cpu(),
                out.alignments[b, :n, :k].detach().to("cpu", torch.float16),
            )

    def output(self, model: Tacotron, utt_ids: list[str], mel_lengths, device) -> TacotronOutput:
        """The kept decoder outputs of a batch, padded, with a fresh post-net pass on them."""
        mel, stop, attn = zip(*(self.items[u] for u in utt_ids), strict=True)
        mel = pad_sequence(mel, batch_first=True).to(device)
        width = max(a.shape[1] for a in attn)
        attn = pad_sequence([F.pad(a.float(), (0, width - a.shape[1])) for a in attn], batch_first=True)
        linear = model.postprocess(mel, mel_lengths.clamp(max=mel.shape[1]))
        return TacotronOutput(
            mel=mel,
            linear=linear,
            stop_logits=pad_sequence(stop, batch_first=True).to(device),
            alignments=attn.to(device),
        )


def _losses(
    model,
    batch: dict,
    cfg: TTSConfig,
    device: torch.device,
    *,
    feedback: float = 0.0,
    cache: DecoderCache | None = None,
) -> dict[str, torch.Tensor]:
    ids, text_lengths = batch["ids"].to(device), batch["text_lengths"].to(device)
    mels, linears, mel_lengths = (
        batch["mels"].to(device),
        batch["linears"].to(device),
        batch["mel_lengths"].to(device),
    )
    if cache is not None and batch["utt_ids"] in cache:
        out = cache.output(model, batch["utt_ids"], mel_lengths, device)
    else:
        out = model(ids, text_lengths, mels, mel_lengths, feedback=feedback)
        if cache is not None:
            cache.store(batch["utt_ids"], out, mel_lengths, text_lengths)
    return tacotron_loss(
        out,
        mels,
        linears,
        mel_lengths,
        text_lengths,
        r=cfg.model.r,
        stop_pos_weight=cfg.train.stop_pos_weight,
        guided_weight=cfg.train.guided_attention_weight,
        guided_sigma=cfg.train.guided_attention_sigma,
        priority_bins=priority_bins(cfg),
        delta_weight=cfg.train.mel_delta_weight,
        linear_delta_weight=cfg.train.linear_delta_weight,
    )


def priority_bins(cfg: TTSConfig) -> int:
    """How many linear-spectrogram bins lie below ``train.priority_freq`` (0 when it is off)."""
    if cfg.train.priority_freq <= 0:
        return 0
    bins = cfg.features.n_freqs
    return min(bins, int(cfg.train.priority_freq / (cfg.features.sample_rate / 2) * bins))


@torch.no_grad()
def evaluate(
    model: Tacotron, loader, cfg: TTSConfig, device: torch.device, *, step: int, exp_dir: Path, plot: bool
) -> dict[str, float]:
    """Teacher-forced dev losses, and free-running synthesis of the first ``dev_samples`` dev sentences:
    their attention scores, and (``plot``) alignment/mel PNGs and a Griffin-Lim wav under ``exp_dir/samples``.

    Random state is forked, so an evaluation never changes the course of training.
    """
    model.eval()
    totals: dict[str, float] = {}
    batches = 0
    scores = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        for batch in loader:
            for key, value in _losses(model, batch, cfg, device).items():
                totals[key] = totals.get(key, 0.0) + value.item()
            batches += 1
        dataset = loader.dataset
        generator = torch.Generator().manual_seed(cfg.train.seed)
        for index in range(min(cfg.train.dev_samples, len(dataset))):
            ids = dataset.ids[index].to(device)
            # An untrained decoder may never stop: allow 1.5 times the recording's length.
            frames = dataset.records[index].duration * cfg.features.sample_rate / cfg.features.hop_length
            result = model.inference(
                ids, generator=generator, max_decoder_steps=int(1.5 * frames / cfg.model.r) + 10
            )
            steps = int(result.lengths[0]) // cfg.model.r
            attn = result.alignments[0, :steps]
            scores.append(
                {**alignment_scores(attn, text_length=len(ids)), "stopped": float(result.stopped[0])}
            )
            if plot and index == 0:
                stem = exp_dir / "samples" / f"step-{step:08d}"
                plot_alignment(
                    attn, f"{stem}-alignment.png", title=f"step {step}: {dataset.records[index].id}"
                )
                frames = int(result.lengths[0])
                plot_spectrogram(
                    result.mel[0, :frames],
                    cfg.features,
                    "logmel",
                    f"{stem}-mel.png",
                    title=f"step {step}: predicted mel (normalised dB)",
                )
                wave, wave_lengths = linear_to_wave(
                    result.linear[:1].cpu(),
                    cfg.features,
                    cfg.scale,
                    cfg.griffin_lim,
                    lengths=result.lengths[:1].cpu(),
                    generator=torch.Generator().manual_seed(0),
                )
                save(f"{stem}.wav", wave[0, : int(wave_lengths[0])], cfg.features.sample_rate)
    set_train_mode(model, cfg.train.train_only)
    out = {k: v / max(1, batches) for k, v in totals.items()}
    out.update({f"attention_{k}" if k != "stopped" else k: v for k, v in mean_scores(scores).items()})
    return out


# --- training -------------------------------------------------------------------------------------


def set_train_mode(model: Tacotron, train_only: tuple[str, ...] = ()) -> None:
    """``model.train()``, but the parts outside ``train_only`` (when given) stay in eval mode, so their
    batch-norm statistics and encoder pre-net dropout stay as trained."""
    model.train()
    if train_only:
        for name, child in model.named_children():
            if name not in train_only:
                child.eval()


def freeze_except(model: Tacotron, train_only: tuple[str, ...]) -> list[torch.nn.Parameter]:
    """Freeze every parameter outside the named top-level parts (all trainable when ``train_only`` is
    empty); returns the trainable ones."""
    parts = dict(model.named_children())
    unknown = [name for name in train_only if name not in parts]
    if unknown:
        raise ValueError(f"train.train_only: no part named {unknown} (the model has {sorted(parts)})")
    for name, child in parts.items():
        child.requires_grad_(not train_only or name in train_only)
    return [p for p in model.parameters() if p.requires_grad]


def train(cfg: TTSConfig, args: argparse.Namespace) -> Path:
    """Train (or resume) in ``args.exp_dir``. Returns the experiment folder."""
    device, rank, world, exp_dir, main_proc = start_run(
        cfg, args, num_workers=cfg.train.num_workers, seed=cfg.train.seed
    )

    model = build_model(cfg).to(device)
    log.info(
        "Tacotron: %.2fM parameters, r=%d, %s attention, %s input",
        sum(p.numel() for p in model.parameters()) / 1e6,
        cfg.model.r,
        cfg.model.attention,
        "phoneme" if cfg.text.phonemes else "letter",
    )
    train_loader, sampler = build_loader(Path(args.train), cfg, rank=rank, world=world, train=True)
    dev_loader = None
    if args.dev and main_proc:
        dev_loader, _ = build_loader(
            Path(args.dev), cfg, rank=0, world=1, train=False, limit=cfg.train.dev_max_utterances
        )

    trainable = freeze_except(model, cfg.train.train_only)
    if cfg.train.train_only:
        log.info(
            "training only %s: %.2fM parameters",
            ", ".join(cfg.train.train_only),
            sum(p.numel() for p in trainable) / 1e6,
        )
    optimizer = torch.optim.AdamW(
        trainable,
        lr=cfg.train.peak_lr,
        betas=(0.9, 0.999),
        eps=1e-6,
        weight_decay=cfg.train.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_decay(s, warmup=cfg.train.warmup_steps, total=cfg.train.total_steps)
    )
    checkpoints = CheckpointManager(exp_dir, keep=cfg.train.keep_checkpoints)
    step, train_seconds = 0, 0.0
    latest = checkpoints.latest()
    if latest is not None:
        state = CheckpointManager.load(latest, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        torch.set_rng_state(state["rng"])
        step = state["step"]
        train_seconds = state.get("train_seconds", 0.0)
        log.info("resumed from %s at step %d", latest, step)
    elif args.init:
        # A skip path --init does not load keeps build_model's start; the map beside a loaded post-net is wrong.
        map_skip = (
            cfg.model.postnet_skip and "linear_skip" in cfg.train.init_skip and cfg.train.skip_start == "map"
        )
        if map_skip and "linear_proj" not in cfg.train.init_skip:
            raise ValueError(
                f"--init {args.init}: its trained post-net would be loaded beside a skip path started at the "
                "mel -> linear map, which adds the map to its whole output; set train.skip_start=zero, or "
                "list postnet and linear_proj in train.init_skip for a fresh post-net"
            )
        load_init_weights(model, args.init, skip=cfg.train.init_skip)

    ddp_model = DistributedDataParallel(model) if world > 1 else model
    cache = None
    if cfg.train.decoder_cache:
        if world > 1:
            raise ValueError("train.decoder_cache runs on one process only (it bypasses DDP's forward)")
        cache = DecoderCache(cfg.model.r)
    use_amp = cfg.train.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    logger = TrainLogger(exp_dir, enabled=main_proc)
    batches_done = sampler.state_dict()["batches_done"]

    def snapshot() -> dict:
        return {
            **model_metadata(cfg, model),
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(batches_done=batches_done),
            "rng": torch.get_rng_state(),
            "step": step,
            "train_seconds": train_seconds + time.time() - t_start,  # wall time over all resumes
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
        disable=not main_proc or not args.progress,
        dynamic_ncols=True,
    )
    set_train_mode(model, cfg.train.train_only)
    t_start, audio_seconds, steps_this_run = time.time(), 0.0, 0
    while step < last_step:
        # The loader reads ahead, so count the batches actually trained on for the resume point.
        batches_done = sampler.state_dict()["batches_done"]
        for batch in train_loader:
            feedback = cfg.train.feedback_at(step)  # step is still this batch's 0-based index
            with torch.autocast(device.type, enabled=use_amp):
                losses = _losses(ddp_model, batch, cfg, device, feedback=feedback, cache=cache)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["loss"]).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            step += 1
            steps_this_run += 1
            batches_done += 1
            audio_seconds += (
                float(batch["mel_lengths"].sum()) * cfg.features.hop_length / cfg.features.sample_rate
            )
            progress.update(1)
            progress.set_postfix(loss=f"{losses['loss'].item():.3f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
            if step % cfg.train.log_every == 0:
                for key, value in losses.items():
                    logger.scalar(f"train/{key}", value.item(), step)
                logger.scalar("train/grad_norm", float(grad_norm), step)
                logger.scalar("train/lr", scheduler.get_last_lr()[0], step)
                if cfg.train.feedback > 0:
                    logger.scalar("train/feedback", feedback, step)
                logger.scalar("train/audio_x_realtime", audio_seconds / (time.time() - t_start), step)
                logger.scalar("train/seconds_per_step", (time.time() - t_start) / steps_this_run, step)
            if (
                main_proc
                and dev_loader is not None
                and (step % cfg.train.eval_every == 0 or step == cfg.train.total_steps)
            ):
                scores = evaluate(model, dev_loader, cfg, device, step=step, exp_dir=exp_dir, plot=True)
                for key, value in scores.items():
                    logger.scalar(f"dev/{key}", value, step)
                logger.plot(
                    [
                        "train/loss",
                        "dev/loss",
                        "dev/mel",
                        "dev/linear",
                        "dev/guided",
                        "dev/stopped",
                        "dev/attention_monotonic",
                        "dev/attention_diagonality",
                    ]
                )
                log.info(
                    "step %d: dev loss %.4f (mel %.4f, linear %.4f), attention monotonic %.2f diagonal %.2f",
                    step,
                    scores["loss"],
                    scores["mel"],
                    scores["linear"],
                    scores.get("attention_monotonic", math.nan),
                    scores.get("attention_diagonality", math.nan),
                )
            if main_proc and (step % cfg.train.checkpoint_every == 0 or step == last_step):
                checkpoints.save(snapshot(), step)
            if step >= last_step:
                break
        else:
            sampler.set_epoch(sampler.epoch + 1)
    progress.close()
    if main_proc and step >= cfg.train.total_steps:
        finalize(exp_dir, checkpoints, cfg)
    logger.close()
    return exp_dir


def finalize(exp_dir: Path, checkpoints: CheckpointManager, cfg: TTSConfig) -> None:
    """Write ``final.pt``: the average of the last ``average_last`` step checkpoints."""
    write_final(
        exp_dir, checkpoints, cfg.train.average_last, drop=("optimizer", "scheduler", "sampler", "rng")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tts.train", description=__doc__.split("\n\n")[0])
    add_trainer_arguments(
        parser,
        config_help="YAML mapping onto TTSConfig",
        exp_help="checkpoints, logs, plots and samples go here",
        train_help="training manifest (JSON lines)",
        dev_help="dev manifest for the dev loss and sample synthesis",
        init=True,
        stoppable=True,
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = load_config(TTSConfig, args.config, args.set)
    train(cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
