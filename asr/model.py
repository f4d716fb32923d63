"""ConvBiLSTM: a DeepSpeech2-style CTC recogniser.

log-mel ``(B, frames, n_mels)`` -> Conv1D front end (time subsampling by the product of the strides)
-> BiLSTM stack -> linear -> CTC log-probabilities ``(B, frames', vocab)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ConvBiLSTMConfig", "ConvBiLSTM", "ConvBlock", "run_lstm", "MODELS"]


@dataclass(frozen=True)
class ConvBiLSTMConfig:
    n_mels: int = 80
    vocab_size: int = 29  # set from the tokenizer at training time
    conv_channels: tuple[int, ...] = (256, 256)
    conv_kernels: tuple[int, ...] = (5, 5)
    conv_strides: tuple[int, ...] = (2, 2)  # product = time subsampling (2-4x)
    lstm_hidden: int = 256  # per direction
    lstm_layers: int = 3
    dropout: float = 0.15

    @property
    def subsampling(self) -> int:
        out = 1
        for s in self.conv_strides:
            out *= s
        return out


class ConvBlock(nn.Module):
    """Conv1d -> BatchNorm -> GELU -> dropout, with ``same``-style padding so output lengths are
    ``ceil(len / stride)`` for odd kernels (``len // stride + 1`` for even ones)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = nn.BatchNorm1d(c_out)
        self.dropout = nn.Dropout(dropout)
        self.stride = stride
        self.kernel = kernel

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: ``(B, C_in, T)`` with zeros past ``lengths`` -> ``(B, C_out, T')``, ``lengths'``."""
        y = self.dropout(F.gelu(self.norm(self.conv(x))))
        out_lengths = (lengths + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1
        # Zero the padded frames so the next convolution (and BatchNorm statistics at the next
        # layer's input) sees the same context a lone utterance would.
        mask = torch.arange(y.shape[-1], device=y.device)[None, :] < out_lengths[:, None]
        return y * mask[:, None, :], out_lengths


class ConvBiLSTM(nn.Module):
    def __init__(self, cfg: ConvBiLSTMConfig):
        super().__init__()
        self.cfg = cfg
        blocks, c_in = [], cfg.n_mels
        for c_out, k, s in zip(cfg.conv_channels, cfg.conv_kernels, cfg.conv_strides, strict=True):
            blocks.append(ConvBlock(c_in, c_out, k, s, cfg.dropout))
            c_in = c_out
        self.convs = nn.ModuleList(blocks)
        self.lstm = nn.LSTM(
            input_size=c_in,
            hidden_size=cfg.lstm_hidden,
            num_layers=cfg.lstm_layers,
            dropout=cfg.dropout if cfg.lstm_layers > 1 else 0.0,
            bidirectional=True,
            batch_first=True,
        )
        self.dropout = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(2 * cfg.lstm_hidden, cfg.vocab_size)

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames out for ``lengths`` frames in."""
        for block in self.convs:
            lengths = (lengths + 2 * (block.kernel // 2) - block.kernel) // block.stride + 1
        return lengths

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """feats: ``(B, T, n_mels)`` normalised log-mel, lengths ``(B,)`` frames.

        Returns CTC log-probabilities ``(B, T', vocab)`` (float32) and ``(B,)`` output lengths.
        """
        x = feats.transpose(1, 2)  # (B, T, C) -> (B, C, T) for Conv1d
        for block in self.convs:
            x, lengths = block(x, lengths)
        x = x.transpose(1, 2)  # (B, C, T') -> (B, T', C)
        logits = self.head(self.dropout(run_lstm(self.lstm, x, lengths, training=self.training)))
        return logits.float().log_softmax(dim=-1), lengths


def run_lstm(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor | None, *, training: bool) -> torch.Tensor:
    """A batch-first ``lstm`` over ``x (B, T, C)`` with ``lengths (B,)`` valid frames -> ``(B, T, H)``.

    Padded, not packed, in training (or with no lengths): on the CPU the LSTM backward of a packed batch is
    several times slower, length-bucketed batches carry little padding, and a short row's backward
    direction starts in its padding. Packed at inference, so a padded batch gives exactly each utterance's
    lone result."""
    if lengths is None or training or bool((lengths >= x.shape[1]).all()):
        out, _ = lstm(x)
        return out
    packed = nn.utils.rnn.pack_padded_sequence(x, lengths.clamp(min=1).cpu(), batch_first=True,
                                               enforce_sorted=False)
    out, _ = lstm(packed)
    out, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out


MODELS = {"conv_bilstm": (ConvBiLSTM, ConvBiLSTMConfig)}
