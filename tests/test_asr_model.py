"""ConvBiLSTM and Recognizer: shapes and lengths, the backward pass, batch-size independence at
inference, and the feature normalisation that travels with the weights. Plus the augmentation policy."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from asr.augment import AugmentConfig, WaveAugment, colored_noise, reverberate, synthetic_rir
from asr.model import ConvBiLSTM, ConvBiLSTMConfig
from asr.recognizer import Recognizer
from audio.features import FeatureConfig, FeatureExtractor
from audio.stats import FeatureStats

SR = 16000


def tiny_config(**kw) -> ConvBiLSTMConfig:
    base = dict(n_mels=20, vocab_size=29, conv_channels=(16,), conv_kernels=(5,), conv_strides=(2,),
                lstm_hidden=12, lstm_layers=2, dropout=0.0)
    return ConvBiLSTMConfig(**{**base, **kw})


def padded_batch(lengths: list[int], dim: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``(B, max(lengths), dim)`` features, zero past each length."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(lengths), max(lengths), dim, generator=gen)
    lens = torch.tensor(lengths)
    x = x * (torch.arange(x.shape[1])[None, :] < lens[:, None])[:, :, None]
    return x, lens


def speech_like(seconds: float, seed: int) -> torch.Tensor:
    """A wave with harmonic structure and an amplitude envelope, ``(samples,)``."""
    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(int(seconds * SR)) / SR
    f0 = 100 + 60 * torch.rand((), generator=gen)
    wave = sum(torch.sin(2 * math.pi * k * f0 * t) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3 * t)
    return 0.1 * wave * envelope + 0.003 * torch.randn(t.numel(), generator=gen)


@pytest.mark.parametrize(
    "kernels, strides",
    [((3,), (1,)), ((5,), (2,)), ((5, 5), (2, 2)), ((7, 3), (3, 1)), ((4,), (2,))],
)
def test_output_shapes_and_lengths(kernels, strides):
    cfg = tiny_config(conv_channels=(16,) * len(kernels), conv_kernels=kernels, conv_strides=strides)
    model = ConvBiLSTM(cfg).eval()
    feats, lens = padded_batch([37, 50, 11], cfg.n_mels)
    log_probs, out_lens = model(feats, lens)
    expected = lens.clone()
    for k, s in zip(kernels, strides, strict=True):
        # Conv1d with padding k // 2: floor((L + 2 (k // 2) - k) / s) + 1, i.e. ceil(L / s) for odd k.
        expected = (expected + 2 * (k // 2) - k) // s + 1
    assert torch.equal(out_lens, expected)
    assert torch.equal(model.output_lengths(lens), expected)
    assert log_probs.shape == (3, int(expected.max()), cfg.vocab_size)
    assert log_probs.dtype == torch.float32
    # Log-softmax over the vocabulary.
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(log_probs.shape[:2]))
    assert cfg.subsampling == math.prod(strides)


def test_odd_kernel_lengths_are_ceil_of_length_over_subsampling():
    cfg = tiny_config(conv_channels=(8, 8), conv_kernels=(5, 3), conv_strides=(2, 2))
    model = ConvBiLSTM(cfg)
    lens = torch.arange(1, 40)
    assert torch.equal(model.output_lengths(lens), -(-lens // cfg.subsampling))


def test_backward_gives_finite_gradients_for_every_parameter():
    cfg = tiny_config(dropout=0.1)
    model = ConvBiLSTM(cfg).train()
    feats, lens = padded_batch([30, 22], cfg.n_mels)
    log_probs, out_lens = model(feats, lens)
    targets = torch.tensor([[3, 4, 5, 6], [7, 8, 1, 9]])
    loss = torch.nn.functional.ctc_loss(log_probs.transpose(0, 1), targets, out_lens, torch.tensor([4, 4]))
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_eval_padded_batch_equals_each_utterance_alone():
    cfg = tiny_config(conv_channels=(16, 16), conv_kernels=(5, 3), conv_strides=(2, 2))
    torch.manual_seed(0)
    model = ConvBiLSTM(cfg)
    # Non-trivial BatchNorm running statistics, so that normalising the padding would show.
    model.train()
    for seed in range(3):
        model(*padded_batch([40, 33], cfg.n_mels, seed=10 + seed))
    model.eval()
    lengths = [41, 17, 64, 30]
    feats, lens = padded_batch(lengths, cfg.n_mels, seed=1)
    with torch.no_grad():
        batch_out, batch_lens = model(feats, lens)
        for i, n in enumerate(lengths):
            alone, alone_lens = model(feats[i : i + 1, :n], lens[i : i + 1])
            assert int(alone_lens[0]) == int(batch_lens[i])
            m = int(alone_lens[0])
            torch.testing.assert_close(batch_out[i, :m], alone[0], atol=1e-5, rtol=0)


def _stats(dim: int) -> FeatureStats:
    gen = torch.Generator().manual_seed(3)
    mean = (-8 + torch.randn(dim, generator=gen)).tolist()
    std = (1.5 + torch.rand(dim, generator=gen)).tolist()
    return FeatureStats(mean=tuple(mean), std=tuple(std), count=1000)


def test_recognizer_features_are_normalised_with_the_stats_and_zero_past_each_length():
    fcfg = FeatureConfig(n_mels=20)
    stats = _stats(20)
    rec = Recognizer(ConvBiLSTM(tiny_config()), fcfg, stats)
    waves = torch.zeros(2, 8000)
    waves[0] = speech_like(0.5, seed=0)
    waves[1, :4800] = speech_like(0.3, seed=1)
    lens = torch.tensor([8000, 4800])
    feats, frame_lens = rec.features(waves, lens)
    raw, raw_lens = FeatureExtractor(fcfg, "logmel")(waves, lens)
    assert torch.equal(frame_lens, raw_lens)
    assert frame_lens.tolist() == [51, 31]
    expected = (raw - torch.tensor(stats.mean)) / torch.tensor(stats.std)
    torch.testing.assert_close(feats[0], expected[0])
    torch.testing.assert_close(feats[1, :31], expected[1, :31])
    assert torch.all(feats[1, 31:] == 0)
    # Changing the buffers changes the normalisation: the stats are really used from the buffers.
    rec.feat_mean.add_(1.0)
    torch.testing.assert_close(rec.features(waves, lens)[0][0], expected[0] - 1 / torch.tensor(stats.std))


def test_utterance_cmn_centres_each_utterance_and_removes_a_gain():
    fcfg = FeatureConfig(n_mels=20)
    rec = Recognizer(ConvBiLSTM(tiny_config()), fcfg, _stats(20), utterance_cmn=True)
    waves = torch.zeros(2, 8000)
    waves[0] = speech_like(0.5, seed=0)
    waves[1, :4800] = speech_like(0.3, seed=1)
    lens = torch.tensor([8000, 4800])
    feats, frame_lens = rec.features(waves, lens)
    torch.testing.assert_close(feats[0].mean(0), torch.zeros(20), atol=1e-5, rtol=0)
    torch.testing.assert_close(feats[1, :31].mean(0), torch.zeros(20), atol=1e-5, rtol=0)  # valid frames only
    assert torch.all(feats[1, 31:] == 0)
    # The spread is the globally normalised one, centred.
    plain = Recognizer(ConvBiLSTM(tiny_config()), fcfg, _stats(20)).features(waves, lens)[0]
    torch.testing.assert_close(feats[1, :31], plain[1, :31] - plain[1, :31].mean(0))
    # A gain adds the same constant to every log-mel band: each utterance's own mean takes it off.
    torch.testing.assert_close(rec.features(waves * 0.25, lens)[0], feats, atol=1e-4, rtol=0)
    assert not torch.allclose(plain, Recognizer(ConvBiLSTM(tiny_config()), fcfg, _stats(20)).features(
        waves * 0.25, lens)[0], atol=1e-2)


def test_recognizer_refuses_stats_of_another_feature_size():
    with pytest.raises(ValueError, match="80 dims"):
        Recognizer(ConvBiLSTM(tiny_config()), FeatureConfig(n_mels=20), _stats(80))


def test_recognizer_state_dict_carries_the_stats():
    fcfg = FeatureConfig(n_mels=20)
    stats = _stats(20)
    torch.manual_seed(0)
    rec = Recognizer(ConvBiLSTM(tiny_config()), fcfg, stats).eval()
    state = rec.state_dict()
    assert torch.equal(state["feat_mean"], torch.tensor(stats.mean, dtype=torch.float32))
    assert torch.equal(state["feat_std"], torch.tensor(stats.std, dtype=torch.float32))
    torch.manual_seed(1)
    fresh = Recognizer(ConvBiLSTM(tiny_config()), fcfg)  # no stats: identity normalisation
    assert torch.all(fresh.feat_mean == 0)
    fresh.load_state_dict(state)
    fresh.eval()
    wave = speech_like(0.4, seed=2)[None]
    lens = torch.tensor([wave.shape[1]])
    with torch.no_grad():
        torch.testing.assert_close(fresh(wave, lens)[0], rec(wave, lens)[0], atol=0, rtol=0)


def test_recognizer_padded_batch_equals_each_wave_alone():
    fcfg = FeatureConfig(n_mels=20)
    torch.manual_seed(0)
    rec = Recognizer(ConvBiLSTM(tiny_config(conv_strides=(3,))), fcfg, _stats(20)).eval()
    assert rec.frame_shift == pytest.approx(0.03)
    waves = [speech_like(s, seed=i) for i, s in enumerate((0.61, 0.25, 0.4))]
    lens = torch.tensor([w.numel() for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    batch[1, int(lens[1]):] = 0.7  # padding content must not matter
    with torch.no_grad():
        out, out_lens = rec(batch, lens)
        for i, w in enumerate(waves):
            alone, alone_lens = rec(w[None], lens[i : i + 1])
            n = int(alone_lens[0])
            assert n == int(out_lens[i])
            torch.testing.assert_close(out[i, :n], alone[0], atol=1e-5, rtol=0)


def test_spec_augment_only_when_training_with_a_seed():
    fcfg = FeatureConfig(n_mels=20)
    rec = Recognizer(ConvBiLSTM(tiny_config()), fcfg, _stats(20),
                     spec_augment_args=dict(num_time_masks=2, max_time_width=10, num_freq_masks=2, max_freq_width=5))
    wave = speech_like(0.5, seed=0)[None]
    lens = torch.tensor([wave.shape[1]])
    rec.eval()
    with torch.no_grad():
        clean = rec(wave, lens)[0]
        assert torch.equal(rec(wave, lens, augment_seed=1)[0], clean)
        rec.train()
        rec.model.eval()  # keep BatchNorm on running stats so only the masking differs
        a, b = rec(wave, lens, augment_seed=1)[0], rec(wave, lens, augment_seed=1)[0]
        assert torch.equal(a, b)
        assert not torch.allclose(a, clean)
        assert not torch.allclose(rec(wave, lens, augment_seed=2)[0], a)


# ------------------------------------------------------------------------------------- augmentation

ALL_ON = AugmentConfig(speed_prob=1.0, eq_prob=1.0, reverb_prob=1.0, telephone_prob=1.0, noise_prob=1.0)


def test_wave_augment_is_reproducible_given_the_torch_seed():
    cfg = AugmentConfig(speed_prob=0.5, eq_prob=0.5, reverb_prob=0.5, telephone_prob=0.5, noise_prob=0.5)
    wave = speech_like(0.5, seed=0)

    def run(seed: int) -> list[torch.Tensor]:
        # A fresh object per run, as each data-loader worker gets its own copy of the transform.
        torch.manual_seed(seed)
        aug = WaveAugment(cfg, SR, seed=3)
        return [aug(wave) for _ in range(6)]

    first, again, other = run(5), run(5), run(6)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    assert any(a.shape != b.shape or not torch.equal(a, b) for a, b in zip(first, other, strict=True))
    # Successive calls draw new settings.
    assert any(a.shape != first[0].shape or not torch.equal(a, first[0]) for a in first[1:])


def test_wave_augment_output_is_finite_and_only_speed_changes_the_length():
    wave = speech_like(0.7, seed=1)
    torch.manual_seed(0)
    no_speed = WaveAugment(dataclasses.replace(ALL_ON, speed_prob=0.0), SR)
    for _ in range(5):
        out = no_speed(wave)
        assert out.shape == wave.shape
        assert torch.isfinite(out).all() and out.abs().max() <= 1.0
        assert not torch.equal(out, wave)
    speed = WaveAugment(AugmentConfig(speed_prob=1.0, speed_range=(0.8, 1.25), eq_prob=0, reverb_prob=0,
                                      telephone_prob=0, noise_prob=0, gain_db=(0.0, 0.0)), SR)
    lengths = {speed(wave).numel() for _ in range(8)}
    assert len(lengths) > 1
    for n in lengths:
        assert wave.numel() / 1.26 < n < wave.numel() / 0.79
    identity = WaveAugment(AugmentConfig(speed_prob=0, eq_prob=0, reverb_prob=0, telephone_prob=0,
                                         noise_prob=0, gain_db=(0.0, 0.0)), SR)
    assert torch.equal(identity(wave), wave)


def _band_power(noise: torch.Tensor, low_hz: float, high_hz: float) -> float:
    power = torch.fft.rfft(noise).abs().square()
    freqs = torch.fft.rfftfreq(noise.numel(), 1 / SR)
    return float(power[(freqs >= low_hz) & (freqs < high_hz)].mean())


def test_colored_noise_spectrum_slopes():
    gen = torch.Generator().manual_seed(0)
    slopes = {}
    for exponent in (0.0, 1.0, 2.0):
        noise = colored_noise(SR * 2, exponent, gen)
        assert noise.shape == (SR * 2,)
        assert float(noise.square().mean().sqrt()) == pytest.approx(1.0, rel=1e-4)
        low, high = _band_power(noise, 100, 200), _band_power(noise, 3200, 6400)
        # Power ~ f**-exponent: the octave-band means differ by about 32**exponent (15 dB per exponent).
        slopes[exponent] = 10 * math.log10(low / high)
    assert abs(slopes[0.0]) < 2
    assert 12 < slopes[1.0] < 18
    assert 27 < slopes[2.0] < 33


def test_reverberate_is_the_truncated_linear_convolution():
    gen = torch.Generator().manual_seed(0)
    wave = torch.randn(2, 3001, generator=gen, dtype=torch.float64)
    rir = synthetic_rir(SR, 0.05, gen).double()
    # conv1d correlates, so flip the kernel; pad on the left for the causal part.
    want = torch.nn.functional.conv1d(torch.nn.functional.pad(wave[:, None], (rir.numel() - 1, 0)),
                                      rir.flip(0)[None, None])[:, 0]
    torch.testing.assert_close(reverberate(wave, rir), want, atol=1e-9, rtol=1e-9)


def test_synthetic_rir_decays_to_minus_60_db_at_rt60():
    gen = torch.Generator().manual_seed(0)
    rt60 = 0.4
    rir = synthetic_rir(SR, rt60, gen)
    assert rir.shape == (int(rt60 * SR),)
    assert float(rir.norm()) == pytest.approx(1.0, rel=1e-5)
    assert float(rir[0]) > 0  # the direct path
    blocks = rir.reshape(8, -1)[:, 1:].square().mean(-1)  # the direct path (tap 0) left out
    assert torch.all(blocks[1:] < blocks[:-1])
    # Eight blocks over 60 dB: 7.5 dB apart in energy on average, ~52 dB from the first to the last.
    drop_db = 10 * math.log10(float(blocks[0] / blocks[-1]))
    assert 45 < drop_db < 58
    for drr in (0.0, 6.0):
        rir = synthetic_rir(SR, rt60, torch.Generator().manual_seed(1), drr_db=drr)
        measured = 10 * math.log10(float(rir[0] ** 2 / rir[1:].square().sum()))
        assert measured == pytest.approx(drr, abs=1e-3)


@pytest.mark.parametrize(("options", "prob"), [
    (dict(vtlp_prob=1.0, vtlp_range=(0.85, 0.9)), "vtlp_prob"),
    (dict(blur_prob=1.0, blur_max_bands=2.0), "blur_prob"),
], ids=["vtlp", "band-blur"])
def test_feature_augmentation_in_the_recognizer_only_when_training_with_a_seed(options, prob):
    fcfg = FeatureConfig(n_mels=20)
    rec = Recognizer(ConvBiLSTM(tiny_config()), fcfg, _stats(20), **options,
                     spec_augment_args=dict(num_time_masks=0, num_freq_masks=0))
    wave = speech_like(0.5, seed=0)[None]
    lens = torch.tensor([wave.shape[1]])
    rec.eval()
    with torch.no_grad():
        clean = rec(wave, lens)[0]
        assert torch.equal(rec(wave, lens, augment_seed=1)[0], clean)
        rec.train()
        rec.model.eval()
        a = rec(wave, lens, augment_seed=1)[0]
        assert torch.equal(rec(wave, lens, augment_seed=1)[0], a)
        assert not torch.allclose(a, clean)
        setattr(rec, prob, 0.0)
        assert torch.allclose(rec(wave, lens, augment_seed=1)[0], clean)
