"""wav2vec 2.0 CTC fine-tuning: a ``transformers.Wav2Vec2ForCTC`` on our character tokenizer.

    python -m asr.wav2vec2 finetune --config configs/asr/wav2vec2_small.yaml --exp-dir exp/w2v_ft \
        --train train_1h.jsonl --dev dev.jsonl --tokenizer tokenizer.json --init exp/w2v_pt/final
    python -m asr.wav2vec2 export --model exp/w2v_ft/final --out DIR --lm lm.arpa --decoder decoder.json

``--init`` is a local folder in Hugging Face format (e.g. what ``asr.wav2vec2_pretrain`` writes), a hub
id that the Hugging Face cache already holds (``local_files_only``: the network is never tried), or
``random`` for a randomly initialised model of the config's ``encoder`` size. Rerunning the same command
resumes from the newest checkpoint; ``exp-dir/final/`` is written last, atomically.

A model folder is Hugging Face format plus one file of ours, so ``Wav2Vec2ForCTC.from_pretrained`` and
``Wav2Vec2Processor.from_pretrained`` read it, and ``glottis transcribe --model DIR`` recognises it (a model
with one of our front ends, ``encoder.front_end: logmel`` or ``fbank``, or our LSTM head, ``head.kind: lstm``,
loads through ``load_pretrained`` instead)::

    model_dir/
      config.json, model.safetensors          Wav2Vec2ForCTC (vocab = our tokenizer, blank = pad id 0)
      vocab.json, tokenizer_config.json, preprocessor_config.json, ...   Wav2Vec2Processor
      glottis.json     {"format": "glottis-wav2vec2-1", "tokenizer", "sample_rate", "step", "train_seconds", ...}
      decoder.json, lm.arpa.gz                optional, as in ``asr.bundle``

Decoding uses our decoders (greedy, prefix beam, LM beam search) on the model's CTC log-probs. Label ids
are turned back into text with our tokenizer (``decode_labels``), which never merges repeated letters;
HF's CTC tokenizer groups repeats by default, which would turn "hello" into "helo" in references.
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
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import safetensors.torch
import torch
from torch import nn
from tqdm import tqdm
from transformers import (
    Wav2Vec2Config,
    Wav2Vec2CTCTokenizer,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2ForCTC,
    Wav2Vec2PreTrainedModel,
    Wav2Vec2Processor,
)
from transformers.utils import logging as hf_logging

from asr.augment import AugmentConfig, WaveAugment
from asr.bundle import WAV2VEC2_FORMAT, LoadedModel, copy_lm, folder_lm
from asr.model import ConvBlock, run_lstm
from asr.tokenizer import Tokenizer, load_tokenizer
from audio.atomic import write_json
from audio.augment import spec_augment
from audio.config import load_config, save_config, to_dict
from audio.datasets import BucketBatchSampler, UtteranceDataset, collate_waves
from audio.features import FeatureConfig, FeatureExtractor
from audio.manifest import Utterance, read_manifest
from audio.stats import FeatureStats
from audio.training import (
    CheckpointManager,
    TrainLogger,
    average_state_dicts,
    choose_device,
    set_threads,
    warmup_decay,
)

log = logging.getLogger("asr.wav2vec2")

__all__ = [
    "EncoderConfig",
    "MaskingConfig",
    "FinetuneConfig",
    "HeadConfig",
    "PretrainConfig",
    "Wav2Vec2ExpConfig",
    "hf_config",
    "LogMelFrontEnd",
    "FbankFrontEnd",
    "FbankBranch",
    "LSTMHead",
    "attach_modules",
    "load_pretrained",
    "normalize_waves",
    "Wav2Vec2Recognizer",
    "build_processor",
    "decode_labels",
    "fbank_spec",
    "init_ctc_model",
    "save_model_dir",
    "load_wav2vec2",
    "finetune",
]


@dataclass(frozen=True)
class EncoderConfig:
    """Size of a model built from scratch (pretraining and ``--init random``); the keys are
    ``transformers.Wav2Vec2Config`` arguments. A model loaded from a checkpoint keeps its own size."""

    hidden_size: int = 256
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    conv_dim: tuple[int, ...] = (128, 128, 128, 128, 128, 128, 128)
    conv_stride: tuple[int, ...] = (5, 2, 2, 2, 2, 2, 2)  # product: samples per output frame (320 = 20 ms)
    conv_kernel: tuple[int, ...] = (10, 3, 3, 3, 3, 2, 2)
    num_conv_pos_embeddings: int = 64
    num_conv_pos_embedding_groups: int = 16
    # Layer norm in the conv encoder (not group norm over time) lets padded batches use an attention mask.
    feat_extract_norm: str = "layer"
    do_stable_layer_norm: bool = True
    num_codevector_groups: int = 2
    num_codevectors_per_group: int = 64
    codevector_dim: int = 128
    proj_codevector_dim: int = 128
    # "conv": wav2vec 2.0's conv feature encoder on the waveform. "logmel": ``LogMelFrontEnd`` in its
    # place (log-mel frames, no conv stack to learn or run), at the same frame rate. "fbank":
    # ``FbankFrontEnd``, the Conv1D+BiLSTM's own front end (10 ms log-mels under global statistics, two
    # stride-2 convolutions; 40 ms frames, so a total stride of 640), pretrained with the transformer.
    front_end: str = "conv"
    n_mels: int = 80  # "logmel" and "fbank"
    # "logmel" only: mel frames stacked into one encoder frame (the mel hop is the total stride / this).
    # 2 with the usual 320-sample stride: 10 ms mels, 20 ms frames; 4 with a 640-sample stride: 40 ms.
    mel_stack: int = 2

    def __post_init__(self):
        if self.front_end not in ("conv", "logmel", "fbank"):
            raise ValueError(f"encoder.front_end must be 'conv', 'logmel' or 'fbank', not {self.front_end!r}")


@dataclass(frozen=True)
class MaskingConfig:
    """wav2vec-style masking of the encoder input during fine-tuning (SpecAugment on latent frames):
    time spans replaced by the learnt mask embedding, channel spans zeroed."""

    mask_time_prob: float = 0.05  # share of frames that start a masked span
    mask_time_length: int = 10  # frames (20 ms each)
    mask_time_min_masks: int = 2
    mask_feature_prob: float = 0.0  # share of channels that start a masked span
    mask_feature_length: int = 10  # channels
    mask_feature_min_masks: int = 0


@dataclass(frozen=True)
class FinetuneConfig:
    max_seconds: float = 160.0  # padded audio per batch, seconds
    max_batch_size: int = 32
    max_duration: float = 16.0  # longer training utterances are left out, seconds
    head_lr: float = 1e-3  # the CTC output layer
    body_lr: float = 1e-4  # everything below it
    weight_decay: float = 0.01
    warmup_steps: int = 100
    total_steps: int = 1000
    freeze_body_steps: int = 0  # only the head trains for this many steps
    # The conv feature encoder trains from this step on; -1 keeps it frozen for the whole run.
    freeze_feature_encoder_steps: int = -1
    grad_clip: float = 5.0
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.0
    final_dropout: float = 0.0
    layerdrop: float = 0.05
    checkpoint_every: int = 100
    eval_every: int = 200
    keep_checkpoints: int = 5
    average_last: int = 3
    num_workers: int = 0
    seed: int = 0
    dev_max_utterances: int = 300


@dataclass(frozen=True)
class HeadConfig:
    """What maps the transformer's frames onto the CTC outputs. ``linear``: wav2vec 2.0's own head (one
    layer; the folder loads in plain ``transformers``). ``lstm``: a BiLSTM and then that layer
    (``LSTMHead``), the downstream model of the SUPERB benchmark's recognition task, trained with the
    body; its folder loads through ``load_pretrained`` (``glottis transcribe``), not in plain HF.
    ``mix_layers`` (``lstm`` only): the BiLSTM reads a learnt softmax-weighted sum of every hidden state,
    the transformer's input included, each layer-normed first (SUPERB's featuriser), not the last one.
    ``fbank`` (``lstm`` only): the BiLSTM also reads ``FbankBranch``, the Conv1D+BiLSTM's own front end
    (10 ms log-mels under global statistics, two strided convolutions) on the unmasked waveform, beside
    the transformer's frames: a fusion of filterbank and self-supervised features (ESPnet's
    ``FusedFrontends``). Fine-tuning then needs ``--feature-stats``.
    ``fbank_from_body`` (with ``fbank`` and ``encoder.front_end: fbank``): the branch starts as a copy of the
    body's own ``FbankFrontEnd`` (pretrained with the transformer, when the body was) and reads the same
    per-utterance normalised waveform. The head then has an unmasked path to the pretrained front end, with
    SpecAugment and dropout, while the transformer fine-tunes its own copy under time masking."""

    kind: str = "linear"
    lstm_hidden: int = 256  # per direction
    lstm_layers: int = 1
    lstm_dropout: float = 0.1  # between LSTM layers and before the output layer
    mix_layers: bool = False
    fbank: bool = False
    fbank_channels: int = 256  # both convolutions' width (conv_bilstm.yaml's)
    fbank_from_body: bool = False

    def __post_init__(self):
        if self.kind not in ("linear", "lstm"):
            raise ValueError(f"head.kind must be 'linear' or 'lstm', not {self.kind!r}")
        if self.mix_layers and self.kind != "lstm":
            raise ValueError("head.mix_layers needs head.kind 'lstm'")
        if self.fbank and self.kind != "lstm":
            raise ValueError("head.fbank needs head.kind 'lstm'")
        if self.fbank_from_body and not self.fbank:
            raise ValueError("head.fbank_from_body needs head.fbank")


@dataclass(frozen=True)
class PretrainConfig:
    crop_seconds: float = 5.0  # each utterance is cut to a random window of at most this long
    max_seconds: float = 100.0  # padded (cropped) audio per batch, seconds
    max_batch_size: int = 32
    peak_lr: float = 5e-4
    weight_decay: float = 0.01
    warmup_steps: int = 200
    total_steps: int = 2000
    grad_clip: float = 5.0
    mask_time_prob: float = 0.65  # share of frames that start a masked span (wav2vec 2.0: 0.65)
    mask_time_length: int = 10  # frames
    num_negatives: int = 50  # distractors per masked frame, from the same utterance
    contrastive_logits_temperature: float = 0.1
    diversity_loss_weight: float = 0.1
    gumbel_start: float = 2.0
    gumbel_end: float = 0.5
    gumbel_anneal_fraction: float = 0.7  # geometric decay from start to end over this share of the steps
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.0
    feat_proj_dropout: float = 0.1
    feat_quantizer_dropout: float = 0.0
    layerdrop: float = 0.05
    checkpoint_every: int = 100
    eval_every: int = 250
    keep_checkpoints: int = 3
    num_workers: int = 0
    seed: int = 0
    dev_max_utterances: int = 100


@dataclass(frozen=True)
class Wav2Vec2ExpConfig:
    """One YAML for the whole wav2vec 2.0 recipe: pretraining reads ``encoder`` and ``pretrain``,
    fine-tuning reads ``encoder`` (random init only), ``masking``, ``finetune``, ``head`` and ``augment``."""

    sample_rate: int = 16000
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)


def hf_config(encoder: EncoderConfig, sample_rate: int = 16000, **overrides) -> Wav2Vec2Config:
    """A ``transformers.Wav2Vec2Config`` of ``encoder``'s size, with ``overrides`` applied. A log-mel
    or filterbank front end is recorded as the extra key ``glottis_front_end`` (see ``LogMelFrontEnd`` and
    ``FbankFrontEnd``)."""
    values = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(encoder).items()}
    front_end, n_mels, stack = values.pop("front_end"), values.pop("n_mels"), values.pop("mel_stack")
    if front_end == "logmel":
        values["glottis_front_end"] = {"kind": "logmel", "n_mels": n_mels, "sample_rate": sample_rate,
                                       "stack": stack}
    elif front_end == "fbank":  # conv_bilstm.yaml's log-mels; ``set_stats`` checks them against the statistics
        features = FeatureConfig(sample_rate=sample_rate, n_mels=n_mels, fmax=sample_rate / 2)
        values["glottis_front_end"] = {"kind": "fbank", "features": asdict(features)}
    return Wav2Vec2Config(**{**values, **overrides})


class FrozenByHF:
    """What ``Wav2Vec2Model.freeze_feature_encoder`` calls on a feature encoder, for our front ends that
    stand in for it: ``_freeze_parameters`` and HF's ``_requires_grad`` flag."""

    _requires_grad = True

    def _freeze_parameters(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)
        self._requires_grad = False


class LogMelFrontEnd(FrozenByHF, nn.Module):
    """A drop-in for wav2vec 2.0's conv feature encoder (``model.wav2vec2.feature_extractor``): log-mel
    frames every ``1/stack`` of an encoder frame (10 ms), ``stack`` of them stacked onto the encoder's
    frame rate (2 -> 20 ms, or 4 -> 40 ms with a 640-sample conv stride), a layer norm, and two per-frame
    linear layers onto ``conv_dim[-1]`` channels. ``(B, samples) -> (B, conv_dim[-1], frames)``, exactly
    as many frames as the conv encoder (HF computes masks and lengths from the conv config, which is
    kept). The mel window is ``receptive_field - (stack - 2) * hop`` (400 samples at 400/320 and 720/640), so
    each output frame spans ``receptive_field + hop`` samples (560 with the usual 400/320 framing), and
    padding a batch changes no valid frame, as with the conv encoder.

    The conv encoder is most of a small model's CPU time (it runs its first layer at 3.2 kHz) and has
    to learn a filterbank from scratch; this one starts from one. Everything downstream, including the
    quantiser that pretraining draws its targets from, is unchanged. The mel filterbank and window are
    buffers outside the state dict, so the checkpoint holds only the norm and the linear layers.
    """

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        spec = config.glottis_front_end
        # The conv stack's frames: (samples - field) // stride + 1, which its nested floors reduce to.
        self.field, self.stride = receptive_field(config), math.prod(config.conv_stride)
        self.stack = int(spec.get("stack", 2))  # models saved before the key existed stack pairs
        if self.stack < 2 or self.stride % self.stack:
            raise ValueError(f"log-mel front end: cannot stack {self.stack} mel frames into a stride of "
                             f"{self.stride} samples (needs a divisor of it, at least 2)")
        self.hop = self.stride // self.stack
        window = self.field - (self.stack - 2) * self.hop
        if window < self.hop:
            raise ValueError(f"log-mel front end: a {self.field}-sample receptive field leaves a {window}-"
                             f"sample mel window for {self.stack} stacked frames of {self.hop}")
        self.n_mels = int(spec["n_mels"])
        self.features = FeatureExtractor(FeatureConfig(sample_rate=int(spec["sample_rate"]), n_fft=window,
                                                       win_length=window, hop_length=self.hop, center=False,
                                                       n_mels=self.n_mels, log_floor=1e-8), "logmel")
        channels = config.conv_dim[-1]
        self.norm = nn.LayerNorm(self.stack * self.n_mels)
        self.proj1 = nn.Linear(self.stack * self.n_mels, channels)
        self.proj2 = nn.Linear(channels, channels)

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        frames = (input_values.shape[1] - self.field) // self.stride + 1
        # One mel hop of padding makes stack * frames mel frames whatever the length.
        feats, _ = self.features(nn.functional.pad(input_values.float(), (0, self.hop)))
        x = feats[:, : self.stack * frames].reshape(len(feats), frames, self.stack * self.n_mels)
        x = nn.functional.gelu(self.proj2(nn.functional.gelu(self.proj1(self.norm(x)))))
        return x.transpose(1, 2)


def trailing_zero_lengths(waves: torch.Tensor) -> torch.Tensor:
    """``(B, samples)`` -> ``(B,)``: each row's length up to its last non-zero sample (at least 1). HF calls
    the feature encoder with the waveform alone; ``normalize_waves`` zeroes every row past its length, so
    this recovers the lengths, and a lone utterance gets the same one as in a padded batch."""
    nonzero = waves != 0
    last = waves.shape[1] - nonzero.flip(1).int().argmax(dim=1)
    return torch.where(nonzero.any(dim=1), last, torch.ones_like(last))


def feature_differences(theirs: FeatureConfig, ours: FeatureConfig, name: str) -> str:
    """The fields where two feature configs differ, as ``"n_mels 40 (<name>: 80), ..."``; ``""`` if none."""
    a, b = asdict(theirs), asdict(ours)
    return ", ".join(f"{k} {a[k]} ({name}: {b[k]})" for k in b if a[k] != b[k])


class FbankBranch(nn.Module):
    """The Conv1D+BiLSTM's front end for ``LSTMHead`` (``head.fbank``): the raw waveform's 10 ms log-mels,
    normalised by the global statistics in ``feat_mean``/``feat_std`` (buffers, saved with the weights; set
    by ``set_stats`` from the recogniser's ``feature_stats.json``), SpecAugment in training, then two
    stride-2 ``asr.model`` conv blocks: ``(B, samples)`` -> ``(B, frames, channels)`` at 40 ms, cut or padded
    to the transformer's frame count. It sees the waveform before time masking, as the Conv1D+BiLSTM does."""

    def __init__(self, spec: dict, dropout: float):
        super().__init__()
        if "features" in spec:  # the FeatureConfig of the statistics (``fbank_spec``)
            self.feature_config = FeatureConfig(**spec["features"])
        else:  # folders written before 2026-12-03 name only the framing of conv_bilstm.yaml's features
            self.feature_config = FeatureConfig(n_fft=int(spec["n_fft"]), win_length=int(spec["n_fft"]),
                                                hop_length=int(spec["hop_length"]), n_mels=int(spec["n_mels"]),
                                                fmin=0.0, fmax=8000.0)
        self.features = FeatureExtractor(self.feature_config, "logmel")
        n_mels, channels = self.feature_config.n_mels, int(spec["channels"])
        self.register_buffer("feat_mean", torch.zeros(n_mels))
        self.register_buffer("feat_std", torch.ones(n_mels))
        self.convs = nn.ModuleList([ConvBlock(n_mels, channels, 5, 2, dropout),
                                    ConvBlock(channels, channels, 5, 2, dropout)])
        self.channels = channels
        # True: it reads the per-utterance normalised waveform, as ``FbankFrontEnd`` (``head.fbank_from_body``)
        self.normalized_input = bool(spec.get("normalized_input", False))

    name = "the fbank branch"  # whose statistics, in ``set_stats``'s errors

    def set_stats(self, stats: FeatureStats) -> None:
        if stats.dim != len(self.feat_mean):
            raise ValueError(f"feature stats have {stats.dim} bands, {self.name} {len(self.feat_mean)} mels")
        if stats.feature_config is not None:
            differ = feature_differences(FeatureConfig(**stats.feature_config), self.feature_config, self.name)
            if differ:
                raise ValueError(f"feature stats were taken with other features: {differ}")
        self.feat_mean.copy_(torch.tensor(stats.mean))
        self.feat_std.copy_(torch.tensor(stats.std).clamp(min=1e-5))

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, frames: int,
                augment_seed: int | None = None) -> torch.Tensor:
        with torch.autocast(waves.device.type, enabled=False):
            feats, feat_lengths = self.features(waves.float(), lengths)
        valid = torch.arange(feats.shape[1], device=feats.device)[None, :] < feat_lengths[:, None]
        feats = (feats - self.feat_mean) / self.feat_std * valid[:, :, None]
        if augment_seed is not None:
            feats = spec_augment(feats, feat_lengths, generator=augment_seed)
        x = feats.transpose(1, 2)
        for block in self.convs:
            x, feat_lengths = block(x, feat_lengths)
        x = x.transpose(1, 2)[:, :frames]
        return nn.functional.pad(x, (0, 0, 0, frames - x.shape[1]))


class FbankFrontEnd(FrozenByHF, FbankBranch):
    """A drop-in for wav2vec 2.0's conv feature encoder that is the Conv1D+BiLSTM's own front end:
    ``FbankBranch`` (10 ms log-mels under global statistics, two stride-2 conv blocks of ``conv_dim[-1]``
    channels, no dropout) inside the body, ``(B, samples) -> (B, channels, frames)`` at 40 ms, cut to the
    conv encoder's frame count (HF computes masks and lengths from the conv config, which needs a total
    stride of 4 mel hops, 640 samples). It pretrains with the transformer, so the recogniser's front end
    itself is learnt from unlabelled audio. The input is the per-utterance normalised waveform, so the
    statistics' mean is off by one level per utterance, which the convolutions' batch norm absorbs. HF
    passes no lengths; ``trailing_zero_lengths`` recovers them, so padding a batch changes no valid frame
    in eval mode. SpecAugment is left to the transformer's own masking."""

    name = "the fbank front end"

    def __init__(self, config: Wav2Vec2Config):
        super().__init__({"channels": config.conv_dim[-1], "features": config.glottis_front_end["features"]}, 0.0)
        self.field, self.stride = receptive_field(config), math.prod(config.conv_stride)
        hop = self.feature_config.hop_length
        if self.stride != 4 * hop:
            raise ValueError(f"fbank front end: two stride-2 convolutions over {hop}-sample mel hops need a "
                             f"total conv stride of {4 * hop}, not {self.stride}")

    def forward(self, input_values: torch.Tensor) -> torch.Tensor:
        frames = max(1, (input_values.shape[1] - self.field) // self.stride + 1)
        return super().forward(input_values, trailing_zero_lengths(input_values), frames).transpose(1, 2)


class LSTMHead(nn.Module):
    """A drop-in for ``Wav2Vec2ForCTC.lm_head``: a BiLSTM over the transformer's frames, then a linear
    layer onto the CTC outputs. ``(B, frames, hidden) -> (B, frames, vocab)``. Given ``lengths`` (what
    ``Wav2Vec2Recognizer`` passes) the padded frames are packed away at inference, so padding a batch
    changes no valid output; training runs over the padded batch, as ``ConvBiLSTM`` does. HF's own
    ``forward`` calls it without lengths, over every frame. Its size is the config's extra key
    ``glottis_head`` (``{"kind": "lstm", "hidden", "layers", "dropout", "mix_layers"}``).

    With ``mix_layers`` its input is ``mix`` of all ``num_hidden_layers + 1`` hidden states
    (``every_hidden_state``), weighted by ``layer_weights``, then ``lstm_forward``; HF's own ``forward``
    passes only the last one, so such a model runs through ``Wav2Vec2Recognizer`` and ``forward`` refuses.
    With ``fbank`` (a dict: ``FbankBranch``'s sizes) the BiLSTM reads the hidden states concatenated with
    ``fbank_branch``'s frames, which ``Wav2Vec2Recognizer`` computes from the waveform."""

    def __init__(self, config: Wav2Vec2Config):
        super().__init__()
        spec = config.glottis_head
        hidden, layers, dropout = int(spec["hidden"]), int(spec["layers"]), float(spec["dropout"])
        self.mix_layers = bool(spec.get("mix_layers", False))
        if self.mix_layers:  # zeros: an even mix to start with
            self.layer_weights = nn.Parameter(torch.zeros(config.num_hidden_layers + 1))
        self.fbank_branch = FbankBranch(spec["fbank"], dropout) if spec.get("fbank") else None
        inputs = config.hidden_size + (self.fbank_branch.channels if self.fbank_branch else 0)
        self.lstm = nn.LSTM(inputs, hidden, num_layers=layers, batch_first=True,
                            bidirectional=True, dropout=dropout if layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(2 * hidden, config.vocab_size)

    def mix(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """``num_hidden_layers + 1`` tensors ``(B, frames, hidden)`` -> their weighted sum, each layer-normed."""
        if len(hidden_states) != len(self.layer_weights):
            raise ValueError(f"the head mixes {len(self.layer_weights)} hidden states, got {len(hidden_states)}")
        stacked = torch.stack(hidden_states)  # (layers + 1, B, frames, hidden)
        stacked = nn.functional.layer_norm(stacked, stacked.shape[-1:])
        weights = self.layer_weights.softmax(0).to(stacked.dtype)
        return (weights[:, None, None, None] * stacked).sum(0)

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.mix_layers or self.fbank_branch is not None:  # HF's forward passes the last hidden state only
            raise TypeError("this LSTM head mixes every hidden state (every_hidden_state) or reads the "
                            "waveform's log-mels: run the model through asr.wav2vec2.Wav2Vec2Recognizer, not "
                            "HF's Wav2Vec2ForCTC.forward")
        return self.lstm_forward(hidden_states, lengths)

    def lstm_forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, frames, hidden)`` (the last or the mixed hidden states) -> ``(B, frames, vocab)`` logits."""
        return self.out(self.dropout(run_lstm(self.lstm, features, lengths, training=self.training)))


def every_hidden_state(wav2vec2: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> list[torch.Tensor]:
    """``num_hidden_layers + 1`` tensors ``(B, frames, hidden)``: the transformer's input (the projected,
    masked frames) and each of its layers' outputs. Recorded by hooks rather than read from HF's
    ``hidden_states``, which under LayerDrop leave a skipped layer out (and, all skipped, hold nothing): a
    skipped layer passes its input on, so that input stands in for its output. The last state is the last
    layer's output before a stable-layer-norm encoder's final layer norm (``mix`` layer-norms each state)."""
    recorded: dict[int, torch.Tensor] = {}

    def keep(index):
        def hook(_module, args, output):
            recorded[index] = args[0] if index < 0 else output
        return hook

    hooks = [wav2vec2.encoder.register_forward_hook(keep(-1))]  # args[0]: the encoder's input
    hooks += [layer.register_forward_hook(keep(i)) for i, layer in enumerate(wav2vec2.encoder.layers)]
    try:
        wav2vec2(x, attention_mask=mask)
    finally:
        for hook in hooks:
            hook.remove()
    states = [recorded[-1]]
    for i in range(len(wav2vec2.encoder.layers)):
        states.append(recorded.get(i, states[-1]))
    return states


def front_end_kind(config: Wav2Vec2Config) -> str:
    """``conv`` (HF's own feature encoder), ``logmel`` or ``fbank``."""
    return (getattr(config, "glottis_front_end", None) or {}).get("kind", "conv")


def uses_own_front_end(config: Wav2Vec2Config) -> bool:
    """Our own front end (log-mel or filterbank) in place of HF's conv feature encoder."""
    return front_end_kind(config) in ("logmel", "fbank")


def uses_lstm_head(config: Wav2Vec2Config) -> bool:
    return (getattr(config, "glottis_head", None) or {}).get("kind") == "lstm"


def attach_modules(model: Wav2Vec2PreTrainedModel) -> Wav2Vec2PreTrainedModel:
    """Put our modules in where the config asks for them: a ``LogMelFrontEnd`` or ``FbankFrontEnd`` in place
    of the conv encoder, and (on a CTC model) an ``LSTMHead`` in place of the linear head."""
    if uses_own_front_end(model.config):
        front_end = FbankFrontEnd if front_end_kind(model.config) == "fbank" else LogMelFrontEnd
        model.wav2vec2.feature_extractor = front_end(model.config)
    if hasattr(model, "lm_head") and uses_lstm_head(model.config):
        model.lm_head = LSTMHead(model.config)
    return model


def load_pretrained(cls: type[Wav2Vec2PreTrainedModel], path: str | os.PathLike, *, new_head: bool = False,
                    **overrides) -> Wav2Vec2PreTrainedModel:
    """``cls.from_pretrained(path, local_files_only=True, **overrides)``, also for models with our modules
    (a log-mel front end, an LSTM head), whose weights ``from_pretrained`` would drop: those are built by
    ``attach_modules`` and loaded here. With ``new_head``, weights of another head (a pretraining model's quantiser, a CTC head
    of another vocabulary) are left out and the new head starts at random (``ignore_mismatched_sizes``);
    without it, every weight of the model must be in the folder."""
    config = Wav2Vec2Config.from_pretrained(str(path), local_files_only=True)
    for key, value in overrides.items():
        setattr(config, key, value)
    if not (uses_own_front_end(config) or uses_lstm_head(config)):
        return cls.from_pretrained(str(path), config=config, local_files_only=True, ignore_mismatched_sizes=new_head)
    model = attach_modules(cls(config))
    saved = safetensors.torch.load_file(str(Path(path) / "model.safetensors"))
    own = model.state_dict()
    loadable = {k: v for k, v in saved.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if (k.startswith("wav2vec2.") or not new_head) and k not in loadable]
    if missing:
        raise ValueError(f"{path}: model.safetensors lacks {len(missing)} of the model's weights (or has "
                         f"them in another shape), e.g. {missing[0]}")
    model.load_state_dict(loadable, strict=False)
    return model


def fbank_spec(cfg: Wav2Vec2ExpConfig, stats: FeatureStats | None) -> dict | None:
    """``FbankBranch``'s sizes for ``head.fbank`` (else None): its log-mels are those ``stats`` were taken
    with (``audio.stats`` records them; older statistics files get ``FeatureConfig``'s defaults)."""
    if not cfg.head.fbank:
        return None
    if stats is None:
        raise ValueError("head.fbank: the log-mel branch needs --feature-stats (the Conv1D+BiLSTM "
                         "recogniser's feature_stats.json)")
    features = FeatureConfig(**(stats.feature_config or {"sample_rate": cfg.sample_rate}))
    if features.sample_rate != cfg.sample_rate:
        raise ValueError(f"--feature-stats were taken at {features.sample_rate} Hz, the model runs at "
                         f"{cfg.sample_rate} Hz")
    spec = {"channels": cfg.head.fbank_channels, "features": asdict(features)}
    if cfg.head.fbank_from_body:
        if cfg.encoder.front_end != "fbank":
            raise ValueError("head.fbank_from_body copies the body's fbank front end: it needs "
                             f"encoder.front_end 'fbank', not {cfg.encoder.front_end!r}")
        if cfg.head.fbank_channels != cfg.encoder.conv_dim[-1]:
            raise ValueError(f"head.fbank_from_body: head.fbank_channels ({cfg.head.fbank_channels}) must be "
                             f"the front end's width, encoder.conv_dim[-1] ({cfg.encoder.conv_dim[-1]})")
        spec["normalized_input"] = True
    return spec


def _ctc_overrides(cfg: Wav2Vec2ExpConfig, tokenizer: Tokenizer, fbank: dict | None = None) -> dict:
    """Config values a fine-tuned model takes from our config, whatever it was initialised from (and
    ``fbank``, the log-mel branch's sizes from ``fbank_spec``)."""
    f = cfg.finetune
    return {
        **asdict(cfg.masking),
        "vocab_size": tokenizer.vocab_size,
        "pad_token_id": tokenizer.blank_id,  # HF's CTC blank is the pad token
        "bos_token_id": None,
        "eos_token_id": None,
        "apply_spec_augment": True,
        "ctc_loss_reduction": "mean",
        "ctc_zero_infinity": True,
        "glottis_head": None if cfg.head.kind == "linear" else {
            "kind": cfg.head.kind, "hidden": cfg.head.lstm_hidden, "layers": cfg.head.lstm_layers,
            "dropout": cfg.head.lstm_dropout, "mix_layers": cfg.head.mix_layers, "fbank": fbank},
        **{k: getattr(f, k) for k in ("hidden_dropout", "attention_dropout", "activation_dropout",
                                      "feat_proj_dropout", "final_dropout", "layerdrop")},
    }


def receptive_field(config: Wav2Vec2Config) -> int:
    """Samples that one output frame of the conv feature encoder sees (400 for the usual encoder)."""
    field_ = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride, strict=True))):
        field_ = (field_ - 1) * stride + kernel
    return field_


def normalize_waves(waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero mean and unit variance per utterance over its valid samples, zeros past each length (as
    ``Wav2Vec2FeatureExtractor(do_normalize=True)``). ``(B, samples)``, ``(B,)`` -> ``(B, samples)``,
    and the ``(B, samples)`` bool mask of valid samples."""
    valid = torch.arange(waves.shape[1], device=waves.device)[None, :] < lengths[:, None]
    n = lengths.clamp(min=1)[:, None].to(waves.dtype)
    x = waves.float() * valid
    mean = x.sum(dim=1, keepdim=True) / n
    var = ((x - mean) ** 2 * valid).sum(dim=1, keepdim=True) / n
    return (x - mean) / torch.sqrt(var + 1e-7) * valid, valid


class Wav2Vec2Recognizer(nn.Module):
    """Waveform -> per-utterance normalisation -> ``Wav2Vec2ForCTC`` -> CTC log-probs, with the interface
    of ``asr.recognizer.Recognizer`` so that ``asr.evaluate`` and ``asr.transcribe`` use it unchanged.

    ``feature_config`` describes the conv encoder's framing: frames of ``receptive_field`` samples every
    ``total stride`` samples, not centred (so ``hop_length * subsampling`` samples per output frame).
    """

    subsampling = 1

    def __init__(self, model: Wav2Vec2ForCTC, sample_rate: int = 16000):
        super().__init__()
        self.model = model
        field_, hop = receptive_field(model.config), math.prod(model.config.conv_stride)
        self.feature_config = FeatureConfig(sample_rate=sample_rate, n_fft=field_, win_length=field_,
                                            hop_length=hop, center=False)
        # Group-normed encoders (e.g. wav2vec2-base) were trained on zero-padded batches without a mask.
        self.use_attention_mask = model.config.feat_extract_norm == "layer"

    @property
    def frame_shift(self) -> float:
        """Seconds per output frame."""
        return self.feature_config.hop_length / self.feature_config.sample_rate

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames out for ``lengths`` samples in (inputs shorter than one frame are padded to one)."""
        lengths = lengths.clamp(min=self.feature_config.n_fft)
        return self.model._get_feat_extract_output_lengths(lengths).long()

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """waves ``(B, samples)`` float at ``sample_rate``, lengths ``(B,)`` samples.

        Returns CTC log-probs ``(B, frames, vocab)`` (float32) and ``(B,)`` output lengths in frames.
        Training mode applies the config's time and channel masking.
        """
        if waves.shape[1] < self.feature_config.n_fft:
            waves = nn.functional.pad(waves, (0, self.feature_config.n_fft - waves.shape[1]))
        x, valid = normalize_waves(waves, lengths)
        mask = valid.long() if self.use_attention_mask else None
        head = self.model.lm_head
        if isinstance(head, LSTMHead):  # HF's forward, with the lengths the head packs by
            if head.mix_layers:
                hidden = self.model.dropout(head.mix(every_hidden_state(self.model.wav2vec2, x, mask)))
            else:
                hidden = self.model.dropout(self.model.wav2vec2(x, attention_mask=mask).last_hidden_state)
            if head.fbank_branch is not None:
                # The seed comes from numpy's global RNG, which fine-tuning seeds per step (``step_seed``).
                seed = int(np.random.randint(2**31)) if self.training else None
                # The raw waveform, as the Conv1D+BiLSTM's statistics were taken; or, for a copy of the
                # body's front end (``head.fbank_from_body``), the normalised one that front end reads.
                branch_input = x if head.fbank_branch.normalized_input else waves
                fbank = head.fbank_branch(branch_input, lengths, hidden.shape[1], seed)
                hidden = torch.cat([hidden, fbank.to(hidden.dtype)], dim=-1)
            out_lengths = self.output_lengths(lengths).clamp(max=hidden.shape[1])
            logits = head.lstm_forward(hidden, out_lengths)
        else:
            logits = self.model(x, attention_mask=mask).logits  # (B, frames, vocab)
            out_lengths = self.output_lengths(lengths).clamp(max=logits.shape[1])
        return logits.float().log_softmax(dim=-1), out_lengths


def build_processor(tokenizer: Tokenizer, *, sample_rate: int, attention_mask: bool) -> Wav2Vec2Processor:
    """An HF processor whose vocabulary is ``tokenizer``'s (``<blk>`` = pad = CTC blank, ``|`` between
    words), for anyone loading the model folder with ``transformers`` alone."""
    vocab = {token: i for i, token in enumerate(tokenizer.tokens)}
    with tempfile.TemporaryDirectory(prefix="glottis-vocab-") as tmp:
        vocab_file = Path(tmp) / "vocab.json"
        vocab_file.write_text(json.dumps(vocab), encoding="utf-8")
        # <unk> names the blank: the HF tokenizer must not grow a 30th id the model has no output for.
        hf_tokenizer = Wav2Vec2CTCTokenizer(str(vocab_file), pad_token=tokenizer.tokens[tokenizer.blank_id],
                                            unk_token=tokenizer.tokens[tokenizer.blank_id], bos_token=None,
                                            eos_token=None, word_delimiter_token="|")
    extractor = Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=sample_rate, padding_value=0.0,
                                         do_normalize=True, return_attention_mask=attention_mask)
    return Wav2Vec2Processor(feature_extractor=extractor, tokenizer=hf_tokenizer)


def decode_labels(labels: torch.Tensor | Sequence[Sequence[int]], tokenizer: Tokenizer,
                  ignore_index: int = -100) -> list[str]:
    """Text of padded label rows ``(B, L)`` (``ignore_index`` = padding). Repeated letters stay: a label
    sequence is a spelling, not a CTC path, so nothing is collapsed."""
    rows = labels.tolist() if isinstance(labels, torch.Tensor) else labels
    return [tokenizer.decode([i for i in row if i != ignore_index]) for row in rows]


def init_ctc_model(init: str, cfg: Wav2Vec2ExpConfig, tokenizer: Tokenizer,
                   feature_stats: FeatureStats | None = None) -> Wav2Vec2ForCTC:
    """A CTC model from ``init``: ``random``, a local HF-format folder (a pretraining or a CTC checkpoint),
    or a hub id already in the HF cache. The CTC head is new whenever the vocabularies differ. With
    ``head.fbank`` the log-mel branch computes the features of ``feature_stats`` and is normalised by them."""
    overrides = _ctc_overrides(cfg, tokenizer, fbank_spec(cfg, feature_stats))
    if init == "random":
        model = attach_modules(Wav2Vec2ForCTC(hf_config(cfg.encoder, cfg.sample_rate, **overrides)))
    else:
        try:
            model = load_pretrained(Wav2Vec2ForCTC, init, new_head=True, **overrides)
        except OSError as err:
            raise FileNotFoundError(f"--init {init}: not a local model folder, and not in the Hugging Face "
                                    f"cache (the network is never used): {err}") from None
        if model.config.model_type != "wav2vec2":
            raise ValueError(f"--init {init}: a {model.config.model_type} model, not wav2vec2")
    if init == "random" and isinstance(model.wav2vec2.feature_extractor, FbankFrontEnd):
        set_front_end_stats(model, feature_stats)  # a pretrained one keeps the statistics it learnt with
    branch = getattr(model.lm_head, "fbank_branch", None)
    if branch is not None and cfg.head.fbank_from_body:  # weights, batch-norm and feature statistics
        body = model.wav2vec2.feature_extractor
        differ = feature_differences(branch.feature_config, body.feature_config, "the body's front end")
        if differ:
            raise ValueError(f"head.fbank_from_body: --feature-stats were taken with other features than the "
                             f"body's front end computes: {differ}")
        branch.load_state_dict(body.state_dict())
    elif branch is not None:
        branch.set_stats(feature_stats)
    return model


def set_front_end_stats(model: Wav2Vec2PreTrainedModel, stats: FeatureStats | None) -> None:
    """Give a new model's ``FbankFrontEnd`` its global log-mel statistics (``--feature-stats``)."""
    if stats is None:
        raise ValueError("encoder.front_end fbank: the filterbank front end needs --feature-stats (the "
                         "Conv1D+BiLSTM recogniser's feature_stats.json)")
    model.wav2vec2.feature_extractor.set_stats(stats)


def save_model_dir(recognizer: Wav2Vec2Recognizer, tokenizer: Tokenizer, out: str | os.PathLike,
                   meta: dict | None = None, *, extra: dict[str, str | os.PathLike | None] | None = None) -> Path:
    """Write a model folder atomically (``out.tmp/`` renamed to ``out/``). ``extra`` maps file names
    in the folder (``lm.arpa.gz``, ``decoder.json``) to files to copy there (an LM is gzipped on the way).
    Returns ``out``."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    recognizer.model.save_pretrained(str(tmp))
    build_processor(tokenizer, sample_rate=recognizer.feature_config.sample_rate,
                    attention_mask=recognizer.use_attention_mask).save_pretrained(str(tmp))
    for name, src in (extra or {}).items():
        if src:
            (copy_lm if name == "lm.arpa.gz" else shutil.copyfile)(src, tmp / name)
    write_json(tmp / "glottis.json", {"format": WAV2VEC2_FORMAT, "tokenizer": tokenizer.to_dict(),
                                      "sample_rate": recognizer.feature_config.sample_rate, **(meta or {})})
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def recognizer_from_state(state: dict) -> tuple[Wav2Vec2Recognizer, Tokenizer]:
    """Rebuild the model of a fine-tuning checkpoint dict (``model_type == "wav2vec2"``)."""
    model = attach_modules(Wav2Vec2ForCTC(Wav2Vec2Config.from_dict(state["hf_config"])))
    model.load_state_dict(state["model"])
    return Wav2Vec2Recognizer(model, state["sample_rate"]), load_tokenizer(state["tokenizer"])


def load_wav2vec2(path: str | os.PathLike, *, state: dict | None = None,
                  device: str | torch.device = "cpu") -> LoadedModel:
    """A model folder (``glottis.json`` beside HF files) or a loaded fine-tuning checkpoint ``state``."""
    path = Path(path)
    decoder, lm_path = {}, None
    if state is not None:
        recognizer, tokenizer = recognizer_from_state(state)
    else:
        meta = json.loads((path / "glottis.json").read_text())
        hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of `glottis transcribe` output
        model = load_pretrained(Wav2Vec2ForCTC, path)
        recognizer, tokenizer = Wav2Vec2Recognizer(model, meta["sample_rate"]), load_tokenizer(meta["tokenizer"])
        if model.config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"{path}: the model has {model.config.vocab_size} outputs, the tokenizer "
                             f"{tokenizer.vocab_size} ids")
        decoder_file = path / "decoder.json"
        decoder = json.loads(decoder_file.read_text()) if decoder_file.is_file() else {}
        lm_path = folder_lm(path)
    recognizer.eval().to(device)
    return LoadedModel(recognizer, tokenizer, recognizer.feature_config, decoder, lm_path, path)


# ------------------------------------------------------------------------------------------ training


def build_loader(manifest: Path, records: list[Utterance], *, sample_rate: int, max_seconds: float,
                 max_batch_size: int, shuffle: bool, seed: int, num_workers: int,
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 durations: list[float] | None = None):
    """Length-bucketed batches of ``records``; ``durations`` (default: the records') fill the budget."""
    dataset = UtteranceDataset(manifest, sample_rate=sample_rate, transform=transform, records=records)
    sampler = BucketBatchSampler(durations or dataset.durations, max_seconds=max_seconds,
                                 max_batch_size=max_batch_size, shuffle=shuffle, seed=seed)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_waves,
                                         num_workers=num_workers)
    return loader, sampler


def spellable(records: list[Utterance], tokenizer: Tokenizer) -> list[Utterance]:
    """The records whose transcript the tokenizer can spell (and is not empty)."""
    from asr.train import keep_utterance

    return [r for r in records if keep_utterance(r.text, tokenizer)]


def set_trainable(model: Wav2Vec2ForCTC, step: int, cfg: FinetuneConfig) -> None:
    """What trains at ``step``: the head always, the body from ``freeze_body_steps`` on, and the conv
    feature encoder from ``freeze_feature_encoder_steps`` on (never when that is negative)."""
    body = step >= cfg.freeze_body_steps
    encoder = body and 0 <= cfg.freeze_feature_encoder_steps <= step
    for p in model.wav2vec2.parameters():
        p.requires_grad_(body)
    features = model.wav2vec2.feature_extractor
    for p in features.parameters():
        p.requires_grad_(encoder)
    features._requires_grad = encoder  # HF's flag, which _freeze_parameters() clears


def step_seed(seed: int, step: int) -> int:
    """The numpy seed for one step's masks (transformers draws them from numpy's global RNG), so that a
    resumed run draws the masks the uninterrupted run would have."""
    return (seed * 1_000_003 + step) % 2**32


def finetune(cfg: Wav2Vec2ExpConfig, args: argparse.Namespace) -> Path:
    f = cfg.finetune
    device = choose_device(args.device)
    set_threads(args.threads or max(1, len(os.sched_getaffinity(0)) - f.num_workers))
    torch.manual_seed(f.seed)
    random.seed(f.seed)
    exp_dir = Path(args.exp_dir)
    exp_dir.mkdir(parents=True, exist_ok=True)
    save_config(exp_dir / "config.yaml", cfg)
    tokenizer = load_tokenizer(json.loads(Path(args.tokenizer).read_text()))

    checkpoints = CheckpointManager(exp_dir, keep=f.keep_checkpoints)
    latest = checkpoints.latest()
    state = CheckpointManager.load(latest, map_location="cpu") if latest is not None else None
    if state is not None:
        recognizer, _ = recognizer_from_state(state)
    else:
        stats = FeatureStats.load(args.feature_stats) if getattr(args, "feature_stats", None) else None
        recognizer = Wav2Vec2Recognizer(init_ctc_model(args.init, cfg, tokenizer, stats), cfg.sample_rate)
    recognizer.to(device)
    model = recognizer.model
    n_params = sum(p.numel() for p in model.parameters())
    log.info("wav2vec2 CTC from %s: %.2fM parameters, vocab %d", args.init, n_params / 1e6, tokenizer.vocab_size)

    records = [r for r in spellable(read_manifest(args.train), tokenizer) if r.duration <= f.max_duration]
    augment = WaveAugment(cfg.augment, cfg.sample_rate, seed=f.seed)
    train_loader, sampler = build_loader(Path(args.train), records, sample_rate=cfg.sample_rate,
                                         max_seconds=f.max_seconds, max_batch_size=f.max_batch_size, shuffle=True,
                                         seed=f.seed, num_workers=f.num_workers, transform=augment)
    log.info("training on %d utterances, %.2f h", len(records), sum(r.duration for r in records) / 3600)
    dev_loader = None
    if args.dev:
        dev = spellable(read_manifest(args.dev), tokenizer)
        if len(dev) > f.dev_max_utterances:
            dev = dev[:: math.ceil(len(dev) / f.dev_max_utterances)]
        dev_loader, _ = build_loader(Path(args.dev), dev, sample_rate=cfg.sample_rate, max_seconds=f.max_seconds,
                                     max_batch_size=f.max_batch_size, shuffle=False, seed=0, num_workers=0)

    head = list(model.lm_head.parameters())
    head_ids = {id(p) for p in head}
    body = [p for p in model.parameters() if id(p) not in head_ids]
    optimizer = torch.optim.AdamW([{"params": head, "lr": f.head_lr}, {"params": body, "lr": f.body_lr}],
                                  weight_decay=f.weight_decay)
    schedule = lambda s: warmup_decay(s, warmup=f.warmup_steps, total=f.total_steps)  # noqa: E731
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, [schedule, schedule])
    step, best_cer, train_seconds = 0, math.inf, 0.0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        sampler.load_state_dict(state["sampler"])
        step, best_cer, train_seconds = state["step"], state["best_cer"], state["train_seconds"]
        log.info("resumed from %s at step %d", latest, step)
    init = state["init"] if state is not None else args.init
    logger = TrainLogger(exp_dir)

    def snapshot() -> dict:
        return {
            "model_type": "wav2vec2",
            "config": to_dict(cfg),
            "hf_config": json.loads(model.config.to_json_string()),
            "sample_rate": cfg.sample_rate,
            "tokenizer": tokenizer.to_dict(),
            "init": init,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "sampler": sampler.state_dict(batches_done=batches_done),
            "step": step,
            "best_cer": best_cer,
            "train_seconds": train_seconds + time.time() - t_start,  # wall time over all resumes
        }

    from asr.train import ctc_loss, evaluate

    progress = tqdm(total=f.total_steps, initial=step, desc="finetune", unit="step", dynamic_ncols=True)
    recognizer.train()
    t_start, audio_seconds = time.time(), 0.0
    while step < f.total_steps:
        batches_done = sampler.state_dict()["batches_done"]
        for batch in train_loader:
            set_trainable(model, step, f)
            np.random.seed(step_seed(f.seed, step))
            waves, lengths = batch["waves"].to(device), batch["lengths"].to(device)
            targets = [torch.tensor(tokenizer.encode(t)) for t in batch["texts"]]
            log_probs, out_lengths = recognizer(waves, lengths)
            loss = ctc_loss(log_probs, out_lengths, targets, tokenizer.blank_id)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), f.grad_clip)
            optimizer.step()
            scheduler.step()
            step += 1
            batches_done += 1
            audio_seconds += float(lengths.sum()) / cfg.sample_rate
            progress.update(1)
            progress.set_postfix(loss=f"{loss.item():.3f}", lr=f"{scheduler.get_last_lr()[1]:.2e}")
            if step % 10 == 0 or step == f.total_steps:
                logger.scalar("train/loss", loss.item(), step)
                logger.scalar("train/grad_norm", float(grad_norm), step)
                logger.scalar("train/lr_head", scheduler.get_last_lr()[0], step)
                logger.scalar("train/lr_body", scheduler.get_last_lr()[1], step)
                logger.scalar("train/audio_x_realtime", audio_seconds / (time.time() - t_start), step)
            if dev_loader is not None and (step % f.eval_every == 0 or step == f.total_steps):
                scores = evaluate(recognizer, dev_loader, tokenizer, device)
                for k, v in scores.items():
                    logger.scalar(f"dev/{k}", v, step)
                logger.plot(["train/loss", "dev/loss", "dev/cer", "dev/wer"])
                log.info("step %d: dev CER %.2f%% WER %.2f%% loss %.3f", step, 100 * scores["cer"],
                         100 * scores["wer"], scores["loss"])
                if scores["cer"] < best_cer:
                    best_cer = scores["cer"]
                    checkpoints.save_best(snapshot())
            if step % f.checkpoint_every == 0 or step == f.total_steps:
                checkpoints.save(snapshot(), step)
            if step >= f.total_steps:
                break
        else:
            sampler.set_epoch(sampler.epoch + 1)
    progress.close()
    logger.close()
    last = checkpoints.steps()[-f.average_last:]
    final = CheckpointManager.load(last[-1])
    model.load_state_dict(average_state_dicts(last))
    meta = {"step": final["step"], "train_seconds": final["train_seconds"], "init": init,
            "averaged": [p.name for p in last], "training_config": final["config"]}
    save_model_dir(recognizer, tokenizer, exp_dir / "final", meta)
    log.info("wrote %s (average of %s)", exp_dir / "final", meta["averaged"])
    return exp_dir / "final"


def export(model_path: str, out: str, *, lm: str | None, decoder: str | None) -> Path:
    """A self-contained model folder (with LM and tuned decoder) from a model folder or checkpoint."""
    path = Path(model_path)
    if path.is_file():
        state = CheckpointManager.load(path)
        loaded = load_wav2vec2(path, state=state)
        meta = {"step": state["step"], "train_seconds": state["train_seconds"], "init": state["init"]}
    else:
        loaded = load_wav2vec2(path)
        meta = {k: v for k, v in json.loads((path / "glottis.json").read_text()).items()
                if k not in ("format", "tokenizer", "sample_rate")}
    return save_model_dir(loaded.recognizer, loaded.tokenizer, out, meta,
                          extra={"lm.arpa.gz": lm, "decoder.json": decoder})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m asr.wav2vec2", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    ft = sub.add_parser("finetune", help="CTC fine-tuning (resumes when rerun)")
    ft.add_argument("--config", required=True, help="YAML mapping onto Wav2Vec2ExpConfig")
    ft.add_argument("--exp-dir", required=True, help="checkpoints, logs, plots and final/ go here")
    ft.add_argument("--train", required=True, help="training manifest (JSON lines)")
    ft.add_argument("--dev", help="dev manifest for CER during training")
    ft.add_argument("--tokenizer", required=True, help="tokenizer JSON written by asr.tokenizer")
    ft.add_argument("--init", default="random", help="HF-format folder, cached hub id, or 'random'")
    ft.add_argument("--feature-stats", help="log-mel statistics JSON (python -m audio.stats) for head.fbank")
    ft.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value, e.g. --set finetune.total_steps=100")
    ft.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ft.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core left free)")
    ex = sub.add_parser("export", help="a model folder with LM and decoder settings")
    ex.add_argument("--model", required=True, help="fine-tuned model folder or checkpoint (.pt)")
    ex.add_argument("--out", required=True)
    ex.add_argument("--lm", help="ARPA LM to include")
    ex.add_argument("--decoder", help="decoder.json with tuned LM weight and word score")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "export":
        export(args.model, args.out, lm=args.lm, decoder=args.decoder)
        return 0
    cfg = load_config(Wav2Vec2ExpConfig, args.config, args.set)
    finetune(cfg, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
