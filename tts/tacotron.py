"""Tacotron (Wang et al. 2017, "Tacotron: Towards End-to-End Speech Synthesis"), with a stop token.

    symbols -> embedding -> prenet -> CBHG ------------------------------> encoder outputs (B, N, 2H)
                                                                              |  attention (location-
    previous frame -> prenet -> attention GRU -> query ---------------------> |  sensitive or content)
                                                      + context -> residual GRUs -> r mel frames, stop
    mel frames (B, T, n_mels) -> CBHG post-net -> linear spectrogram (B, T, n_linear) -> Griffin-Lim

Differences from the paper, all small: a stop-token head on the decoder (Tacotron 2) replaces "stop when
the frames are silent"; attention is location-sensitive (Chorowski et al. 2015; ``attention="content"``
gives the paper's content-only additive attention); padded encoder steps are masked out of the softmax;
and :func:`guided_attention_loss` (Tachibana et al. 2017) pulls the alignment towards the diagonal so it
forms within a few thousand steps on a CPU. The decoder pre-net keeps its dropout at inference (the only
source of variation in the output, as in Tacotron 2); the encoder pre-net's dropout follows train/eval.

Shapes at the boundaries are ``(B, T, C)``: text ``(B, N)`` symbol ids with lengths, mel and linear
spectrograms ``(B, frames, bins)`` with frame lengths, alignments ``(B, decoder steps, N)``. Decoder
step ``t`` emits frames ``[t r, (t + 1) r)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "TacotronConfig",
    "Tacotron",
    "TacotronOutput",
    "TacotronInference",
    "guided_attention_weights",
    "guided_attention_loss",
    "tacotron_loss",
    "delta_loss",
]


@dataclass(frozen=True)
class TacotronConfig:
    """Sizes of every block. The paper's values are noted where ours are smaller for CPU training."""

    n_symbols: int = 132  # set from tts.text.SYMBOLS by the trainer
    n_mels: int = 80
    n_linear: int = 513  # n_fft // 2 + 1
    embedding_dim: int = 256
    encoder_prenet: tuple[int, ...] = (256, 128)
    encoder_bank_size: int = 16  # conv bank kernel sizes 1..K
    encoder_channels: int = 128
    encoder_highways: int = 4
    encoder_gru: int = 128  # per direction; outputs are 2x this
    attention: str = "location"  # "location" (location-sensitive) or "content" (the paper's)
    attention_rnn: int = 256
    attention_dim: int = 128
    location_filters: int = 32
    location_kernel: int = 31
    decoder_prenet: tuple[int, ...] = (256, 128)
    decoder_rnn: int = 256
    decoder_layers: int = 2  # residual GRUs
    r: int = 3  # frames per decoder step (paper: 2)
    postnet_bank_size: int = 8
    postnet_channels: int = 128  # paper: 256 for the first projection
    postnet_highways: int = 4
    postnet_gru: int = 128
    # A linear path from the mel to the linear spectrogram beside the CBHG post-net (``linear_skip``), so
    # the post-net learns only a correction. build_model starts it at tts.spectrogram.mel_to_linear_map.
    postnet_skip: bool = False
    prenet_dropout: float = 0.5
    max_decoder_steps: int = 1000  # inference guard, in decoder steps (r frames each)
    stop_threshold: float = 0.5  # inference stops once sigmoid(stop logit) exceeds this

    def __post_init__(self):
        if self.attention not in ("location", "content"):
            raise ValueError(f"attention must be 'location' or 'content', not {self.attention!r}")
        if not 1 <= self.r <= 8:
            raise ValueError(f"r (frames per decoder step) must be in 1..8, not {self.r}")
        if not self.encoder_prenet or not self.decoder_prenet:
            raise ValueError("the pre-nets need at least one layer")


@dataclass
class TacotronOutput:
    """Teacher-forced outputs. ``frames`` is the input mel length rounded up to a multiple of r."""

    mel: torch.Tensor  # (B, frames, n_mels), decoder output
    linear: torch.Tensor  # (B, frames, n_linear), post-net output
    stop_logits: torch.Tensor  # (B, frames // r)
    alignments: torch.Tensor  # (B, frames // r, N)


@dataclass
class TacotronInference:
    mel: torch.Tensor  # (B, frames, n_mels); frames past an item's length are 0
    linear: torch.Tensor  # (B, frames, n_linear); likewise
    alignments: torch.Tensor  # (B, steps, N)
    lengths: torch.Tensor  # (B,) int64 frames; steps of item b = lengths[b] // r
    stopped: torch.Tensor  # (B,) bool; False where max_decoder_steps cut the item off


def _length_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size)`` bool, True at positions below each length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


# --- blocks ---------------------------------------------------------------------------------------


class _Prenet(nn.Module):
    """FC-ReLU-dropout layers. ``(B, ..., in_dim) -> (B, ..., sizes[-1])``."""

    def __init__(self, in_dim: int, sizes: tuple[int, ...], dropout: float):
        super().__init__()
        dims = (in_dim, *sizes)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.dropout = dropout

    def forward(
        self, x: torch.Tensor, *, dropout: bool, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """``dropout``: apply it (independently of train/eval); ``generator``: draw its masks from here."""
        keep = 1.0 - self.dropout
        for layer in self.layers:
            x = F.relu(layer(x))
            if dropout and generator is not None:
                x = x * (torch.rand(x.shape, generator=generator, device=x.device) < keep) / keep
            else:
                x = F.dropout(x, p=self.dropout, training=dropout)
        return x


class _BatchNormConv(nn.Module):
    """Conv1d (no bias, "same" length) -> BatchNorm -> optional ReLU, on ``(B, C, T)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int, relu: bool):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False)
        self.norm = nn.BatchNorm1d(out_ch)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.shape[-1]
        y = self.norm(self.conv(x)[..., :frames])  # even kernels give one extra frame; drop it
        return F.relu(y) if self.relu else y


class _Highway(nn.Module):
    """``y = relu(W_h x) * g + x * (1 - g)``, ``g = sigmoid(W_g x)``. ``(..., dim) -> (..., dim)``."""

    def __init__(self, dim: int):
        super().__init__()
        self.transform = nn.Linear(dim, dim)
        self.gate = nn.Linear(dim, dim)
        nn.init.constant_(self.gate.bias, -1.0)  # start by carrying the input through (Srivastava 2015)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.gate(x))
        return F.relu(self.transform(x)) * gate + x * (1.0 - gate)


def _reverse_padded(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Reverse each item's first ``lengths[b]`` steps of ``(B, T, C)``; padded steps stay where they are."""
    steps = torch.arange(x.shape[1], device=x.device)[None, :]  # (1, T)
    last = (lengths.to(x.device) - 1)[:, None]  # (B, 1)
    index = torch.where(steps <= last, last - steps, steps)  # (B, T)
    return x.gather(1, index.unsqueeze(-1).expand_as(x))


class _BiGRU(nn.Module):
    """A bidirectional GRU over padded ``(B, T, C)`` with lengths -> ``(B, T, 2 * hidden)``, padding 0.

    Two unidirectional GRUs, the backward one run on each item reversed within its length. Same result
    as packing, but PyTorch's CPU backward of a *packed* GRU fills and adds a zero tensor the size of
    the whole batch at every time step (quadratic in T; 1.5 s of a 6 s training step here).
    """

    def __init__(self, in_dim: int, hidden: int):
        super().__init__()
        self.forward_gru = nn.GRU(in_dim, hidden, batch_first=True)
        self.backward_gru = nn.GRU(in_dim, hidden, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        forward_out, _ = self.forward_gru(x)  # padding comes after the valid steps, so it cannot reach them
        backward_out, _ = self.backward_gru(_reverse_padded(x, lengths))
        out = torch.cat([forward_out, _reverse_padded(backward_out, lengths)], dim=-1)
        return out * _length_mask(lengths.to(x.device), x.shape[1]).unsqueeze(-1).to(out.dtype)


class _CBHG(nn.Module):
    """1-D convolution bank + highway network + bidirectional GRU.

    Conv bank (kernels 1..K, ReLU) -> max-pool (width 2, stride 1) -> two conv projections (ReLU, then
    linear, back to ``in_dim``) -> residual with the input -> highway layers -> BiGRU.
    ``(B, T, in_dim), (B,) -> (B, T, 2 * gru_dim)``. Padded steps are zeroed after every convolution
    and kept out of the GRU, so a padded batch gives each item's lone result (in eval mode).
    """

    def __init__(
        self,
        in_dim: int,
        *,
        bank_size: int,
        channels: int,
        projections: tuple[int, int],
        highways: int,
        gru_dim: int,
    ):
        super().__init__()
        if projections[-1] != in_dim:
            raise ValueError(f"the last projection ({projections[-1]}) must equal the input size ({in_dim})")
        self.bank = nn.ModuleList(
            _BatchNormConv(in_dim, channels, k, relu=True) for k in range(1, bank_size + 1)
        )
        self.projections = nn.ModuleList(
            [
                _BatchNormConv(bank_size * channels, projections[0], 3, relu=True),
                _BatchNormConv(projections[0], projections[1], 3, relu=False),
            ]
        )
        self.pre_highway = nn.Linear(in_dim, gru_dim, bias=False) if in_dim != gru_dim else nn.Identity()
        self.highways = nn.ModuleList(_Highway(gru_dim) for _ in range(highways))
        self.gru = _BiGRU(gru_dim, gru_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        frames = x.shape[1]
        mask = _length_mask(lengths, frames).unsqueeze(1).to(x.dtype)  # (B, 1, T)
        residual = x
        x = x.transpose(1, 2) * mask  # (B, T, C) -> (B, C, T) for the convolutions
        bank = torch.cat([conv(x) for conv in self.bank], dim=1) * mask  # (B, K * channels, T)
        # Max over frames t-1 and t; bank outputs are >= 0 (ReLU), so the zero padding never wins.
        pooled = torch.maximum(bank, F.pad(bank, (1, 0))[..., :frames]) * mask
        y = self.projections[0](pooled) * mask
        y = self.projections[1](y) * mask
        y = y.transpose(1, 2) + residual  # (B, C, T) -> (B, T, C)
        y = self.pre_highway(y)
        for highway in self.highways:
            y = highway(y)
        return self.gru(y, lengths)  # (B, T, 2 * gru_dim)


class _Encoder(nn.Module):
    """Symbol ids ``(B, N)``, lengths ``(B,)`` -> encoder outputs ``(B, N, 2 * encoder_gru)``."""

    def __init__(self, cfg: TacotronConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.n_symbols, cfg.embedding_dim)
        nn.init.normal_(self.embedding.weight, std=0.3)
        self.prenet = _Prenet(cfg.embedding_dim, cfg.encoder_prenet, cfg.prenet_dropout)
        width = cfg.encoder_prenet[-1]
        self.cbhg = _CBHG(
            width,
            bank_size=cfg.encoder_bank_size,
            channels=cfg.encoder_channels,
            projections=(cfg.encoder_channels, width),
            highways=cfg.encoder_highways,
            gru_dim=cfg.encoder_gru,
        )

    def forward(self, text_ids: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        x = self.prenet(self.embedding(text_ids), dropout=self.training)  # (B, N, prenet)
        return self.cbhg(x, text_lengths)


class _Attention(nn.Module):
    """Additive attention; location-sensitive adds features of the previous and cumulative weights.

    ``energy_n = v . tanh(W q + V h_n + U conv([w_prev, w_cum])_n)``, softmax over valid ``n`` only.
    Everything that does not change between decoder steps (the keys ``V h``, the product ``U conv`` of
    the location filters and their projection, the mask) is computed once by :meth:`prepare`, as a
    decoder step on a CPU costs mostly per-operation overhead.
    """

    def __init__(self, cfg: TacotronConfig, memory_dim: int):
        super().__init__()
        self.query = nn.Linear(cfg.attention_rnn, cfg.attention_dim, bias=False)
        self.memory = nn.Linear(memory_dim, cfg.attention_dim, bias=False)
        self.v = nn.Linear(cfg.attention_dim, 1, bias=False)  # a bias would not change the softmax
        self.location = cfg.attention == "location"
        if self.location:
            self.location_conv = nn.Conv1d(
                2, cfg.location_filters, cfg.location_kernel, padding=cfg.location_kernel // 2, bias=False
            )
            self.location_dense = nn.Linear(cfg.location_filters, cfg.attention_dim, bias=False)

    def prepare(self, memory: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """Per-utterance constants from memory ``(B, N, M)`` and mask ``(B, N)`` bool (True: valid)."""
        location = None
        if self.location:
            # The conv filters (F, 2, K) times their projection U (A, F), as one (2K, A) matrix applied
            # to windows of the weights: one GEMM per step, much faster than a 2-channel Conv1d on a CPU.
            filters = self.location_conv.weight.flatten(1)  # (F, 2, K) -> (F, 2K), channel-major
            location = filters.t() @ self.location_dense.weight.t()  # (2K, F) @ (F, A) -> (2K, A)
        return {
            "keys": self.memory(memory),  # (B, N, A)
            "location": location,
            "mask_bias": torch.zeros(mask.shape, dtype=memory.dtype, device=memory.device).masked_fill(
                ~mask, float("-inf")
            ),  # (B, N)
        }

    def forward(
        self,
        query: torch.Tensor,
        prepared: dict[str, torch.Tensor | None],
        memory: torch.Tensor,
        previous: torch.Tensor,
        cumulative: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query ``(B, attention_rnn)``; prepared from :meth:`prepare`; memory ``(B, N, M)``; previous and
        cumulative weights ``(B, N)`` -> context ``(B, M)``, weights ``(B, N)``."""
        energy = prepared["keys"] + self.query(query).unsqueeze(1)  # (B, N, A)
        if prepared["location"] is not None:
            kernel = self.location_conv.kernel_size[0]
            weights = F.pad(torch.stack([previous, cumulative], dim=1), (kernel // 2, kernel // 2))
            windows = (
                weights.unfold(2, kernel, 1).permute(0, 2, 1, 3).flatten(2)
            )  # (B, 2, N, K) -> (B, N, 2K)
            energy = energy + windows @ prepared["location"]  # (B, N, 2K) @ (2K, A) -> (B, N, A)
        scores = (torch.tanh(energy) @ self.v.weight.t()).squeeze(-1)  # (B, N, A) @ (A, 1) -> (B, N)
        attn = torch.softmax(scores + prepared["mask_bias"], dim=-1)
        context = torch.bmm(attn.unsqueeze(1), memory).squeeze(1)  # (B, 1, N) @ (B, N, M) -> (B, M)
        return context, attn


class _Decoder(nn.Module):
    """Attention GRU + attention + residual decoder GRUs, emitting ``r`` mel frames and a stop logit per step."""

    def __init__(self, cfg: TacotronConfig, memory_dim: int):
        super().__init__()
        self.cfg = cfg
        self.prenet = _Prenet(cfg.n_mels, cfg.decoder_prenet, cfg.prenet_dropout)
        self.attention_rnn = nn.GRUCell(cfg.decoder_prenet[-1] + memory_dim, cfg.attention_rnn)
        self.attention = _Attention(cfg, memory_dim)
        self.input_proj = nn.Linear(cfg.attention_rnn + memory_dim, cfg.decoder_rnn)
        self.rnns = nn.ModuleList(
            nn.GRUCell(cfg.decoder_rnn, cfg.decoder_rnn) for _ in range(cfg.decoder_layers)
        )
        self.mel_proj = nn.Linear(cfg.decoder_rnn + memory_dim, cfg.n_mels * cfg.r)
        self.stop_proj = nn.Linear(cfg.decoder_rnn + memory_dim, 1)

    def initial_state(self, memory: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        batch, steps, dim = memory.shape
        zeros = memory.new_zeros
        return {
            "attention_hidden": zeros(batch, self.cfg.attention_rnn),
            "hidden": [zeros(batch, self.cfg.decoder_rnn) for _ in self.rnns],
            "context": zeros(batch, dim),
            "previous": zeros(batch, steps),
            "cumulative": zeros(batch, steps),
        }

    def step(
        self,
        prenet_out: torch.Tensor,
        state: dict,
        prepared: dict,
        memory: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """One decoder step. prenet_out ``(B, P)`` -> frames ``(B, r * n_mels)``, stop logit ``(B,)``,
        attention weights ``(B, N)``, and the next state."""
        attention_hidden = self.attention_rnn(
            torch.cat([prenet_out, state["context"]], dim=-1), state["attention_hidden"]
        )
        context, weights = self.attention(
            attention_hidden, prepared, memory, state["previous"], state["cumulative"]
        )
        x = self.input_proj(torch.cat([attention_hidden, context], dim=-1))
        hidden = []
        for rnn, h in zip(self.rnns, state["hidden"], strict=True):
            h = rnn(x, h)
            x = x + h  # residual connections between the decoder GRUs
            hidden.append(h)
        out = torch.cat([x, context], dim=-1)
        state = {
            "attention_hidden": attention_hidden,
            "hidden": hidden,
            "context": context,
            "previous": weights,
            "cumulative": state["cumulative"] + weights,
        }
        return self.mel_proj(out), self.stop_proj(out).squeeze(-1), weights, state


# --- the model ------------------------------------------------------------------------------------


class Tacotron(nn.Module):
    """Text -> mel and linear spectrograms. See the module docstring for the layout."""

    def __init__(self, cfg: TacotronConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = _Encoder(cfg)
        memory_dim = 2 * cfg.encoder_gru
        self.decoder = _Decoder(cfg, memory_dim)
        self.postnet = _CBHG(
            cfg.n_mels,
            bank_size=cfg.postnet_bank_size,
            channels=cfg.postnet_channels,
            projections=(cfg.postnet_channels, cfg.n_mels),
            highways=cfg.postnet_highways,
            gru_dim=cfg.postnet_gru,
        )
        self.linear_proj = nn.Linear(2 * cfg.postnet_gru, cfg.n_linear)
        if cfg.postnet_skip:
            self.linear_skip = nn.Linear(cfg.n_mels, cfg.n_linear)

    def encode(self, text_ids: torch.Tensor, text_lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, N)`` ids, ``(B,)`` lengths -> ``(B, N, 2 * encoder_gru)``."""
        if text_lengths is None:
            text_lengths = torch.full((text_ids.shape[0],), text_ids.shape[1], dtype=torch.long)
        return self.encoder(text_ids, text_lengths)

    def postprocess(self, mel: torch.Tensor, mel_lengths: torch.Tensor) -> torch.Tensor:
        """Post-net: mel ``(B, T, n_mels)``, ``(B,)`` frames -> linear ``(B, T, n_linear)``."""
        linear = self.linear_proj(self.postnet(mel, mel_lengths))
        if self.cfg.postnet_skip:
            linear = linear + self.linear_skip(mel)
        return linear

    def forward(
        self,
        text_ids: torch.Tensor,
        text_lengths: torch.Tensor,
        mels: torch.Tensor,
        mel_lengths: torch.Tensor,
        *,
        prenet_dropout: bool = True,
        feedback: float = 0.0,
    ) -> TacotronOutput:
        """Teacher-forced decoding, optionally with scheduled sampling (Bengio et al., 2015).

        Args:
            text_ids: ``(B, N)`` int64 symbol ids (padding anything, e.g. 0).
            text_lengths: ``(B,)`` int64 symbols per item.
            mels: ``(B, T, n_mels)`` normalised target mel frames (the decoder's inputs).
            mel_lengths: ``(B,)`` int64 frames per item.
            prenet_dropout: the decoder pre-net's dropout (always on in the paper; off only for tests).
            feedback: the probability that a step is fed the model's own last predicted frame (detached)
                instead of the target's, drawn per item and step: free-running synthesis feeds nothing
                else, so a model trained on targets alone meets inputs it has never seen (exposure bias).
        Returns:
            :class:`TacotronOutput` with ``T`` rounded up to a multiple of ``r``.
        """
        r = self.cfg.r
        memory = self.encode(text_ids, text_lengths)  # (B, N, M)
        mask = _length_mask(text_lengths.to(memory.device), memory.shape[1])
        steps = -(-mels.shape[1] // r)
        mels = F.pad(mels, (0, 0, 0, steps * r - mels.shape[1]))  # (B, steps * r, n_mels)
        # Step t is fed the last frame of step t - 1 (the paper's r > 1 scheme); step 0 a zero frame.
        inputs = torch.cat([mels.new_zeros(mels.shape[0], 1, mels.shape[2]), mels[:, r - 1 : -1 : r]], dim=1)
        prepared = self.decoder.attention.prepare(memory, mask)
        state = self.decoder.initial_state(memory)
        frames, stops, weights = [], [], []
        # Teacher forcing alone runs the pre-net on all steps at once; with feedback a step's input
        # depends on the previous step's output, so it runs per step.
        # unbind, not prenet_out[:, t]: the backward of each slice would fill a whole zero tensor.
        teacher = None if feedback > 0.0 else self.decoder.prenet(inputs, dropout=prenet_dropout).unbind(1)
        own = torch.rand(inputs.shape[:2], device=inputs.device) < feedback if teacher is None else None
        for t, target_input in enumerate(inputs.unbind(1)):
            if teacher is not None:
                step_input = teacher[t]
            else:
                if t > 0:
                    predicted = frames[-1][:, -mels.shape[2] :].detach()  # (B, n_mels)
                    target_input = torch.where(own[:, t, None], predicted, target_input)
                step_input = self.decoder.prenet(target_input, dropout=prenet_dropout)
            out, stop, attn, state = self.decoder.step(step_input, state, prepared, memory)
            frames.append(out)
            stops.append(stop)
            weights.append(attn)
        mel = torch.stack(frames, dim=1).reshape(
            mels.shape
        )  # (B, steps, r * n_mels) -> (B, steps * r, n_mels)
        linear = self.postprocess(mel, mel_lengths.clamp(max=mel.shape[1]))
        return TacotronOutput(
            mel=mel,
            linear=linear,
            stop_logits=torch.stack(stops, dim=1),
            alignments=torch.stack(weights, dim=1),
        )

    @torch.no_grad()
    def inference(
        self,
        text_ids: torch.Tensor,
        text_lengths: torch.Tensor | None = None,
        *,
        max_decoder_steps: int | None = None,
        stop_threshold: float | None = None,
        prenet_dropout: bool = True,
        generator: torch.Generator | None = None,
    ) -> TacotronInference:
        """Free-running synthesis; each item stops when its stop probability exceeds the threshold.

        Args:
            text_ids: ``(B, N)`` or ``(N,)`` int64 symbol ids; text_lengths ``(B,)`` (None: all N).
            max_decoder_steps: guard against a decoder that never stops (default: the config's).
            stop_threshold: default: the config's; above 1 never stops (fixed-length output).
            generator: random source of the pre-net dropout (None: torch's global one).
        Returns:
            :class:`TacotronInference`; item ``b`` has ``lengths[b]`` valid frames.
        """
        if text_ids.dim() == 1:
            text_ids = text_ids.unsqueeze(0)
        max_steps = max_decoder_steps or self.cfg.max_decoder_steps
        threshold = self.cfg.stop_threshold if stop_threshold is None else stop_threshold
        if text_lengths is None:
            text_lengths = torch.full((text_ids.shape[0],), text_ids.shape[1], dtype=torch.long)
        memory = self.encode(text_ids, text_lengths)
        batch = memory.shape[0]
        mask = _length_mask(text_lengths.to(memory.device), memory.shape[1])
        prepared = self.decoder.attention.prepare(memory, mask)
        state = self.decoder.initial_state(memory)
        frame = memory.new_zeros(batch, self.cfg.n_mels)
        done = torch.zeros(batch, dtype=torch.bool, device=memory.device)
        steps_taken = torch.full((batch,), max_steps, dtype=torch.long, device=memory.device)
        frames, weights = [], []
        for t in range(max_steps):
            prenet_out = self.decoder.prenet(frame, dropout=prenet_dropout, generator=generator)
            out, stop, attn, state = self.decoder.step(prenet_out, state, prepared, memory)
            frames.append(out)
            weights.append(attn)
            stopping = (torch.sigmoid(stop) > threshold) & ~done
            steps_taken[stopping] = t + 1
            done |= stopping
            if bool(done.all()):
                break
            frame = out[:, -self.cfg.n_mels :]  # the last of the r frames is the next input
        r = self.cfg.r
        lengths = steps_taken * r
        mel = torch.stack(frames, dim=1).reshape(batch, -1, self.cfg.n_mels)  # (B, steps * r, n_mels)
        valid = _length_mask(lengths, mel.shape[1]).unsqueeze(-1)
        mel = mel * valid
        linear = self.postprocess(mel, lengths) * valid
        alignments = torch.stack(weights, dim=1) * _length_mask(steps_taken, len(weights)).unsqueeze(-1)
        return TacotronInference(mel=mel, linear=linear, alignments=alignments, lengths=lengths, stopped=done)


# --- losses ---------------------------------------------------------------------------------------


def guided_attention_weights(
    text_lengths: torch.Tensor,
    step_lengths: torch.Tensor,
    *,
    sigma: float = 0.2,
    max_text: int | None = None,
    max_steps: int | None = None,
) -> torch.Tensor:
    """Tachibana et al. (2017) penalty ``W[b, t, n] = 1 - exp(-(n / N_b - t / T_b)^2 / (2 sigma^2))``.

    Zero on the diagonal, approaching 1 far from it; 0 outside each item's ``T_b x N_b`` region.
    Args: text_lengths ``(B,)`` encoder steps N_b; step_lengths ``(B,)`` decoder steps T_b.
    Returns: ``(B, max_steps, max_text)`` float32.
    """
    max_text = max_text or int(text_lengths.max())
    max_steps = max_steps or int(step_lengths.max())
    n = torch.arange(max_text, device=text_lengths.device)[None, None, :] / text_lengths[:, None, None]
    t = torch.arange(max_steps, device=text_lengths.device)[None, :, None] / step_lengths[:, None, None]
    weights = 1.0 - torch.exp(-((n - t) ** 2) / (2 * sigma**2))
    valid = (
        _length_mask(step_lengths, max_steps)[:, :, None] & _length_mask(text_lengths, max_text)[:, None, :]
    )
    return (weights * valid).float()


def guided_attention_loss(
    alignments: torch.Tensor, text_lengths: torch.Tensor, step_lengths: torch.Tensor, *, sigma: float = 0.2
) -> torch.Tensor:
    """Mean of ``alignments * W`` over each item's valid ``T_b x N_b`` region (a scalar).

    alignments ``(B, steps, N)``; text_lengths, step_lengths ``(B,)``.
    """
    weights = guided_attention_weights(
        text_lengths, step_lengths, sigma=sigma, max_text=alignments.shape[2], max_steps=alignments.shape[1]
    ).to(alignments.dtype)
    cells = (text_lengths * step_lengths).sum().clamp(min=1)
    return (alignments * weights).sum() / cells


def tacotron_loss(
    out: TacotronOutput,
    mels: torch.Tensor,
    linears: torch.Tensor,
    mel_lengths: torch.Tensor,
    text_lengths: torch.Tensor,
    *,
    r: int,
    stop_pos_weight: float = 5.0,
    guided_weight: float = 1.0,
    guided_sigma: float = 0.2,
    priority_bins: int = 0,
    delta_weight: float = 0.0,
    linear_delta_weight: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The training losses, each a scalar, and their weighted sum under ``"loss"``.

    L1 of the mel (decoder) and linear (post-net) outputs over valid frames, the stop token's binary
    cross-entropy over valid steps (1 at each item's last step, weighted ``stop_pos_weight`` as there is
    one per utterance), and ``guided_weight`` times the guided attention loss.
    With ``priority_bins`` > 0 the linear L1 is half over all bins and half over the lowest
    ``priority_bins`` (keithito/tacotron's "priority frequency", where speech is intelligible).
    With ``delta_weight`` > 0, ``delta_weight`` times the L1 of the mel's differences between
    neighbouring frames and between neighbouring bands is added (key ``"delta"``): a blurred mel, whose
    edges and formant peaks are flattened, is penalised even where its values are close on average.
    ``linear_delta_weight`` does the same for the post-net's linear output (key ``"linear_delta"``), over
    the ``priority_bins`` when they are set (there the harmonics are resolved) and all bins otherwise.
    Args: mels ``(B, T, n_mels)``, linears ``(B, T, n_linear)`` targets; lengths ``(B,)``.
    """
    frames = out.mel.shape[1]
    mels = F.pad(mels, (0, 0, 0, frames - mels.shape[1]))
    linears = F.pad(linears, (0, 0, 0, frames - linears.shape[1]))
    valid = _length_mask(mel_lengths, frames).unsqueeze(-1).to(out.mel.dtype)  # (B, T, 1)
    mel_loss = ((out.mel - mels).abs() * valid).sum() / (valid.sum() * mels.shape[-1])
    linear_error = (out.linear - linears).abs() * valid
    linear_loss = linear_error.sum() / (valid.sum() * linears.shape[-1])
    if priority_bins > 0:
        low = linear_error[..., :priority_bins].sum() / (valid.sum() * priority_bins)
        linear_loss = 0.5 * linear_loss + 0.5 * low
    step_lengths = -(-mel_lengths // r)  # (B,) decoder steps that hold valid frames
    steps = out.stop_logits.shape[1]
    step_valid = _length_mask(step_lengths, steps).to(out.stop_logits.dtype)
    stop_target = (torch.arange(steps, device=mels.device)[None, :] >= (step_lengths - 1)[:, None]).to(
        out.stop_logits.dtype
    )
    stop_loss = (
        F.binary_cross_entropy_with_logits(
            out.stop_logits,
            stop_target,
            weight=step_valid,
            pos_weight=torch.tensor(stop_pos_weight, device=mels.device),
            reduction="sum",
        )
        / step_valid.sum()
    )
    guided = guided_attention_loss(out.alignments, text_lengths, step_lengths, sigma=guided_sigma)
    total = mel_loss + linear_loss + stop_loss + guided_weight * guided
    losses = {"mel": mel_loss, "linear": linear_loss, "stop": stop_loss, "guided": guided}
    if delta_weight > 0:
        losses["delta"] = delta_loss(out.mel, mels, valid)
        total = total + delta_weight * losses["delta"]
    if linear_delta_weight > 0:
        bins = priority_bins or linears.shape[-1]
        losses["linear_delta"] = delta_loss(out.linear[..., :bins], linears[..., :bins], valid)
        total = total + linear_delta_weight * losses["linear_delta"]
    return {"loss": total, **losses}


def delta_loss(spec: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """L1 between the frame-to-frame and band-to-band differences of ``spec`` and ``target``
    (both ``(B, T, bands)``: a mel or a linear spectrogram), over valid frames (``valid`` ``(B, T, 1)``),
    the two means summed."""
    pairs = valid[:, 1:] * valid[:, :-1]
    in_time = ((spec.diff(dim=1) - target.diff(dim=1)).abs() * pairs).sum() / (
        pairs.sum().clamp_min(1) * spec.shape[-1]
    )
    in_freq = ((spec.diff(dim=2) - target.diff(dim=2)).abs() * valid).sum() / (
        valid.sum().clamp_min(1) * (spec.shape[-1] - 1)
    )
    return in_time + in_freq
