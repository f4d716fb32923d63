"""Data augmentation on batches with lengths: SpecAugment masks, speed perturbation, additive noise at
a chosen SNR, telephone-band simulation, and vocal-tract-length perturbation (VTLP) of mel features.

Every random choice is drawn from an explicit ``torch.Generator`` (or an int seed), never from global
state, so a run is reproducible from its seed. Padding stays zero: masks fall inside each item's
valid frames, and waveform outputs are zero past each item's (new) length.
"""

from __future__ import annotations

from fractions import Fraction

import torch
import torchaudio.functional as AF

from audio.io import resample

__all__ = [
    "make_generator",
    "spec_augment",
    "vtlp_warp",
    "freq_blur",
    "change_speed",
    "speed_perturb",
    "add_noise",
    "telephone",
    "snr_db",
]

TELEPHONE_RATE = 8000  # Hz; narrowband telephony
TELEPHONE_BAND = (300.0, 3400.0)  # Hz
TELEPHONE_FILTER_WIDTH = 16  # zero crossings of the resampling sinc on each side


def make_generator(seed: int | torch.Generator) -> torch.Generator:
    """A CPU generator from a seed, or the generator itself."""
    if isinstance(seed, torch.Generator):
        return seed
    return torch.Generator().manual_seed(int(seed))


def _valid_mask(lengths: torch.Tensor, size: int) -> torch.Tensor:
    """``(B, size)`` bool, True below each length."""
    return torch.arange(size, device=lengths.device)[None, :] < lengths[:, None]


def _spans(
    lengths: torch.Tensor, count: int, max_width: int | torch.Tensor, size: int, gen: torch.Generator
) -> torch.Tensor:
    """``(B, size)`` bool union of ``count`` random spans per item, each of width in ``[0, max_width]``
    and lying inside ``[0, lengths[b])``."""
    batch = lengths.shape[0]
    mask = torch.zeros(batch, size, dtype=torch.bool)
    if count == 0:
        return mask
    limit = torch.minimum(torch.as_tensor(max_width, dtype=torch.long).expand(batch), lengths)  # (B,)
    positions = torch.arange(size)[None, :]
    for _ in range(count):
        width = (torch.rand(batch, generator=gen) * (limit + 1).to(torch.float64)).long().clamp(max=limit)
        start = (torch.rand(batch, generator=gen) * (lengths - width + 1).to(torch.float64)).long()
        start = torch.minimum(start, lengths - width)
        mask |= (positions >= start[:, None]) & (positions < (start + width)[:, None])
    return mask


def spec_augment(
    feats: torch.Tensor,
    lengths: torch.Tensor,
    *,
    generator: torch.Generator | int,
    num_time_masks: int = 2,
    max_time_width: int = 40,
    max_time_ratio: float = 0.2,
    num_freq_masks: int = 2,
    max_freq_width: int = 15,
    mask_value: float = 0.0,
) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) time and frequency masking, without time warping.

    Args:
        feats: ``(B, frames, feats)``. lengths: ``(B,)`` valid frames.
        max_time_width: frames; also capped at ``max_time_ratio`` of each item's length.
        mask_value: written into masked cells (0 is the mean of normalised features).
    Returns:
        A masked copy, ``(B, frames, feats)``. Time masks lie inside each item's valid frames, and
        frequency masks cover only valid frames, so padding is untouched.
    """
    gen = make_generator(generator)
    batch, frames, dim = feats.shape
    lengths = lengths.to(torch.long).cpu()
    time_cap = torch.minimum(
        torch.full((batch,), max_time_width, dtype=torch.long), (lengths.double() * max_time_ratio).long()
    )
    time_mask = _spans(lengths, num_time_masks, time_cap, frames, gen)  # (B, T)
    freq_mask = _spans(torch.full((batch,), dim, dtype=torch.long), num_freq_masks, max_freq_width, dim, gen)
    valid = _valid_mask(lengths, frames)  # (B, T)
    cells = time_mask[:, :, None] | (freq_mask[:, None, :] & valid[:, :, None])  # (B, T, C)
    return feats.masked_fill(cells.to(feats.device), mask_value)


def change_speed(
    wave: torch.Tensor, lengths: torch.Tensor, factor: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Play ``factor`` times faster by resampling (tempo and pitch both change, as Kaldi/sox ``speed``).

    Args: wave ``(B, samples)``; lengths ``(B,)`` samples; factor > 0 (1.1 is faster and shorter).
    Returns: ``(B, new_samples)`` and new lengths ``ceil(lengths / factor)``; zero past each length.
    """
    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    ratio = Fraction(factor).limit_denominator(100)
    if ratio == 1:
        return wave, lengths
    # Treat the audio as if recorded at factor * rate and bring it back to the rate: len / factor samples.
    out = resample(wave, ratio.numerator, ratio.denominator)
    new_lengths = -torch.div(-lengths * ratio.denominator, ratio.numerator, rounding_mode="floor")
    new_lengths = new_lengths.clamp(max=out.shape[-1])
    return out * _valid_mask(new_lengths, out.shape[-1]).to(out.dtype), new_lengths


def speed_perturb(
    wave: torch.Tensor,
    lengths: torch.Tensor,
    *,
    generator: torch.Generator | int,
    factors: tuple[float, ...] = (0.9, 1.0, 1.1),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each item gets a speed factor drawn uniformly from ``factors`` (see :func:`change_speed`).

    Args: wave ``(B, samples)``; lengths ``(B,)`` samples.
    Returns: ``(B, new_samples)`` zero-padded, new lengths ``(B,)``, and the chosen factors ``(B,)``.
    """
    gen = make_generator(generator)
    batch = wave.shape[0]
    choice = torch.randint(len(factors), (batch,), generator=gen)
    chosen = torch.tensor(factors, dtype=torch.float64)[choice]
    parts, new_lengths = [None] * batch, torch.zeros(batch, dtype=torch.long)
    for k, factor in enumerate(factors):
        rows = (choice == k).nonzero().flatten()
        if rows.numel() == 0:
            continue
        longest = int(lengths[rows].max())
        out, out_lengths = change_speed(wave[rows, :longest], lengths[rows], factor)
        for j, row in enumerate(rows.tolist()):
            parts[row] = out[j, : out_lengths[j]]
            new_lengths[row] = out_lengths[j]
    padded = torch.zeros(batch, int(new_lengths.max()), dtype=wave.dtype, device=wave.device)
    for row, part in enumerate(parts):
        padded[row, : part.shape[0]] = part
    return padded, new_lengths, chosen


def snr_db(clean: torch.Tensor, noisy: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Achieved SNR in dB, ``10 log10(P(clean) / P(noisy - clean))``, over valid samples. ``(B,)``."""
    noise = noisy - clean
    if lengths is not None:
        valid = _valid_mask(lengths.to(clean.device), clean.shape[-1]).to(clean.dtype)
        clean, noise = clean * valid, noise * valid
    ratio = clean.double().square().sum(-1) / noise.double().square().sum(-1)
    return 10 * torch.log10(ratio)


def add_noise(
    wave: torch.Tensor,
    lengths: torch.Tensor,
    *,
    snr: float | torch.Tensor,
    generator: torch.Generator | int,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Add noise scaled to ``snr`` dB relative to each item's power over its valid samples.

    Args:
        wave: ``(B, samples)``. lengths: ``(B,)`` samples.
        snr: dB, a number or ``(B,)`` tensor.
        noise: None for white Gaussian noise, or a ``(noise_samples,)`` recording; each item takes a
            random excerpt of it (looped if shorter than the item).
    Returns:
        ``(B, samples)``, zero past each length. Silent items are returned unchanged.
    """
    gen = make_generator(generator)
    batch, size = wave.shape
    lengths = lengths.to(torch.long).cpu()
    valid = _valid_mask(lengths, size).to(wave.dtype)
    if noise is None:
        added = torch.randn(batch, size, generator=gen, dtype=wave.dtype)
    else:
        noise = noise.reshape(-1).to(wave.dtype).cpu()
        if noise.numel() == 0:
            raise ValueError("noise recording is empty")
        offsets = torch.randint(noise.numel(), (batch,), generator=gen)
        index = (offsets[:, None] + torch.arange(size)[None, :]) % noise.numel()
        added = noise[index]  # (B, samples)
    added = added * valid
    signal_power = (wave.cpu().double() * valid).square().sum(-1)
    noise_power = added.double().square().sum(-1).clamp(min=1e-20)
    snr = torch.as_tensor(snr, dtype=torch.float64).expand(batch)
    scale = torch.sqrt(signal_power / (noise_power * 10 ** (snr / 10)))  # (B,)
    return wave + (added * scale[:, None].to(wave.dtype)).to(wave.device)


def telephone(
    wave: torch.Tensor, lengths: torch.Tensor, sample_rate: int, *, mu_law: bool = True
) -> torch.Tensor:
    """Narrowband telephone channel: down to 8 kHz, 300-3400 Hz band-pass, optional 8-bit mu-law
    companding, back to ``sample_rate``. Deterministic, so it needs no generator.

    Args: wave ``(B, samples)`` in [-1, 1]; lengths ``(B,)`` samples.
    Returns: ``(B, samples)`` at ``sample_rate``, zero past each length; nothing above 4 kHz survives.
    """
    size = wave.shape[-1]
    # Longer sinc filters than the default: the short one lets ~1e-3 of the energy through above 4 kHz.
    narrow = AF.resample(wave, sample_rate, TELEPHONE_RATE, lowpass_filter_width=TELEPHONE_FILTER_WIDTH)
    narrow = AF.highpass_biquad(narrow, TELEPHONE_RATE, TELEPHONE_BAND[0])
    narrow = AF.lowpass_biquad(narrow, TELEPHONE_RATE, TELEPHONE_BAND[1])
    if mu_law:
        codes = AF.mu_law_encoding(narrow.clamp(-1.0, 1.0), quantization_channels=256)
        narrow = AF.mu_law_decoding(codes, quantization_channels=256).to(wave.dtype)
    out = AF.resample(narrow, TELEPHONE_RATE, sample_rate, lowpass_filter_width=TELEPHONE_FILTER_WIDTH)
    if out.shape[-1] < size:
        out = torch.nn.functional.pad(out, (0, size - out.shape[-1]))
    out = out[..., :size]
    return out * _valid_mask(lengths.to(out.device), size).to(out.dtype)


def vtlp_warp(
    feats: torch.Tensor,
    alphas: torch.Tensor,
    *,
    fmin: float,
    fmax: float,
    scale: str = "slaney",
    boundary_hz: float | None = None,
) -> torch.Tensor:
    """Vocal-tract-length perturbation (Jaitly & Hinton 2013) of mel-band features.

    Each item's frequency axis is warped piecewise-linearly: ``f -> alpha * f`` up to a boundary, then
    a straight line to ``fmax`` (which stays fixed), so formants move as if the vocal tract were
    ``1/alpha`` times as long while the band edges stay put. Band ``i`` of the output takes the input's
    value at the frequency that maps onto band ``i``'s centre, linearly interpolated between bands.

    Args:
        feats: ``(B, frames, n_mels)`` mel-band features (power, magnitude or log; interpolated as is).
        alphas: ``(B,)`` warp factors (1 = unchanged; Jaitly & Hinton draw from 0.9-1.1).
        fmin, fmax, scale: the mel filterbank's range and scale (``FeatureConfig.fmin/mel_fmax/mel_scale``).
        boundary_hz: where the slope changes, before warping (default ``0.8 * fmax``).
    Returns:
        The warped features, same shape; padding frames stay as they were (zero stays zero).
    """
    from audio.features import mel_frequencies

    batch, _, n_mels = feats.shape
    centres = mel_frequencies(n_mels + 2, fmin=fmin, fmax=fmax, scale=scale)[1:-1].double()  # (n_mels,)
    alphas = alphas.double().reshape(batch, 1)
    bound = (0.8 * fmax if boundary_hz is None else boundary_hz) * torch.clamp(alphas, max=1.0) / alphas
    knee = alphas * bound  # where the boundary lands after warping
    target = centres[None, :]  # (1, n_mels): output band centres; find the source frequency of each
    source = torch.where(
        target <= knee, target / alphas, fmax - (fmax - target) * (fmax - bound) / (fmax - knee)
    )
    # Fractional band index of each source frequency, by piecewise-linear interpolation over the centres.
    pos = torch.searchsorted(centres.contiguous(), source.clamp(centres[0], centres[-1]).contiguous())
    pos = pos.clamp(1, n_mels - 1)
    lo_f, hi_f = centres[pos - 1], centres[pos]
    index = (pos - 1) + (source.clamp(centres[0], centres[-1]) - lo_f) / (hi_f - lo_f)  # (B, n_mels)
    lo = index.floor().long().clamp(0, n_mels - 1)
    hi = (lo + 1).clamp(max=n_mels - 1)
    frac = (index - lo).to(feats.dtype)[:, None, :]
    gather = lambda idx: torch.gather(feats, 2, idx[:, None, :].expand(-1, feats.shape[1], -1))  # noqa: E731
    return gather(lo) * (1 - frac) + gather(hi) * frac


def freq_blur(feats: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Smooth each item's features across bands with a Gaussian of ``sigmas[b]`` bands (0: unchanged).

    A cruder spectrum: harmonics and narrow formant peaks are spread over neighbouring bands, so a
    recogniser trained on it leans less on a synthesiser's exact spectral fine structure. Each output band
    is a weighted mean of the input bands (weights renormalised at the edges, so a flat spectrum stays flat).

    Args:
        feats: ``(B, frames, n_mels)`` band features (log-mel or any other).
        sigmas: ``(B,)`` widths in bands.
    Returns:
        The smoothed features, same shape; zero padding frames stay zero.
    """
    n_mels = feats.shape[-1]
    bands = torch.arange(n_mels, dtype=torch.float64, device=feats.device)
    dist2 = (bands[:, None] - bands[None, :]).square()  # (M, M)
    sig = sigmas.to(device=feats.device, dtype=torch.float64).clamp(min=1e-6)[:, None, None]
    weights = torch.exp(-dist2[None] / (2 * sig.square()))  # (B, M_out, M_in)
    weights = weights / weights.sum(-1, keepdim=True)
    return torch.bmm(feats, weights.transpose(1, 2).to(feats.dtype))
