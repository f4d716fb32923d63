"""audio.io: round trips, resampling, mixdown, and an AudioError naming the file for every bad input."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import soundfile as sf
import torch

from audio.io import AudioError, info, load, resample, save


def tone(freq: float, seconds: float, sample_rate: int, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(sample_rate: int, channels: int, frames: int = 10, bits: int = 16) -> bytes:
    """A PCM WAV file written by hand, so any header field can hold a value no encoder would write."""
    block = (channels * bits // 8) % 65536
    fmt = struct.pack("<HHIIHH", 1, channels, sample_rate, (sample_rate * block) % 2**32, block, bits)
    data = bytes(frames * block)
    body = (
        b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(data)) + data
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def peak_hz(wave: torch.Tensor, sample_rate: int) -> float:
    spectrum = torch.fft.rfft(wave.double() * torch.hann_window(wave.numel(), dtype=torch.float64)).abs()
    return float(spectrum.argmax()) * sample_rate / wave.numel()


# --- what works ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "suffix,subtype,tol",
    [(".wav", "PCM_16", 1 / 32768), (".wav", "FLOAT", 0.0), (".flac", "PCM_16", 1 / 32768)],
)
def test_save_load_round_trip(tmp_path, suffix, subtype, tol):
    wave = tone(440.0, 0.3, 16000)
    path = tmp_path / "sub" / f"x{suffix}"
    save(path, torch.from_numpy(wave), 16000, subtype=subtype)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no .tmp left behind
    loaded, sr = load(path)
    assert sr == 16000 and loaded.dtype == torch.float32 and loaded.shape == (wave.size,)
    np.testing.assert_allclose(loaded.numpy(), wave, rtol=0, atol=tol)
    meta = info(path)
    assert (meta.sample_rate, meta.channels, meta.frames) == (16000, 1, wave.size)
    assert meta.duration == pytest.approx(0.3)


def test_save_clips_and_load_reads_a_window(tmp_path):
    path = tmp_path / "x.wav"
    save(path, np.array([2.0, -3.0, 0.25] * 1000, dtype=np.float32), 8000, subtype="FLOAT")
    wave, _ = load(path)
    assert float(wave.max()) == 1.0 and float(wave.min()) == -1.0
    part, sr = load(path, start=0.125, duration=0.0625)  # samples 1000..1499
    assert sr == 8000 and part.shape == (500,)
    torch.testing.assert_close(part, wave[1000:1500])


def test_load_resamples_to_the_requested_rate(tmp_path):
    path = tmp_path / "x.wav"
    save(path, tone(1000.0, 0.5, 22050), 22050, subtype="FLOAT")
    wave, sr = load(path, sample_rate=16000)
    assert sr == 16000 and wave.shape == (8000,)
    assert peak_hz(wave, 16000) == pytest.approx(1000.0, abs=2.0)
    rms = float(wave[400:-400].pow(2).mean().sqrt())
    assert rms == pytest.approx(0.5 / math.sqrt(2), rel=0.01)
    same = torch.randn(100)
    assert resample(same, 16000, 16000) is same


def test_stereo_is_mixed_down_or_kept(tmp_path):
    left, right = tone(300.0, 0.2, 16000), tone(700.0, 0.2, 16000, amplitude=0.2)
    path = tmp_path / "stereo.wav"
    save(path, np.stack([left, right]), 16000, subtype="FLOAT")  # (C, samples)
    assert info(path).channels == 2
    mono, _ = load(path)
    np.testing.assert_allclose(mono.numpy(), (left + right) / 2, rtol=0, atol=1e-7)
    both, _ = load(path, mono=False)
    assert both.shape == (2, left.size)
    np.testing.assert_allclose(both[1].numpy(), right, rtol=0, atol=0)


# --- what fails, and how ---------------------------------------------------------------------------


def assert_audio_error(path, reason: str) -> None:
    with pytest.raises(AudioError) as err:
        load(path)
    assert err.value.path == str(path)
    assert str(err.value).startswith(f"{path}: ")  # the message names the file first
    assert reason in err.value.reason, err.value.reason


def test_missing_and_empty_files(tmp_path):
    assert_audio_error(tmp_path / "nope.wav", "no such file")
    assert_audio_error(tmp_path, "no such file")  # a directory is not a file
    (tmp_path / "empty.wav").write_bytes(b"")
    assert_audio_error(tmp_path / "empty.wav", "empty (0 bytes)")


def test_zero_length_wav(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), 16000)  # a valid header with 0 frames
    assert info(path).frames == 0
    assert_audio_error(path, "zero length")
    (tmp_path / "zero2.wav").write_bytes(wav_bytes(16000, 1, frames=0))
    assert_audio_error(tmp_path / "zero2.wav", "zero length")


def test_corrupt_and_non_audio_files(tmp_path):
    (tmp_path / "random.wav").write_bytes(
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    )
    assert_audio_error(tmp_path / "random.wav", "not a readable audio file")
    (tmp_path / "notes.wav").write_text("this is a text file, not audio\n" * 20)
    assert_audio_error(tmp_path / "notes.wav", "not a readable audio file")
    (tmp_path / "cut.wav").write_bytes(wav_bytes(16000, 1)[:30])  # truncated inside the header
    assert_audio_error(tmp_path / "cut.wav", "not a readable audio file")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_samples(tmp_path, bad):
    path = tmp_path / "nan.wav"
    sf.write(path, np.array([0.1, bad, -0.2, 0.0], dtype=np.float32), 16000, subtype="FLOAT")
    assert_audio_error(path, "NaN or infinite")


@pytest.mark.parametrize("rate", [0, 10, 999, 2_000_000, 4_000_000_000])
def test_absurd_sample_rate(tmp_path, rate):
    path = tmp_path / f"rate{rate}.wav"
    path.write_bytes(wav_bytes(rate, 1))
    # libsndfile itself rejects some of these (0, > 2**31); ours rejects the rest as implausible.
    with pytest.raises(AudioError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: ")
    assert "implausible sample rate" in err.value.reason or "not a readable audio file" in err.value.reason
    if 0 < rate < 2**31:
        assert err.value.reason == f"implausible sample rate {rate} Hz"


@pytest.mark.parametrize("channels", [0, 65, 1000, 65535])
def test_absurd_channel_count(tmp_path, channels):
    path = tmp_path / f"ch{channels}.wav"
    path.write_bytes(wav_bytes(16000, channels, frames=2))
    with pytest.raises(AudioError) as err:
        load(path)
    assert str(err.value).startswith(f"{path}: ")
    if channels in (65, 1000):  # libsndfile reads these; our plausibility check must refuse them
        assert err.value.reason == f"implausible channel count {channels}"


def test_save_refuses_bad_input(tmp_path):
    with pytest.raises(AudioError, match="NaN"):
        save(tmp_path / "x.wav", np.array([0.0, np.nan], dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="sample rate"):
        save(tmp_path / "x.wav", np.zeros(10, dtype=np.float32), 0)
    with pytest.raises(AudioError, match="shape"):
        save(tmp_path / "x.wav", np.zeros((2, 2, 2), dtype=np.float32), 16000)
    with pytest.raises(AudioError, match=r"cannot write \.mp3"):
        save(tmp_path / "x.mp3", np.zeros(10, dtype=np.float32), 16000)
    with pytest.raises(AudioError, match="without a suffix"):
        save(tmp_path / "x", np.zeros(10, dtype=np.float32), 16000)
    assert list(tmp_path.iterdir()) == []
