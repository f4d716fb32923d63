"""Features against librosa, batch == per item, the extractor module, feature stats, the CLI and plots."""

from __future__ import annotations

import json

import librosa
import matplotlib.image
import numpy as np
import pytest
import scipy.fft
import scipy.signal
import torch
import yaml

from audio import cli, features
from audio.config import to_dict
from audio.features import (
    FeatureConfig,
    FeatureExtractor,
    dct_matrix,
    deemphasis,
    feature_dim,
    hz_to_mel,
    load_feature_config,
    log_mel,
    mel_filterbank,
    mel_spectrogram,
    mel_to_hz,
    mfcc,
    num_frames,
    preemphasis,
    spectrogram,
)
from audio.io import load, save
from audio.manifest import Utterance, write_manifest
from audio.plot import plot_alignment, plot_curves, plot_spectrogram
from audio.stats import FeatureStats, compute_stats
from audio.stats import main as stats_main

ASR_16K = FeatureConfig()
TTS_22K = FeatureConfig(sample_rate=22050, n_fft=1024, win_length=1024, hop_length=256, fmax=8000.0)
HTK_MAG = FeatureConfig(win_length=320, power=1.0, mel_scale="htk", mel_norm=None, n_mels=40, fmin=60.0)
CONFIGS = [ASR_16K, TTS_22K, HTK_MAG]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def speech_like(sample_rate: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A gliding harmonic tone plus noise: energy in every bin, so relative comparisons are meaningful."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    phase = 2 * np.pi * np.cumsum(110 + 60 * t) / sample_rate
    wave = sum(0.3 / k * np.sin(k * phase) for k in range(1, 8)) + 0.02 * rng.standard_normal(t.size)
    return wave.astype(np.float32)


def librosa_kwargs(cfg: FeatureConfig) -> dict:
    return dict(
        n_fft=cfg.n_fft,
        hop_length=cfg.hop_length,
        win_length=cfg.win_length,
        window=cfg.window,
        center=cfg.center,
        pad_mode="constant",
    )


def librosa_mel(y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """(n_mels, frames)"""
    return librosa.feature.melspectrogram(
        y=y,
        sr=cfg.sample_rate,
        power=cfg.power,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=cfg.mel_scale == "htk",
        norm=cfg.mel_norm,
        **librosa_kwargs(cfg),
    )


def assert_rel_close(ours: np.ndarray, ref: np.ndarray, rtol: float = 1e-4) -> None:
    """Elementwise within rtol, with an absolute slack of rtol times the peak for near-zero cells."""
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=rtol * np.abs(ref).max())


def one(extract, y: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Run a batched extractor on one item; returns (features, frames) like librosa."""
    feats, frame_lengths = extract(torch.from_numpy(y)[None], torch.tensor([y.size]), cfg)
    assert feats.shape[1] == int(frame_lengths[0])
    return feats[0].numpy().T


# --- parity with librosa ----------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", CONFIGS + [FeatureConfig(fmin=300.0, fmax=3400.0, n_mels=24)])
def test_mel_filterbank_matches_librosa(cfg):
    ref = librosa.filters.mel(
        sr=cfg.sample_rate,
        n_fft=cfg.n_fft,
        n_mels=cfg.n_mels,
        fmin=cfg.fmin,
        fmax=cfg.fmax,
        htk=cfg.mel_scale == "htk",
        norm=cfg.mel_norm,
    )
    ours = mel_filterbank(cfg)
    assert ours.shape == (cfg.n_freqs, cfg.n_mels) and ours.dtype == torch.float32
    np.testing.assert_allclose(ours.numpy().T, ref, rtol=1e-5, atol=1e-8)
    ours.zero_()  # built once per setting, but every caller gets its own copy
    np.testing.assert_allclose(mel_filterbank(cfg).numpy().T, ref, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("scale", ["slaney", "htk"])
def test_mel_scale_matches_librosa(scale):
    hz = np.array([0.0, 55.0, 440.0, 999.0, 1000.0, 1001.0, 4000.0, 11025.0])
    mels = hz_to_mel(torch.from_numpy(hz), scale).numpy()
    np.testing.assert_allclose(mels, librosa.hz_to_mel(hz, htk=scale == "htk"), rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mel_to_hz(torch.from_numpy(mels), scale).numpy(), hz, rtol=1e-10, atol=1e-8)


def test_dct_matrix_is_scipy_orthonormal_dct2():
    x = np.random.default_rng(1).standard_normal((7, 40))
    ours = torch.from_numpy(x).float() @ dct_matrix(40, 13)
    np.testing.assert_allclose(
        ours.numpy(), scipy.fft.dct(x, type=2, norm="ortho")[:, :13], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("cfg", CONFIGS)
def test_spectrogram_matches_librosa_stft(cfg):
    y = speech_like(cfg.sample_rate, 0.6)
    ref = np.abs(librosa.stft(y, **librosa_kwargs(cfg))) ** cfg.power
    assert_rel_close(one(spectrogram, y, cfg), ref)


@pytest.mark.parametrize("cfg", CONFIGS)
def test_mel_logmel_mfcc_match_librosa(cfg):
    y = speech_like(cfg.sample_rate, 0.6, seed=2)
    ref_mel = librosa_mel(y, cfg)
    assert_rel_close(one(mel_spectrogram, y, cfg), ref_mel)
    # A log difference of 1e-4 is a relative difference of 1e-4 in the mel, checked in every cell.
    np.testing.assert_allclose(
        one(log_mel, y, cfg), np.log(np.maximum(ref_mel, cfg.log_floor)), rtol=0, atol=1e-4
    )
    ref_db = librosa.power_to_db(ref_mel, amin=cfg.log_floor, top_db=None)
    ref_mfcc = librosa.feature.mfcc(S=ref_db, n_mfcc=cfg.n_mfcc)
    assert_rel_close(one(mfcc, y, cfg), ref_mfcc)


def test_mfcc_matches_librosa_from_waveform_when_top_db_does_not_clip():
    """With the default power_to_db (top_db=80) librosa's own waveform path gives the same MFCCs, as long
    as the spectrum spans less than 80 dB (true for this noisy signal)."""
    cfg = FeatureConfig(n_mfcc=20)
    y = speech_like(cfg.sample_rate, 0.5, seed=3)
    db = librosa.power_to_db(librosa_mel(y, cfg))
    assert db.max() - db.min() < 80
    ref = librosa.feature.mfcc(
        y=y, sr=cfg.sample_rate, n_mfcc=cfg.n_mfcc, n_mels=cfg.n_mels, **librosa_kwargs(cfg)
    )
    assert_rel_close(one(mfcc, y, cfg), ref)


def test_uncentred_frames_match_librosa():
    cfg = FeatureConfig(center=False)
    y = speech_like(cfg.sample_rate, 0.3)
    assert_rel_close(one(mel_spectrogram, y, cfg), librosa_mel(y, cfg))


@pytest.mark.parametrize("center", [True, False])
def test_num_frames_matches_stft_frame_count(center):
    cfg = FeatureConfig(center=center)
    for n in [400, 401, 559, 560, 561, 1600, 16000]:
        frames = librosa.stft(np.zeros(n, np.float32), **librosa_kwargs(cfg)).shape[1]
        assert int(num_frames(torch.tensor([n]), cfg)[0]) == frames, n
    assert num_frames(torch.tensor([0, 1, 159, 160]), FeatureConfig()).tolist() == [1, 1, 1, 2]
    assert num_frames(torch.tensor([399]), FeatureConfig(center=False)).tolist() == [0]


# --- batching --------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["spectrogram", "mel", "logmel", "mfcc"])
@pytest.mark.parametrize("preemph", [0.0, 0.97])
def test_batch_equals_per_item_and_padding_is_zero(kind, preemph):
    cfg = FeatureConfig(preemphasis=preemph)
    lengths = [16000, 7321, 480, 161]
    items = [
        torch.from_numpy(speech_like(cfg.sample_rate, n / cfg.sample_rate, seed=i))
        for i, n in enumerate(lengths)
    ]
    batch = torch.randn(len(items), 16000 + 700)  # garbage in the padding must not leak
    for i, item in enumerate(items):
        batch[i, : item.numel()] = item
    extractor = FeatureExtractor(cfg, kind)
    feats, frame_lengths = extractor(batch, torch.tensor(lengths))
    assert frame_lengths.tolist() == [1 + n // cfg.hop_length for n in lengths]
    assert feats.shape == (len(lengths), max(frame_lengths), feature_dim(cfg, kind))
    for i, item in enumerate(items):
        alone, alone_len = extractor(item[None])
        n = int(frame_lengths[i])
        assert int(alone_len[0]) == n
        torch.testing.assert_close(feats[i, :n], alone[0], rtol=1e-5, atol=1e-5 * float(alone.abs().max()))
        assert torch.all(feats[i, n:] == 0)


@pytest.mark.parametrize("center", [True, False])
def test_chunked_extraction_equals_one_pass(monkeypatch, center):
    """Long inputs are processed in chunks of frames; chunk edges must not show in the result."""
    cfg = FeatureConfig(center=center)
    wave, lengths = torch.randn(3, 9000), torch.tensor([9000, 8999, 4321])
    for kind in ("spectrogram", "mfcc"):
        extractor = FeatureExtractor(cfg, kind)
        monkeypatch.setattr(features, "_CHUNK_VALUES", 1 << 40)  # a single chunk
        whole, whole_lengths = extractor(wave, lengths)
        monkeypatch.setattr(features, "_CHUNK_VALUES", 1)  # the minimum, 32 frames per chunk
        chunked, chunked_lengths = extractor(wave, lengths)
        assert whole.shape[1] > 32 and torch.equal(whole_lengths, chunked_lengths)
        torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-6 * float(whole.abs().max()))


@pytest.mark.parametrize("kind", ["spectrogram", "logmel", "mfcc"])
def test_backward_reaches_valid_samples_only(kind):
    wave = torch.randn(2, 3200, requires_grad=True)
    feats, _ = FeatureExtractor(FeatureConfig(), kind)(wave, torch.tensor([3200, 2000]))
    feats.square().sum().backward()
    assert torch.isfinite(wave.grad).all()
    assert float(wave.grad[1, :2000].abs().sum()) > 0
    assert torch.all(wave.grad[1, 2000:] == 0)  # padding has no influence, forward or backward


def test_extractor_module_equals_functions_and_keeps_no_state():
    cfg = FeatureConfig(n_mels=40)
    wave = torch.from_numpy(speech_like(cfg.sample_rate, 0.4))[None]
    for kind, fn in [
        ("spectrogram", spectrogram),
        ("mel", mel_spectrogram),
        ("logmel", log_mel),
        ("mfcc", mfcc),
    ]:
        extractor = FeatureExtractor(cfg, kind)
        assert extractor.state_dict() == {}  # derived from cfg, so checkpoints never depend on it
        torch.testing.assert_close(extractor(wave)[0], fn(wave, None, cfg)[0], rtol=0, atol=0)
        assert extractor(wave)[0].shape[-1] == extractor.dim
    double = FeatureExtractor(cfg, "logmel").double()
    feats64, _ = double(wave.double())
    assert feats64.dtype == torch.float64
    torch.testing.assert_close(feats64.float(), log_mel(wave, None, cfg)[0], rtol=0, atol=1e-4)


def test_preemphasis_is_lfilter_and_deemphasis_inverts_it():
    x = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    ours = preemphasis(torch.from_numpy(x), 0.97)
    np.testing.assert_allclose(
        ours.numpy(), scipy.signal.lfilter([1, -0.97], [1], x, axis=-1), rtol=1e-5, atol=1e-6
    )
    torch.testing.assert_close(deemphasis(ours, 0.97), torch.from_numpy(x), rtol=1e-4, atol=1e-4)
    assert torch.equal(preemphasis(torch.from_numpy(x), 0.0), torch.from_numpy(x))


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="B, samples"):
        log_mel(torch.zeros(100), None, ASR_16K)
    with pytest.raises(ValueError, match="lengths"):
        log_mel(torch.zeros(2, 100), torch.tensor([100, 101]), ASR_16K)
    with pytest.raises(ValueError, match="kind"):
        FeatureExtractor(ASR_16K, "chroma")
    with pytest.raises(ValueError, match="win_length"):
        FeatureConfig(n_fft=256, win_length=400)


# --- config files ----------------------------------------------------------------------------------


def test_load_feature_config_whole_file_section_and_overrides(tmp_path):
    plain = tmp_path / "feats.yaml"
    plain.write_text("sample_rate: 22050\nn_mels: 64\nfmax: 8000\n")
    cfg = load_feature_config(plain, ["hop_length=256"])
    assert (cfg.sample_rate, cfg.n_mels, cfg.fmax, cfg.hop_length) == (22050, 64, 8000, 256)

    nested = tmp_path / "exp.yaml"
    nested.write_text(yaml.safe_dump({"model": {"hidden": 10}, "features": {"n_mels": 40}}))
    cfg = load_feature_config(nested, ["features.n_mfcc=20", "preemphasis=0.97"])
    assert (cfg.n_mels, cfg.n_mfcc, cfg.preemphasis) == (40, 20, 0.97)
    assert load_feature_config(None) == FeatureConfig()

    with pytest.raises(ValueError, match="n_melz"):
        load_feature_config(plain, ["n_melz=3"])
    plain.write_text("n_mels: 80\nwindoww: hann\n")
    with pytest.raises(ValueError, match="windoww"):
        load_feature_config(plain)


# --- feature statistics ----------------------------------------------------------------------------


def make_corpus(tmp_path, sample_rates=(16000, 16000, 22050)) -> tuple:
    """Three short wavs (one at another rate, to exercise resampling) and their manifest."""
    records = []
    for i, sr in enumerate(sample_rates):
        name = f"wav/utt{i}.wav"
        wave = speech_like(sr, 0.2 + 0.15 * i, seed=i) * (0.5 + i)
        save(tmp_path / name, wave / np.abs(wave).max() * 0.9, sr, subtype="FLOAT")
        records.append(
            Utterance(
                id=f"utt{i}", audio=name, text="x", speaker="s", duration=wave.size / sr, sample_rate=sr
            )
        )
    manifest = tmp_path / "train.jsonl"
    write_manifest(manifest, records)
    return manifest, [tmp_path / r.audio for r in records]


def test_stats_equal_numpy_over_concatenated_frames(tmp_path):
    cfg = FeatureConfig(n_mels=32)
    manifest, paths = make_corpus(tmp_path)
    stats = compute_stats(manifest, cfg, progress=False)
    frames = np.concatenate(
        [log_mel(load(p, cfg.sample_rate)[0][None], None, cfg)[0][0].numpy() for p in paths]
    ).astype(np.float64)
    assert stats.count == frames.shape[0] and stats.dim == 32
    np.testing.assert_allclose(stats.mean, frames.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats.std, frames.std(axis=0), rtol=1e-6, atol=1e-9)
    assert stats.feature_config == to_dict(cfg)


def test_stats_json_round_trip_and_normalize_keeps_padding_zero(tmp_path):
    rng = np.random.default_rng(0)
    data = torch.from_numpy(rng.normal(loc=[-3.0, 5.0], scale=[2.0, 0.5], size=(2, 50, 2))).float()
    lengths = torch.tensor([50, 31])
    data[1, 31:] = 0.0
    valid = torch.cat([data[0], data[1, :31]]).double().numpy()
    stats = FeatureStats(mean=tuple(valid.mean(0)), std=tuple(valid.std(0)), count=81)
    stats.save(tmp_path / "stats.json")
    assert not (tmp_path / "stats.json.tmp").exists()
    loaded = FeatureStats.load(tmp_path / "stats.json")
    assert loaded == stats
    normed = loaded.normalize(data, lengths)
    assert torch.all(normed[1, 31:] == 0)
    flat = torch.cat([normed[0], normed[1, :31]])
    torch.testing.assert_close(flat.mean(0), torch.zeros(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(flat.std(0, unbiased=False), torch.ones(2), rtol=0, atol=1e-5)
    torch.testing.assert_close(loaded.denormalize(normed, lengths), data, rtol=1e-5, atol=1e-5)
    (tmp_path / "bad.json").write_text(json.dumps({"mean": [0.0], "std": [1.0], "count": 1, "extra": 1}))
    with pytest.raises(ValueError, match="FeatureStats"):
        FeatureStats.load(tmp_path / "bad.json")
    (tmp_path / "bad.json").write_text(json.dumps({"mean": [0.0], "count": 1}))
    with pytest.raises(ValueError, match="FeatureStats"):
        FeatureStats.load(tmp_path / "bad.json")


def test_stats_cli_reads_features_section(tmp_path, capsys):
    manifest, _ = make_corpus(tmp_path, sample_rates=(16000, 16000))
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"features": {"n_mels": 24}, "model": {"hidden": 8}}))
    out = tmp_path / "stats" / "stats.json"
    assert (
        stats_main(
            ["--manifest", str(manifest), "--config", str(config), "--set", "fmin=50", "--out", str(out)]
        )
        == 0
    )
    stats = FeatureStats.load(out)
    assert stats.dim == 24 and stats.feature_config["fmin"] == 50
    assert stats == compute_stats(manifest, FeatureConfig(n_mels=24, fmin=50), progress=False)

    (tmp_path / "wav" / "utt1.wav").write_bytes(b"")
    assert stats_main(["--manifest", str(manifest), "--out", str(tmp_path / "x.json")]) == 1
    assert "utt1.wav: file is empty" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# --- the glottis features CLI ----------------------------------------------------------------------


def test_cli_writes_features_and_a_png(tmp_path):
    wav = tmp_path / "in.wav"
    save(wav, speech_like(16000, 0.75), 16000, subtype="FLOAT")
    out, png = tmp_path / "out" / "feats.npy", tmp_path / "out" / "spec.png"
    assert cli.main(["features", str(wav), "--kind", "logmel", "--out", str(out), "--plot", str(png)]) == 0
    feats = np.load(out)
    assert feats.shape == (1 + 12000 // 160, 80) and feats.dtype == np.float32
    expected, _ = log_mel(load(wav)[0][None], None, FeatureConfig())
    np.testing.assert_allclose(feats, expected[0].numpy(), rtol=0, atol=1e-6)
    assert png.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(png)
    assert image.shape[0] > 100 and image.shape[1] > 100 and image.std() > 0.05
    assert sorted(p.name for p in out.parent.iterdir()) == ["feats.npy", "spec.png"]  # no .tmp left


def test_cli_config_and_overrides_resample(tmp_path):
    wav = tmp_path / "in.wav"
    save(wav, speech_like(16000, 0.5), 16000)
    config = tmp_path / "tts.yaml"
    config.write_text(yaml.safe_dump({"features": {"sample_rate": 22050, "n_fft": 1024, "win_length": 1024}}))
    out = tmp_path / "mfcc.npy"
    argv = [
        "features",
        str(wav),
        "--kind",
        "mfcc",
        "--out",
        str(out),
        "--config",
        str(config),
        "--set",
        "hop_length=256",
        "--set",
        "n_mfcc=20",
    ]
    assert cli.main(argv) == 0
    assert np.load(out).shape == (1 + 11025 // 256, 20)


def test_cli_reports_bad_audio_and_bad_config(tmp_path, capsys):
    bad = tmp_path / "broken.wav"
    bad.write_text("this is not a wav file\n")
    out = tmp_path / "feats.npy"
    assert cli.main(["features", str(bad), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"glottis features: {bad}: not a readable audio file")
    assert not out.exists()
    assert cli.main(["features", str(tmp_path / "missing.wav"), "--out", str(out)]) == 1
    assert f"glottis features: {tmp_path / 'missing.wav'}: no such file" in capsys.readouterr().err
    wav = tmp_path / "ok.wav"
    save(wav, speech_like(16000, 0.1), 16000)
    assert cli.main(["features", str(wav), "--out", str(out), "--set", "n_melz=4"]) == 2
    assert "n_melz" in capsys.readouterr().err


def test_cli_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["features", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: glottis features" in text and "--kind" in text and "mfcc" in text and "--set" in text


# --- plots -----------------------------------------------------------------------------------------


def assert_png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert not path.with_name(path.name + ".tmp").exists()
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and min(image.shape[:2]) > 100
    return image


@pytest.mark.parametrize("kind", ["spectrogram", "mel", "logmel", "mfcc"])
def test_plot_spectrogram_every_kind(tmp_path, kind):
    cfg = FeatureConfig(n_mels=40)
    feats, _ = FeatureExtractor(cfg, kind)(torch.from_numpy(speech_like(16000, 0.5))[None])
    plot_spectrogram(feats[0], cfg, kind, tmp_path / f"{kind}.png", title=kind)
    assert assert_png(tmp_path / f"{kind}.png").std() > 0.05  # not a blank canvas


def test_plot_alignment_and_curves(tmp_path):
    attn = torch.softmax(torch.randn(60, 25) * 3, dim=-1)  # (dec_steps, enc_steps)
    plot_alignment(attn, tmp_path / "align.png", title="step 100")
    assert assert_png(tmp_path / "align.png").std() > 0.05
    curves = {
        "train loss": [(s, 5.0 / (1 + s)) for s in range(0, 1000, 10)],
        "dev CER": [(200, 0.8), (400, 0.5), (600, 0.3)],
    }
    plot_curves(curves, tmp_path / "curves.png")
    assert_png(tmp_path / "curves.png")
    plot_curves({}, tmp_path / "empty.png")
    assert_png(tmp_path / "empty.png")
    with pytest.raises(ValueError, match="frames, features"):
        plot_spectrogram(torch.zeros(3, 4, 5), FeatureConfig(), "mel", tmp_path / "x.png")
