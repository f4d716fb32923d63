"""Griffin-Lim and mel inversion: convergence, quality against librosa, batching and reproducibility."""

from __future__ import annotations

import librosa
import numpy as np
import pytest
import torch

from audio.features import FeatureConfig, log_mel, make_window, mel_filterbank, preemphasis, spectrogram
from audio.inversion import (
    _inverse_stft,
    _istft,
    _stft,
    griffin_lim,
    mel_to_linear,
    mel_to_waveform,
    spectral_convergence,
)

CFG = FeatureConfig()  # 16 kHz, n_fft 400, hop 160, power 2


def speech_like(sample_rate: int, seconds: float, seed: int = 0) -> torch.Tensor:
    """A gliding harmonic tone plus a little noise, ``(samples,)`` float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(110 + 60 * t) / sample_rate
    wave = sum(0.3 / k * np.sin(k * phase) for k in range(1, 8)) + 0.02 * rng.standard_normal(t.size)
    return torch.from_numpy(wave.astype(np.float32))


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_griffin_lim_converges_and_matches_librosa_quality():
    wave = speech_like(CFG.sample_rate, 1.0)[None]
    power_spec, _ = spectrogram(wave, None, CFG)  # (1, frames, F), |X|^2
    magnitude = power_spec.sqrt()
    convergence = []
    for n_iter in (0, 2, 8, 32):
        out, out_lengths = griffin_lim(power_spec, CFG, n_iter=n_iter, generator=seeded(0))
        assert out.shape == (1, (power_spec.shape[1] - 1) * CFG.hop_length)
        assert out_lengths.tolist() == [out.shape[1]]
        convergence.append(float(spectral_convergence(out, magnitude, CFG)[0]))
    assert all(a > b for a, b in zip(convergence[:-1], convergence[1:], strict=True)), convergence
    assert convergence[0] > 0.4 and convergence[-1] < 0.12, convergence
    ref = librosa.griffinlim(
        magnitude[0].numpy().T,
        n_iter=32,
        hop_length=CFG.hop_length,
        n_fft=CFG.n_fft,
        random_state=0,
        length=out.shape[1],
    )
    ref_convergence = float(spectral_convergence(torch.from_numpy(ref)[None], magnitude, CFG)[0])
    assert convergence[-1] < 1.25 * ref_convergence, (convergence[-1], ref_convergence)


def test_griffin_lim_power_argument_and_reproducibility():
    wave = speech_like(CFG.sample_rate, 0.5, seed=1)[None]
    power_spec, _ = spectrogram(wave, None, CFG)
    a, _ = griffin_lim(power_spec, CFG, n_iter=4, generator=seeded(3))
    b, _ = griffin_lim(power_spec, CFG, n_iter=4, generator=seeded(3))
    c, _ = griffin_lim(power_spec, CFG, n_iter=4, generator=seeded(4))
    assert torch.equal(a, b) and not torch.allclose(a, c)
    # The same magnitude given as power 1 must give the same result.
    d, _ = griffin_lim(power_spec.sqrt(), CFG, n_iter=4, power=1.0, generator=seeded(3))
    torch.testing.assert_close(a, d, rtol=1e-4, atol=1e-5)


# The TTS framing (hop divides n_fft: Griffin-Lim's own overlap-add) and CFG's (it does not: torch.istft).
TTS_CFG = FeatureConfig(sample_rate=22050, n_fft=1024, hop_length=256, power=1.0, n_mels=80)


@pytest.mark.parametrize("cfg", [CFG, TTS_CFG], ids=["hop-160-of-400", "hop-256-of-1024"])
def test_inverse_stft_equals_torch_istft(cfg):
    window = make_window(cfg)
    spec = _stft(torch.randn(2, cfg.sample_rate // 2, generator=seeded(4)), window, cfg)
    spec = spec * torch.rand(spec.shape, generator=seeded(5))  # not a consistent STFT any more
    length = (spec.shape[-1] - 1) * cfg.hop_length
    ours = _inverse_stft(window, cfg, spec.shape[-1], length)(spec)
    torch.testing.assert_close(ours, _istft(spec, window, cfg, length), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cfg", [CFG, TTS_CFG], ids=["hop-160-of-400", "hop-256-of-1024"])
def test_griffin_lim_batch_equals_per_item(cfg):
    items = [speech_like(cfg.sample_rate, 0.5, seed=0), speech_like(cfg.sample_rate, 0.23, seed=1)]
    batch = torch.zeros(2, items[0].numel())
    batch[1, : items[1].numel()] = items[1]
    batch[0] = items[0]
    spec, frame_lengths = spectrogram(batch, torch.tensor([x.numel() for x in items]), cfg)
    out, out_lengths = griffin_lim(spec, cfg, lengths=frame_lengths, n_iter=6, init="zeros")
    assert out_lengths.tolist() == [(int(n) - 1) * cfg.hop_length for n in frame_lengths]
    for i, item in enumerate(items):
        alone_spec, _ = spectrogram(item[None], None, cfg)
        alone, _ = griffin_lim(alone_spec, cfg, n_iter=6, init="zeros")
        n = int(out_lengths[i])
        torch.testing.assert_close(out[i, :n], alone[0], rtol=1e-4, atol=1e-5)
        assert torch.all(out[i, n:] == 0)


def test_griffin_lim_removes_preemphasis():
    cfg = FeatureConfig(preemphasis=0.97)
    wave = speech_like(cfg.sample_rate, 0.6, seed=2)[None]
    spec, _ = spectrogram(wave, None, cfg)  # of the pre-emphasised wave
    out, _ = griffin_lim(spec, cfg, n_iter=32, generator=seeded(0))
    plain = FeatureConfig()
    target = spectrogram(wave, None, plain)[0].sqrt()
    assert float(spectral_convergence(out, target, plain)[0]) < 0.15  # de-emphasised: like the original
    assert float(spectral_convergence(preemphasis(out, 0.97), target, plain)[0]) > 0.5  # not still emphasised


@pytest.mark.parametrize(
    "envelope",
    [
        lambda f: torch.exp(-f / 2000),
        lambda f: torch.exp(-(((f - 1500) / 800) ** 2)) + 0.05,
        lambda f: 1 - f / 9000,
    ],
)
def test_mel_to_linear_recovers_a_smooth_spectrum(envelope):
    freqs = torch.linspace(0, CFG.sample_rate / 2, CFG.n_freqs)
    gain = 1.2 + torch.sin(torch.arange(40) / 5)  # (frames,)
    magnitude = (envelope(freqs)[None, :] * gain[:, None])[None]  # (1, frames, F)
    mel = magnitude.square() @ mel_filterbank(CFG)
    recovered = mel_to_linear(mel, CFG)
    assert recovered.shape == magnitude.shape and bool((recovered >= 0).all())
    # DC and Nyquist lie outside every mel filter, so nothing can recover them; compare the rest.
    inner = slice(1, CFG.n_freqs - 1)
    error = (recovered.sqrt() - magnitude)[..., inner].norm() / magnitude[..., inner].norm()
    assert float(error) < 0.02


def test_mel_to_linear_is_at_least_as_good_as_librosa():
    wave = speech_like(CFG.sample_rate, 0.5, seed=3)[None]
    power_spec, _ = spectrogram(wave, None, CFG)
    mel = power_spec @ mel_filterbank(CFG)
    ours = mel_to_linear(mel, CFG).sqrt()
    ref = librosa.feature.inverse.mel_to_stft(
        mel[0].numpy().T, sr=CFG.sample_rate, n_fft=CFG.n_fft, power=2.0
    )
    target = power_spec.sqrt()
    our_error = float((ours - target).norm() / target.norm())
    ref_error = float(np.linalg.norm(ref.T - target[0].numpy()) / target.norm())
    assert our_error < 1.05 * ref_error and our_error < 0.1, (our_error, ref_error)
    # The projection back onto the mel filters must fit the input closely.
    assert float(((ours.square() @ mel_filterbank(CFG)) - mel).norm() / mel.norm()) < 0.01


def test_mel_to_waveform_from_log_mel_round_trip():
    wave = speech_like(CFG.sample_rate, 0.8, seed=4)[None]
    feats, frame_lengths = log_mel(wave, None, CFG)
    out, out_lengths = mel_to_waveform(feats, CFG, lengths=frame_lengths, log=True, generator=seeded(0))
    assert out.shape == (1, 12800) and out_lengths.tolist() == [12800]
    again, again_lengths = log_mel(out, out_lengths, CFG)
    assert again_lengths.tolist() == frame_lengths.tolist()
    # Mean absolute log-mel difference: 0.1 nats is about 0.9 dB; random audio would be several nats off.
    assert float((again - feats).abs().mean()) < 0.2
    noise, _ = log_mel(torch.randn(1, 12800) * out.std(), None, CFG)
    assert float((noise - feats).abs().mean()) > 1.0
