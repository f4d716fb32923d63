"""Augmentations: reproducible from a seed, and each does what it claims (SNR, band, masks, speed)."""

from __future__ import annotations

import math

import pytest
import torch

from audio.augment import (
    add_noise,
    change_speed,
    freq_blur,
    snr_db,
    spec_augment,
    speed_perturb,
    telephone,
    vtlp_warp,
)

SR = 16000


def tone(freq: float, seconds: float, sample_rate: int = SR, amplitude: float = 0.5) -> torch.Tensor:
    t = torch.arange(int(seconds * sample_rate), dtype=torch.float64) / sample_rate
    return (amplitude * torch.sin(2 * math.pi * freq * t)).float()


def peak_hz(wave: torch.Tensor, sample_rate: int = SR) -> float:
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(wave.numel(), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * sample_rate / wave.numel()


def band_energy(wave: torch.Tensor, low: float, high: float, sample_rate: int = SR) -> float:
    spectrum = torch.fft.rfft(wave.double()).abs().square()
    freqs = torch.fft.rfftfreq(wave.numel(), 1 / sample_rate)
    return float(spectrum[(freqs >= low) & (freqs < high)].sum())


def padded(items: list[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([x.shape[0] for x in items])
    out = torch.full((len(items), int(lengths.max()), *items[0].shape[1:]), fill)
    for i, x in enumerate(items):
        out[i, : x.shape[0]] = x
    return out, lengths


# --- SpecAugment -----------------------------------------------------------------------------------


def test_spec_augment_masks_stay_inside_valid_frames():
    feats, lengths = padded([torch.randn(n, 40) + 5 for n in (300, 120, 37, 9)], fill=7.0)  # sentinel padding
    for seed in range(20):
        out = spec_augment(
            feats,
            lengths,
            generator=seed,
            num_time_masks=2,
            max_time_width=40,
            num_freq_masks=2,
            max_freq_width=10,
            mask_value=0.0,
        )
        masked = out == 0.0  # (B, T, C); real values are never exactly 0
        for i, n in enumerate(lengths.tolist()):
            assert torch.all(out[i, n:] == 7.0)  # padding untouched
            time_masked = masked[i, :n].all(dim=1)  # frames masked across every bin
            freq_masked = masked[i, :n].all(dim=0)  # bins masked across every valid frame
            # Every masked cell is explained by a full time or frequency mask.
            assert torch.equal(masked[i, :n], time_masked[:, None] | freq_masked[None, :])
            assert int(time_masked.sum()) <= 2 * min(40, int(0.2 * n))
            assert int(freq_masked.sum()) <= 2 * 10 or bool(time_masked.all())
    out = spec_augment(feats, lengths, generator=0, max_time_width=40, max_freq_width=10)
    assert int((out == 0).sum()) > 0  # the masks do mask something


def test_spec_augment_is_reproducible_from_seed_or_generator():
    feats, lengths = padded([torch.randn(200, 80), torch.randn(150, 80)])
    a = spec_augment(feats, lengths, generator=123)
    b = spec_augment(feats, lengths, generator=torch.Generator().manual_seed(123))
    c = spec_augment(feats, lengths, generator=124)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(spec_augment(feats, lengths, generator=1, num_time_masks=0, num_freq_masks=0), feats)


# --- speed -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("factor", [0.9, 1.1, 1.25])
def test_change_speed_scales_length_and_pitch(factor):
    items = [tone(440.0, 1.0), tone(440.0, 0.37)]
    wave, lengths = padded(items)
    out, new_lengths = change_speed(wave, lengths, factor)
    assert new_lengths.tolist() == [math.ceil(n / factor) for n in lengths.tolist()]
    assert out.shape == (2, int(new_lengths.max()))
    assert peak_hz(out[0, : new_lengths[0]]) == pytest.approx(440.0 * factor, abs=2.0)
    assert torch.all(out[1, new_lengths[1] :] == 0)
    alone, alone_len = change_speed(items[1][None], lengths[1:], factor)
    assert int(alone_len[0]) == int(new_lengths[1])
    torch.testing.assert_close(out[1, : new_lengths[1]], alone[0], rtol=1e-5, atol=1e-6)
    same, same_len = change_speed(wave, lengths, 1.0)
    assert same is wave and same_len is lengths


def test_speed_perturb_is_reproducible_and_consistent():
    items = [tone(300.0 + 50 * i, 0.2 + 0.05 * i) for i in range(6)]
    wave, lengths = padded(items)
    out, new_lengths, factors = speed_perturb(wave, lengths, generator=7)
    out2, new_lengths2, factors2 = speed_perturb(wave, lengths, generator=torch.Generator().manual_seed(7))
    assert (
        torch.equal(out, out2) and torch.equal(new_lengths, new_lengths2) and torch.equal(factors, factors2)
    )
    assert set(factors.tolist()) <= {0.9, 1.0, 1.1} and len(set(factors.tolist())) > 1
    for i, f in enumerate(factors.tolist()):
        expected, expected_len = change_speed(items[i][None], lengths[i : i + 1], f)
        assert int(new_lengths[i]) == int(expected_len[0]) == math.ceil(lengths[i].item() / f)
        torch.testing.assert_close(
            out[i, : new_lengths[i]], expected[0, : expected_len[0]], rtol=1e-5, atol=1e-6
        )
        assert torch.all(out[i, new_lengths[i] :] == 0)


# --- noise -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("snr", [0.0, 10.0, 23.5])
def test_add_white_noise_hits_the_snr(snr):
    wave, lengths = padded([tone(440.0, 0.5), tone(1000.0, 0.3, amplitude=0.05)])
    noisy = add_noise(wave, lengths, snr=snr, generator=0)
    achieved = snr_db(wave, noisy, lengths)
    assert torch.all((achieved - snr).abs() < 0.1), achieved
    assert torch.all(noisy[1, lengths[1] :] == 0)  # no noise in the padding
    assert torch.equal(noisy, add_noise(wave, lengths, snr=snr, generator=0))
    assert not torch.equal(noisy, add_noise(wave, lengths, snr=snr, generator=1))


def test_add_recorded_noise_per_item_snr_and_silence():
    noise = tone(3000.0, 0.1) + 0.1 * torch.randn(1600, generator=torch.Generator().manual_seed(0))
    wave, lengths = padded([tone(440.0, 0.5), tone(200.0, 0.25), torch.zeros(800)])
    snrs = torch.tensor([5.0, 15.0, 10.0])
    noisy = add_noise(wave, lengths, snr=snrs, generator=3, noise=noise)  # noise shorter than items: looped
    achieved = snr_db(wave[:2], noisy[:2], lengths[:2])
    assert torch.all((achieved - snrs[:2]).abs() < 0.1), achieved
    assert torch.equal(noisy[2], wave[2])  # a silent item has no level to set the noise against
    added = noisy[0, : lengths[0]] - wave[0, : lengths[0]]
    assert peak_hz(added) == pytest.approx(3000.0, abs=5.0)  # it really is the given recording


# --- telephone -------------------------------------------------------------------------------------


def test_telephone_band_limits_and_keeps_the_voice_band():
    white = 0.3 * torch.randn(SR, generator=torch.Generator().manual_seed(0)).clamp(-3, 3)
    wave, lengths = padded([white, tone(1000.0, 0.5)])
    out = telephone(wave, lengths, SR)
    assert out.shape == wave.shape and torch.all(out[1, lengths[1] :] == 0)
    phone = out[0]
    total = band_energy(phone, 0, SR / 2)
    assert band_energy(phone, 4000, SR / 2) / total < 1e-5  # ~nothing above 4 kHz (-50 dB)
    assert band_energy(phone, 0, 150) / total < 0.01  # and little below the 300 Hz band edge
    in_band = band_energy(phone, 500, 3000) / band_energy(white, 500, 3000)
    assert 0.7 < in_band < 1.3
    gain = (
        out[1, 800 : lengths[1] - 800].pow(2).mean().sqrt()
        / wave[1, 800 : lengths[1] - 800].pow(2).mean().sqrt()
    )
    assert abs(20 * math.log10(float(gain))) < 1.0  # a 1 kHz tone passes at about unit gain


def test_telephone_mu_law_adds_quantisation_noise_only():
    wave = tone(800.0, 0.3)[None]
    lengths = torch.tensor([wave.shape[1]])
    clean = telephone(wave, lengths, SR, mu_law=False)
    coded = telephone(wave, lengths, SR, mu_law=True)
    assert not torch.equal(clean, coded)
    assert 25.0 < float(snr_db(clean, coded)[0]) < 50.0  # 8-bit mu-law: roughly 35-40 dB SQNR
    assert torch.equal(coded, telephone(wave, lengths, SR, mu_law=True))  # deterministic


# ------------------------------------------------------------------------------------------- VTLP


def _band_peak_feats(peak_band: int, n_mels: int = 40, frames: int = 6) -> torch.Tensor:
    bands = torch.arange(n_mels, dtype=torch.float32)
    bump = torch.exp(-0.5 * ((bands - peak_band) / 1.5) ** 2)
    return bump.expand(1, frames, n_mels).clone()


def _peak_hz(feats: torch.Tensor, fmax: float) -> float:
    from audio.features import mel_frequencies

    n_mels = feats.shape[-1]
    centres = mel_frequencies(n_mels + 2, fmin=0.0, fmax=fmax)[1:-1]
    # centroid of the bump, in Hz, so sub-band shifts count
    weights = feats[0, 0]
    return float((weights * centres.float()).sum() / weights.sum())


def test_vtlp_with_alpha_one_is_the_identity():
    feats = torch.randn(3, 7, 40)
    out = vtlp_warp(feats, torch.ones(3), fmin=0.0, fmax=8000.0)
    torch.testing.assert_close(out, feats, atol=1e-5, rtol=0)


@pytest.mark.parametrize("alpha", [0.9, 1.1])
def test_vtlp_moves_a_formant_by_alpha_below_the_boundary(alpha):
    feats = _band_peak_feats(20)  # a bump around 1.5 kHz, well below the 6.4 kHz boundary
    before = _peak_hz(feats, 8000.0)
    after = _peak_hz(vtlp_warp(feats, torch.tensor([alpha]), fmin=0.0, fmax=8000.0), 8000.0)
    assert after / before == pytest.approx(alpha, rel=0.03)


def test_vtlp_pins_fmax_and_is_per_item():
    high = _band_peak_feats(38)  # ~6.7 kHz, above the boundary: moves much less than alpha would say
    before = _peak_hz(high, 8000.0)
    after = _peak_hz(vtlp_warp(high, torch.tensor([1.1]), fmin=0.0, fmax=8000.0), 8000.0)
    assert 1.0 < after / before < 1.06  # vs 1.1 below the boundary
    feats = torch.rand(2, 5, 40)
    alphas = torch.tensor([0.9, 1.1])
    out = vtlp_warp(feats, alphas, fmin=0.0, fmax=8000.0)
    for i in range(2):
        alone = vtlp_warp(feats[i : i + 1], alphas[i : i + 1], fmin=0.0, fmax=8000.0)
        torch.testing.assert_close(out[i : i + 1], alone)
    zero = torch.zeros(1, 4, 40)
    assert torch.equal(vtlp_warp(zero, torch.tensor([1.1]), fmin=0.0, fmax=8000.0), zero)


def test_freq_blur_smooths_across_bands_and_keeps_what_it_should():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 40, generator=g)
    x[:, 4:] = 0.0  # padding frames
    y = freq_blur(x, torch.tensor([0.0, 1.0, 3.0]))
    assert torch.allclose(y[0], x[0], atol=1e-6)  # width 0: unchanged
    assert y[2, :4].std() < y[1, :4].std() < x[1, :4].std()  # wider is smoother
    assert torch.equal(y[:, 4:], torch.zeros_like(y[:, 4:]))  # zero stays zero
    flat = torch.full((1, 2, 40), -3.0)
    assert torch.allclose(freq_blur(flat, torch.tensor([2.0])), flat, atol=1e-5)  # edges renormalised
    peak = torch.zeros(1, 1, 40)
    peak[0, 0, 20] = 1.0
    spread = freq_blur(peak, torch.tensor([2.0]))[0, 0]
    assert spread.sum() == pytest.approx(1.0, abs=1e-5) and spread.argmax() == 20 and spread[20] < 0.25
