"""WaveNet vocoder (van den Oord et al. 2016) conditioned on Tacotron's mel spectrogram, with fast generation.

The network predicts a 256-way mu-law class for every sample from the previous samples and the mel::

    input      x[t-1] (mu-law class) -> embedding (R)                    h_0
    layer l    a = W_l [h_l(t - d_l); h_l(t)] + b_l + cond_l(t)          (2R)  dilated causal conv, kernel 2
               z = tanh(a[:R]) * sigmoid(a[R:])                          (R)   gated unit
               [res; skip] = V_l z + c_l                                 (R + S)
               h_{l+1} = (h_l + res) * sqrt(1/2),  skips += skip
    output     logits = W_o2 relu(W_o1 relu(skips) + b_o1) + b_o2      (256)

With ``preemphasis`` a > 0 the classes are those of the pre-emphasised wave ``x[n] - a x[n-1]``
(:func:`encode_wave`), and generated classes are de-emphasised back (:func:`decode_classes`), as LPCNet does.

Dilations run ``1, 2, 4, ..., max_dilation`` in ``dilation_cycles`` cycles; the receptive field is
``sum(dilations) + 1`` samples. Before the first sample every layer's history is zero (the parallel
forward pads with zeros; the incremental queues start at zero), so both paths compute the same function.

**Conditioning.** A small conv net over mel frames (non-causal, kernel 3) produces, for every layer, its
``2R`` gate bias at frame rate; these are linearly interpolated to the sample rate (frame ``f`` is
centred on sample ``f * hop``, as ``audio.features`` frames with ``center=True``). Interpolation is the
"repeat + conv" upsampler with a fixed triangular kernel, and since it is linear it commutes with the
per-layer 1x1 projections: projecting at frame rate and interpolating is exactly the same as
interpolating first, and ``hop`` (256) times cheaper. Generation therefore never materialises per-sample
conditioning; it interpolates two frame vectors per layer and sample.

**Generation.** Three implementations of the same recursion, each returning identical outputs for the
same uniforms (inverse-CDF sampling from ``numpy.random.default_rng(seed)``):

- :meth:`WaveNet.naive_generate`: recomputes the whole receptive field for every sample (for the benchmark);
- :meth:`WaveNet.incremental_forward`: Fast WaveNet (Paine et al. 2016) in plain torch, one circular queue
  of past activations per layer, O(layers) work per sample; the readable reference;
- :class:`FastGenerator`: the same loop compiled (C through ctypes where a C compiler is found, else numba)
  over fp32 numpy weights, filter and gate fused into one ``(2R, 2R)`` matrix per layer, residual and skip
  into one ``(R + S, R)``, and a batch of utterances sharing each weight load.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from audio.features import deemphasis, preemphasis

log = logging.getLogger(__name__)

__all__ = [
    "WaveNetConfig",
    "WaveNet",
    "FastGenerator",
    "mu_law_encode",
    "mu_law_decode",
    "encode_wave",
    "decode_classes",
    "sampling_uniforms",
]

SQRT_HALF = math.sqrt(0.5)


@dataclass(frozen=True)
class WaveNetConfig:
    n_mels: int = 80  # set from the FeatureConfig by the trainer
    hop_length: int = 256  # samples per mel frame; set from the FeatureConfig
    n_classes: int = 256  # mu-law levels (mu = n_classes - 1)
    residual_channels: int = 32  # R
    skip_channels: int = 64  # S
    dilation_cycles: int = 2
    max_dilation: int = 256  # each cycle is 1, 2, 4, ..., max_dilation
    cond_channels: int = 64  # width of the frame-rate conditioning net
    cond_layers: int = 2  # kernel-3 convs over mel frames
    cond_kernel: int = 3
    # The network models the mu-law classes of the pre-emphasised wave, y[n] = x[n] - a x[n-1], and
    # generation de-emphasises its output (LPCNet's noise shaping): the sampling noise, white in the
    # class domain, comes out tilted like speech instead of filling its quiet high bands. 0 = plain mu-law.
    preemphasis: float = 0.0

    def __post_init__(self):
        if not 0.0 <= self.preemphasis < 1.0:
            raise ValueError(f"preemphasis must be in [0, 1), not {self.preemphasis}")
        if self.max_dilation < 1 or self.max_dilation & (self.max_dilation - 1):
            raise ValueError(f"max_dilation must be a power of two, not {self.max_dilation}")
        if self.cond_kernel % 2 != 1:
            raise ValueError(f"cond_kernel must be odd, not {self.cond_kernel}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be at least 2, not {self.n_classes}")

    @property
    def dilations(self) -> tuple[int, ...]:
        cycle = tuple(2**i for i in range(int(math.log2(self.max_dilation)) + 1))
        return cycle * self.dilation_cycles

    @property
    def receptive_field(self) -> int:
        """Samples that one output depends on (the current input included)."""
        return sum(self.dilations) + 1

    @property
    def cond_margin(self) -> int:
        """Mel frames of context the conditioning net reads on each side of a frame."""
        return self.cond_layers * (self.cond_kernel // 2)


def mu_law_encode(wave: torch.Tensor, n_classes: int = 256) -> torch.Tensor:
    """``wave`` float in [-1, 1] (clipped), any shape -> int64 classes in ``[0, n_classes)``."""
    mu = n_classes - 1
    x = wave.clamp(-1.0, 1.0)
    companded = torch.sign(x) * torch.log1p(mu * x.abs()) / math.log1p(mu)
    return ((companded + 1) / 2 * mu + 0.5).floor().long().clamp(0, mu)


def mu_law_decode(classes: torch.Tensor | np.ndarray, n_classes: int = 256) -> torch.Tensor:
    """Int classes, any shape -> float32 wave in [-1, 1]."""
    mu = n_classes - 1
    companded = 2 * torch.as_tensor(classes).float() / mu - 1
    return torch.sign(companded) * ((1 + mu) ** companded.abs() - 1) / mu


def encode_wave(wave: torch.Tensor, cfg: WaveNetConfig) -> torch.Tensor:
    """``(..., samples)`` float wave -> the int64 classes the network models (pre-emphasised, mu-law)."""
    return mu_law_encode(preemphasis(wave, cfg.preemphasis), cfg.n_classes)


def decode_classes(classes: torch.Tensor | np.ndarray, cfg: WaveNetConfig) -> torch.Tensor:
    """The inverse of :func:`encode_wave` (up to mu-law rounding): classes -> float32 wave in [-1, 1]."""
    return deemphasis(mu_law_decode(classes, cfg.n_classes), cfg.preemphasis).clamp(-1.0, 1.0)


def sampling_uniforms(n_samples: int, batch: int, seed: int) -> np.ndarray:
    """``(n_samples, batch)`` float64 uniforms in [0, 1) that every generator samples with."""
    return np.random.default_rng(seed).random((n_samples, batch))


def _interpolate(cond: torch.Tensor, n_samples: int, hop: int) -> torch.Tensor:
    """Frame-rate ``(B, frames, C)`` -> ``(B, n_samples, C)``, linear between frame centres ``f * hop``.
    Needs ``frames >= ceil(n_samples / hop) + 1``."""
    frames = -(-n_samples // hop)  # frame intervals touched
    if frames + 1 > cond.shape[1]:
        raise ValueError(f"{cond.shape[1]} conditioning frames cannot cover {n_samples} samples at hop {hop}")
    weight = (torch.arange(hop, dtype=cond.dtype, device=cond.device) / hop)[:, None]  # (hop, 1)
    # (B, frames, 1, C) and (hop, 1) -> (B, frames, hop, C) -> (B, frames * hop, C)
    up = torch.lerp(cond[:, :frames, None], cond[:, 1 : frames + 1, None], weight)
    return up.flatten(1, 2)[:, :n_samples]


def _pointwise(conv: nn.Conv1d, x: torch.Tensor) -> torch.Tensor:
    """A 1x1 ``conv`` applied to channels-last ``(B, N, C_in)`` -> ``(B, N, C_out)``."""
    return F.linear(x, conv.weight[:, :, 0], conv.bias)


def _sample(logits: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: ``(B, K)`` logits, ``(B,)`` uniforms -> ``(B,)`` classes."""
    probs = torch.softmax(logits.double(), dim=-1)
    cdf = probs.cumsum(-1)
    below = (cdf < uniforms[:, None] * cdf[:, -1:]).sum(-1)
    return below.clamp(max=logits.shape[-1] - 1)


class _ConditionNet(nn.Module):
    """Mel frames -> every layer's gate bias at frame rate: ``cond_layers`` kernel-3 convs (valid, tanh),
    then one 1x1 projection to ``layers * 2R`` channels."""

    def __init__(self, cfg: WaveNetConfig):
        super().__init__()
        convs, width = [], cfg.n_mels
        for _ in range(cfg.cond_layers):
            convs.append(nn.Conv1d(width, cfg.cond_channels, cfg.cond_kernel))
            width = cfg.cond_channels
        self.convs = nn.ModuleList(convs)
        self.proj = nn.Conv1d(width, len(cfg.dilations) * 2 * cfg.residual_channels, 1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, frames + 2 * margin, n_mels)`` -> ``(B, layers * 2R, frames)``."""
        x = mel.transpose(1, 2)  # (B, T, M) -> (B, M, T)
        for conv in self.convs:
            x = torch.tanh(conv(x))
        return self.proj(x)


class WaveNet(nn.Module):
    """Mel-conditioned WaveNet with a mu-law softmax output (see the module docstring)."""

    def __init__(self, cfg: WaveNetConfig):
        super().__init__()
        self.cfg = cfg
        r, s = cfg.residual_channels, cfg.skip_channels
        self.embed = nn.Embedding(cfg.n_classes, r)
        self.cond_net = _ConditionNet(cfg)
        self.gates = nn.ModuleList(nn.Conv1d(r, 2 * r, kernel_size=2, dilation=d) for d in cfg.dilations)
        # The last layer's residual half is never used; keeping it makes every layer the same shape.
        self.res_skip = nn.ModuleList(nn.Conv1d(r, r + s, 1) for _ in cfg.dilations)
        self.out1 = nn.Conv1d(s, s, 1)
        self.out2 = nn.Conv1d(s, cfg.n_classes, 1)

    @property
    def silence(self) -> int:
        """The class of a zero sample: the input before the first sample."""
        return int(mu_law_encode(torch.zeros(()), self.cfg.n_classes))

    def condition(self, mel: torch.Tensor, *, padded: bool = False) -> torch.Tensor:
        """Per-layer gate biases at frame rate.

        Args:
            mel: ``(B, frames, n_mels)`` normalised mel (``tts.spectrogram``). With ``padded``, it already
                carries ``cfg.cond_margin`` frames of context on each side (training windows); otherwise it
                is a whole utterance, zero-padded here, and its last frame is repeated once so that samples
                up to ``frames * hop`` can be generated.
        Returns:
            ``(B, frames', layers * 2R)`` with ``frames' = frames - 2 * margin`` or ``frames + 1``.
        """
        if mel.shape[-1] != self.cfg.n_mels:
            raise ValueError(f"expected {self.cfg.n_mels} mel bands, got shape {tuple(mel.shape)}")
        if padded:
            return self.cond_net(mel).transpose(1, 2)  # (B, C, T) -> (B, T, C)
        margin = self.cfg.cond_margin
        cond = self.cond_net(F.pad(mel.transpose(1, 2), (margin, margin)).transpose(1, 2))
        cond = cond.transpose(1, 2)  # (B, C, T) -> (B, T, C)
        return torch.cat([cond, cond[:, -1:]], dim=1)

    def _stack(self, inputs: torch.Tensor, layer_conds: Iterable[torch.Tensor]) -> torch.Tensor:
        """``inputs (B, N)`` classes, one ``(B, N, 2R)`` gate bias per layer -> logits ``(B, N, K)``.

        Channels-last throughout: every convolution is then one plain matrix product over ``B * N`` rows
        (the dilated kernel-2 conv is two of them, on the signal and on its copy delayed by ``d``), which on
        the CPU trains about twice as fast as ``conv1d``. ``layer_conds`` may be a generator, so that each
        layer's sample-rate conditioning exists only while that layer runs."""
        r, s = self.cfg.residual_channels, self.cfg.skip_channels
        n = inputs.shape[1]
        h = self.embed(inputs)  # (B, N, R)
        skips = 0.0
        # chunk/split rather than slices: the backward of a slice writes zeros the size of its whole input.
        for gate, res_skip, d, layer_cond in zip(
            self.gates, self.res_skip, self.cfg.dilations, layer_conds, strict=True
        ):
            delayed = F.pad(h, (0, 0, d, 0))[:, :n]  # h(t - d), zero before the start
            a = F.linear(delayed, gate.weight[:, :, 0]) + F.linear(h, gate.weight[:, :, 1], gate.bias)
            filt, gate_in = (a + layer_cond).chunk(2, dim=-1)
            z = torch.tanh(filt) * torch.sigmoid(gate_in)
            res, skip = _pointwise(res_skip, z).split([r, s], dim=-1)
            skips = skips + skip
            h = (h + res) * SQRT_HALF
        return _pointwise(self.out2, F.relu(_pointwise(self.out1, F.relu(skips))))

    def forward(self, inputs: torch.Tensor, mel: torch.Tensor, *, padded: bool = False) -> torch.Tensor:
        """Teacher-forced parallel pass.

        Args:
            inputs: ``(B, N)`` int64 mu-law classes of the *previous* samples (``inputs[:, t] = x[t - 1]``).
            mel: ``(B, frames, n_mels)``, see :meth:`condition`; sample ``t`` sits at frame ``t / hop``.
        Returns:
            ``(B, N, n_classes)`` logits of ``x[t]``.
        """
        n, hop = inputs.shape[1], self.cfg.hop_length
        cond = self.condition(mel, padded=padded)  # (B, frames', L * 2R)
        layer_conds = (_interpolate(c, n, hop) for c in cond.split(2 * self.cfg.residual_channels, dim=-1))
        return self._stack(inputs, layer_conds)

    def _frame_conditioning(self, mel: torch.Tensor) -> torch.Tensor:
        """``(B, frames, n_mels)`` -> ``(B, frames + 1, layers, 2R)`` float32 (contiguous)."""
        cond = self.condition(mel)  # (B, T + 1, L * 2R)
        layers = len(self.cfg.dilations)
        return cond.reshape(cond.shape[0], cond.shape[1], layers, 2 * self.cfg.residual_channels).contiguous()

    @torch.no_grad()
    def incremental_forward(
        self,
        mel: torch.Tensor,
        *,
        n_samples: int | None = None,
        teacher: torch.Tensor | None = None,
        seed: int = 0,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Sample-by-sample generation with a queue of past activations per layer (pure torch reference).

        Args:
            mel: ``(B, frames, n_mels)``.
            n_samples: samples to generate (default ``(frames - 1) * hop``, as Griffin-Lim).
            teacher: ``(B, N)`` input classes to use instead of the model's own samples; then the
                logits are returned too (for checking against :meth:`forward`).
            seed: seeds :func:`sampling_uniforms`.
        Returns:
            ``(B, N)`` int64 sampled classes, and ``(B, N, K)`` logits when ``teacher`` is given.
        """
        cfg = self.cfg
        r = cfg.residual_channels
        batch = mel.shape[0]
        n = _n_samples(mel, n_samples, teacher, cfg.hop_length)
        cond = self._frame_conditioning(mel)  # (B, T + 1, L, 2R)
        uniforms = torch.from_numpy(sampling_uniforms(n, batch, seed))
        weights = [
            (g.weight[:, :, 0].T, g.weight[:, :, 1].T, g.bias, rs.weight[:, :, 0].T, rs.bias)
            for g, rs in zip(self.gates, self.res_skip, strict=True)
        ]
        queues = [torch.zeros(d, batch, r) for d in cfg.dilations]
        prev = torch.full((batch,), self.silence, dtype=torch.long)
        classes = torch.empty(batch, n, dtype=torch.long)
        logits_out = torch.empty(batch, n, cfg.n_classes) if teacher is not None else None
        for t in range(n):
            frame, offset = divmod(t, cfg.hop_length)
            frac = offset / cfg.hop_length
            c = cond[:, frame] * (1 - frac) + cond[:, frame + 1] * frac  # (B, L, 2R)
            h = self.embed(teacher[:, t] if teacher is not None else prev)  # (B, R)
            skips = 0.0
            for layer, (w_old, w_now, b, w_rs, b_rs) in enumerate(weights):
                queue, slot = queues[layer], t % cfg.dilations[layer]
                old = queue[slot].clone()
                queue[slot] = h
                a = old @ w_old + h @ w_now + b + c[:, layer]
                z = torch.tanh(a[:, :r]) * torch.sigmoid(a[:, r:])
                out = z @ w_rs + b_rs
                skips = skips + out[:, r:]
                h = (h + out[:, :r]) * SQRT_HALF
            y = F.relu(F.relu(skips) @ self.out1.weight[:, :, 0].T + self.out1.bias)
            logits = y @ self.out2.weight[:, :, 0].T + self.out2.bias  # (B, K)
            if logits_out is not None:
                logits_out[:, t] = logits
            prev = _sample(logits / temperature, uniforms[t])
            classes[:, t] = prev
        return classes, logits_out

    @torch.no_grad()
    def naive_generate(
        self, mel: torch.Tensor, *, n_samples: int | None = None, seed: int = 0, temperature: float = 1.0
    ) -> torch.Tensor:
        """Generation that reruns the parallel stack over the whole receptive field for every sample:
        O(receptive field x layers) per sample. ``(B, frames, n_mels)`` -> ``(B, N)`` int64 classes."""
        batch = mel.shape[0]
        n = _n_samples(mel, n_samples, None, self.cfg.hop_length)
        field = self.cfg.receptive_field
        cond = self.sample_conditioning(mel, n)  # (B, N, L * 2R)
        uniforms = torch.from_numpy(sampling_uniforms(n, batch, seed))
        inputs = torch.full((batch, n), self.silence, dtype=torch.long)
        classes = torch.empty(batch, n, dtype=torch.long)
        for t in range(n):
            start = max(0, t - field + 1)
            classes[:, t] = self.naive_step(inputs[:, start : t + 1], cond[:, start : t + 1], uniforms[t], temperature)
            if t + 1 < n:
                inputs[:, t + 1] = classes[:, t]
        return classes

    def sample_conditioning(self, mel: torch.Tensor, n_samples: int) -> torch.Tensor:
        """Every layer's gate bias at each of the first ``n_samples`` samples of a whole utterance's ``mel``:
        ``(B, n_samples, L * 2R)``, what :meth:`naive_step` reads."""
        return _interpolate(self.condition(mel), n_samples, self.cfg.hop_length)

    def naive_step(
        self, inputs: torch.Tensor, cond: torch.Tensor, uniforms: torch.Tensor, temperature: float = 1.0
    ) -> torch.Tensor:
        """One sample of :meth:`naive_generate`: the whole stack over the window ``inputs (B, W)`` with its
        per-sample conditioning ``cond (B, W, L * 2R)``, then a draw from the last position. ``(B,)`` classes."""
        layer_conds = cond.split(2 * self.cfg.residual_channels, dim=-1)
        logits = self._stack(inputs, layer_conds)[:, -1]  # (B, K)
        return _sample(logits / temperature, uniforms)


def _n_samples(mel: torch.Tensor, n_samples: int | None, teacher: torch.Tensor | None, hop: int) -> int:
    frames = mel.shape[1]
    n = teacher.shape[1] if teacher is not None else n_samples
    n = (frames - 1) * hop if n is None else n
    if not 0 < n <= frames * hop:
        raise ValueError(f"cannot generate {n} samples from {frames} mel frames (at most {frames * hop})")
    return n


# --- the compiled generator -----------------------------------------------------------------------


class FastGenerator:
    """:meth:`WaveNet.incremental_forward` compiled: fp32 weights as numpy arrays, filter and gate fused per
    layer, a batch of utterances stepped together. Same outputs for the same seed.

    ``kernel``: ``c`` is ``tts/_wavenet_kernel.c``, built for the machine and the model's sizes on first use
    (``tts._wavenet_c``; about twice the speed of numba's); ``numba`` is ``tts/_wavenet_kernel.py``; ``auto``
    takes ``$GLOTTIS_WAVENET_KERNEL`` if set, else C when a C compiler is there, else numba. ``self.kernel``
    says which one runs. Build it once per model (weights are copied); compiled code is cached on disk.
    """

    KERNELS = ("auto", "c", "numba")
    _warned = False  # the fallback's warning, once per process

    def __init__(self, model: WaveNet, kernel: str = "auto"):
        cfg = model.cfg
        self.model = model
        self.cfg = cfg

        def arr(t: torch.Tensor) -> np.ndarray:
            return np.ascontiguousarray(t.detach().float().cpu().numpy())

        # (2R, R, 2) conv taps -> (2R, 2R) acting on [h(t - d); h(t)]
        self.gate_w = arr(
            torch.stack([torch.cat([g.weight[:, :, 0], g.weight[:, :, 1]], 1) for g in model.gates])
        )
        self.gate_b = arr(torch.stack([g.bias for g in model.gates]))
        self.rs_w = arr(torch.stack([rs.weight[:, :, 0] for rs in model.res_skip]))  # (L, R + S, R)
        self.rs_b = arr(torch.stack([rs.bias for rs in model.res_skip]))
        self.embed = arr(model.embed.weight)  # (K, R)
        self.out1_w, self.out1_b = arr(model.out1.weight[:, :, 0]), arr(model.out1.bias)
        self.out2_w, self.out2_b = arr(model.out2.weight[:, :, 0]), arr(model.out2.bias)
        self.dilations = np.asarray(cfg.dilations, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.dilations)]).astype(np.int64)
        self.silence = model.silence
        self.kernel, self._c = self._choose_kernel(kernel)
        if self._c is not None:  # the C kernel reads [input][output] matrices
            self.c_weights = [np.ascontiguousarray(np.swapaxes(w, -1, -2))
                              for w in (self.gate_w, self.rs_w, self.out1_w, self.out2_w)]

    def _choose_kernel(self, kernel: str):
        """``auto``: ``$GLOTTIS_WAVENET_KERNEL`` if set, else C when a compiler builds it, else numba."""
        if kernel not in self.KERNELS:
            raise ValueError(f"kernel must be one of {self.KERNELS}, not {kernel!r}")
        if kernel == "auto":
            kernel = os.environ.get("GLOTTIS_WAVENET_KERNEL", "auto").lower()
            if kernel not in self.KERNELS:
                raise ValueError(f"GLOTTIS_WAVENET_KERNEL must be one of {self.KERNELS}, not {kernel!r}")
        if kernel == "numba":
            return "numba", None
        from tts._wavenet_c import load

        try:
            return "c", load((self.cfg.residual_channels, self.cfg.skip_channels, self.cfg.n_classes))
        except RuntimeError as e:
            if kernel == "c":
                raise
            if not FastGenerator._warned:
                log.warning("%s; generating with the numba kernel (about 2x slower)", e)
                FastGenerator._warned = True
            return "numba", None

    def _conditioning(self, mel: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            device = next(self.model.parameters()).device
            cond = self.model._frame_conditioning(mel.float().to(device))  # (B, T + 1, L, 2R)
        return np.ascontiguousarray(cond.cpu().numpy())

    def _state(self, batch: int) -> tuple[np.ndarray, np.ndarray]:
        """The generator's state before the first sample: every layer's queue of past activations (zeros),
        and the last sample (the silence class)."""
        queue = np.zeros((int(self.offsets[-1]), batch, self.cfg.residual_channels), dtype=np.float32)
        return queue, np.full(batch, self.silence, dtype=np.int64)

    def _steps(self, cond, state, t0, n, teacher, uniforms, temperature, want_logits):
        """Steps ``t0 .. t0 + n - 1`` from ``state`` (updated in place) -> ``(n, B)`` classes, logits."""
        batch = cond.shape[0]
        classes = np.empty((n, batch), dtype=np.int64)
        logits = np.empty((n if want_logits else 0, batch, self.cfg.n_classes), dtype=np.float32)
        if self._c is not None:
            gate_w, rs_w, out1_w, out2_w = self.c_weights
            loop = self._c.run
        else:
            from tts._wavenet_kernel import wavenet_loop as loop

            gate_w, rs_w, out1_w, out2_w = self.gate_w, self.rs_w, self.out1_w, self.out2_w
        loop(self.embed, gate_w, self.gate_b, rs_w, self.rs_b, out1_w, self.out1_b, out2_w, self.out2_b,
             self.dilations, self.offsets, cond, self.cfg.hop_length, t0, n, teacher, uniforms,
             np.float32(1.0 / temperature), *state, classes, logits)
        return classes, logits

    def _run(self, mel, n, teacher, uniforms, temperature, want_logits):
        cond = self._conditioning(mel)
        return self._steps(cond, self._state(cond.shape[0]), 0, n, teacher, uniforms, temperature, want_logits)

    def generate(
        self,
        mel: torch.Tensor,
        *,
        n_samples: int | None = None,
        seed: int = 0,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``(B, frames, n_mels)`` -> ``(B, N)`` int64 mu-law classes (decode with :func:`mu_law_decode`)."""
        n = _n_samples(mel, n_samples, None, self.cfg.hop_length)
        no_teacher = np.zeros((0, mel.shape[0]), dtype=np.int64)
        classes, _ = self._run(mel, n, no_teacher, sampling_uniforms(n, mel.shape[0], seed), temperature, False)
        return torch.from_numpy(classes.T.copy())  # (N, B) -> (B, N)

    def generate_guided(
        self,
        mel: torch.Tensor,
        cost,
        *,
        candidates: int = 4,
        beams: int = 1,
        span: int = 2,
        lookback: int = 0,
        n_samples: int | None = None,
        seed: int = 0,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Guided sampling: every ``span`` frames, ``candidates`` continuations are drawn from the same
        state, and the one ``cost`` rates lowest is kept; all of them then go on from it. Every sample
        is still one the network drew; the guide only chooses among them.

        With ``beams`` > 1 it is a beam search over such spans: ``beams`` partial outputs are kept, each
        draws ``candidates / beams`` continuations, and the ``beams`` lowest total costs (summed over the
        spans) go on; the best at the end is returned. Either way it draws ``candidates`` streams.

        ``cost(classes, end)`` gets ``(B, streams, lookback + m)`` int64 classes, samples
        ``end - lookback - m .. end - 1`` of each stream (the ``m`` new ones last; negative positions
        hold the silence class), and returns ``(B, streams)`` costs. ``(B, frames, n_mels)`` ->
        ``(B, N)`` classes; ``candidates=1`` draws what :meth:`generate` draws."""
        if candidates < 1 or span < 1 or beams < 1 or candidates % beams:
            raise ValueError(
                f"candidates ({candidates}) and span ({span}) must be at least 1, and beams ({beams}) must "
                "divide candidates"
            )
        batch, hop = mel.shape[0], self.cfg.hop_length
        n = _n_samples(mel, n_samples, None, hop)
        streams, per_beam = candidates, candidates // beams  # per utterance
        cond = np.ascontiguousarray(np.repeat(self._conditioning(mel), streams, axis=0))  # (B * S, ...)
        state = self._state(batch * streams)
        uniforms = sampling_uniforms(n, batch * streams, seed)  # (N, B * S)
        no_teacher = np.zeros((0, batch * streams), dtype=np.int64)
        rows = np.arange(batch)[:, None]  # (B, 1)
        tails = np.full((batch, beams, lookback), self.silence, dtype=np.int64)  # each beam's last samples
        totals = np.zeros((batch, beams))  # the beams start alike, but each stream draws its own samples
        chunks, parents = [], []  # per span: (B, beams, m) samples, (B, beams) the beam each came from
        for t0 in range(0, n, span * hop):
            m = min(span * hop, n - t0)
            drawn, _ = self._steps(cond, state, t0, m, no_teacher, np.ascontiguousarray(uniforms[t0 : t0 + m]),
                                   temperature, False)
            drawn = drawn.T.reshape(batch, beams, per_beam, m)
            if streams > 1:
                past = np.broadcast_to(tails[:, :, None], (batch, beams, per_beam, lookback))
                classes = np.concatenate([past, drawn], axis=3).reshape(batch, streams, lookback + m)
                scores = np.asarray(cost(torch.from_numpy(classes), t0 + m), dtype=np.float64)  # (B, S)
                paths = (totals.reshape(batch, beams, 1) + scores.reshape(batch, beams, per_beam)).reshape(batch, streams)
                order = np.argsort(paths, axis=1, kind="stable")[:, :beams]  # (B, beams): streams in each utterance
                totals = np.take_along_axis(paths, order, axis=1)
                # every stream of a kept beam goes on from the stream that beam keeps
                keep = np.repeat((rows * streams + order).reshape(-1), per_beam)
                state[0][:] = state[0][:, keep]
                state[1][:] = state[1][keep]
                parent, pick = order // per_beam, order % per_beam
            else:
                parent = pick = np.zeros((batch, 1), dtype=np.int64)
            chosen = drawn[rows, parent, pick]  # (B, beams, m)
            history = np.concatenate([tails[rows, parent], chosen], axis=2)
            tails = history[:, :, history.shape[2] - lookback :]
            chunks.append(chosen)
            parents.append(parent)
        out = np.empty((batch, n), dtype=np.int64)
        beam = np.argmin(totals, axis=1)[:, None]  # (B, 1): the best at the end, then back along its parents
        for index in range(len(chunks) - 1, -1, -1):
            t0 = index * span * hop
            out[:, t0 : t0 + chunks[index].shape[2]] = chunks[index][rows, beam][:, 0]
            beam = parents[index][rows, beam]
        return torch.from_numpy(out)

    def teacher_forced_logits(self, mel: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The compiled loop fed ``inputs (B, N)`` instead of its samples -> ``(B, N, K)`` logits."""
        n = _n_samples(mel, None, inputs, self.cfg.hop_length)
        teacher = np.ascontiguousarray(inputs.T.numpy().astype(np.int64))  # (B, N) -> (N, B)
        _, logits = self._run(mel, n, teacher, sampling_uniforms(n, mel.shape[0], 0), 1.0, True)
        return torch.from_numpy(logits.transpose(1, 0, 2).copy())  # (N, B, K) -> (B, N, K)
