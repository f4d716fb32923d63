"""Synthesis end to end on a tiny exported model: the bundle, `glottis synthesize`, the Python API, scoring."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from audio.cli import main as glottis
from audio.config import load_config
from audio.io import load
from audio.manifest import Utterance, write_manifest
from tts.bundle import export_bundle, load_tacotron
from tts.evaluate import main as evaluate
from tts.evaluate import mel_cepstral_distortion, roundtrip_cer
from tts.synthesize import PAUSE_S, Synthesizer
from tts.train import TTSConfig, build_model, model_metadata

ROOT = Path(__file__).resolve().parents[1]
STEPS = 30  # the untrained model never stops, so every sentence is exactly STEPS decoder steps long


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> tuple[Path, Path, TTSConfig]:
    """An untrained tiny Tacotron as a training checkpoint and as an exported folder."""
    folder = tmp_path_factory.mktemp("tts_model")
    cfg = load_config(
        TTSConfig, ROOT / "configs" / "tts" / "tacotron_tiny.yaml", [f"model.max_decoder_steps={STEPS}"]
    )
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.decoder.stop_proj.bias.fill_(-20.0)  # never stop: output length is known exactly
    checkpoint = folder / "final.pt"
    torch.save({**model_metadata(cfg, model), "model": model.state_dict(), "step": 7}, checkpoint)
    bundle = export_bundle(checkpoint, folder / "bundle")
    return checkpoint, bundle, cfg


def expected_samples(cfg: TTSConfig, sentences: int = 1) -> int:
    per_sentence = (STEPS * cfg.model.r - 1) * cfg.features.hop_length
    return sentences * per_sentence + (sentences - 1) * int(PAUSE_S * cfg.features.sample_rate)


def test_bundle_folder(tiny_model):
    checkpoint, bundle, cfg = tiny_model
    config = json.loads((bundle / "config.json").read_text())
    assert config["format"] == "glottis-tacotron-1" and config["step"] == 7
    assert config["feature_config"]["sample_rate"] == cfg.features.sample_rate
    assert config["fp16_check"]["fp16"] and config["fp16_check"]["mean_db"] < 0.5
    weights = load_file(str(bundle / "model.safetensors"))
    assert weights["decoder.mel_proj.weight"].dtype == torch.float16
    assert "fp16" in (bundle / "README.md").read_text()
    ids = torch.randint(3, 30, (12,), generator=torch.Generator().manual_seed(0))
    outputs = [
        load_tacotron(p).model.inference(ids, prenet_dropout=False).linear for p in (checkpoint, bundle)
    ]
    assert (outputs[0] - outputs[1]).abs().mean() * 100 < 0.5  # under 0.5 dB, as the export checked


def test_cli_writes_a_wav_and_plots(tiny_model, tmp_path):
    _, bundle, cfg = tiny_model
    out = tmp_path / "hello.wav"
    assert (
        glottis(
            [
                "synthesize",
                "Hello there, Dr. Smith",
                "-o",
                str(out),
                "--model",
                str(bundle),
                "--plot",
                "--threads",
                "1",
            ]
        )
        == 0
    )
    info = sf.info(str(out))
    assert info.samplerate == cfg.features.sample_rate and info.channels == 1
    assert info.frames == expected_samples(cfg)
    wave, _ = load(out)
    assert 0.8 < float(wave.abs().max()) < 0.95  # peak-normalised to 0.9
    assert (tmp_path / "hello.alignment.png").stat().st_size > 0 and (
        tmp_path / "hello.mel.png"
    ).stat().st_size > 0


def test_cli_text_file(tiny_model, tmp_path):
    _, bundle, cfg = tiny_model
    text_file = tmp_path / "lines.txt"
    text_file.write_text("One sentence.\n\nFirst one. Second one!\n")
    assert (
        glottis(
            [
                "synthesize",
                "--text-file",
                str(text_file),
                "--out-dir",
                str(tmp_path / "out"),
                "--model",
                str(bundle),
                "--threads",
                "1",
            ]
        )
        == 0
    )
    assert sf.info(str(tmp_path / "out" / "0001.wav")).frames == expected_samples(cfg, 1)
    assert sf.info(str(tmp_path / "out" / "0002.wav")).frames == expected_samples(
        cfg, 2
    )  # split, with a pause


@pytest.mark.parametrize("text", ["", "   ", "?! ...", "\u4e2d\u6587"])
def test_cli_rejects_unpronounceable_text(tiny_model, tmp_path, capsys, text):
    _, bundle, _ = tiny_model
    out = tmp_path / "x.wav"
    assert glottis(["synthesize", text, "-o", str(out), "--model", str(bundle), "--threads", "1"]) == 2
    assert "nothing pronounceable" in capsys.readouterr().err
    assert not out.exists()


def test_cli_errors(tiny_model, tmp_path, capsys):
    _, bundle, _ = tiny_model
    out = str(tmp_path / "x.wav")
    one = ["--threads", "1"]  # the default, all cores, would slow the rest of the test session down
    assert glottis(["synthesize", "hi", "-o", out, "--model", str(tmp_path / "nowhere"), *one]) == 1
    assert "nowhere" in capsys.readouterr().err
    no_vocoder = ["--vocoder", "wavenet", "--vocoder-model", str(tmp_path / "no_vocoder")]
    assert glottis(["synthesize", "hi", "-o", out, "--model", str(bundle), *no_vocoder, *one]) == 2
    assert "not available yet" in capsys.readouterr().err
    assert glottis(["synthesize", "hi", "--model", str(bundle), *one]) == 2  # no -o


def test_synthesizer_api_is_reproducible(tiny_model):
    checkpoint, _, cfg = tiny_model
    import tts

    assert tts.Synthesizer is Synthesizer  # the lazy package-level export
    synth = Synthesizer(checkpoint, seed=3)
    a, b = synth.synthesize("It costs $5. Really?"), synth.synthesize("It costs $5. Really?")
    assert a.sentences == ["it costs five dollars.", "really?"]
    assert a.wave.shape == (expected_samples(cfg, 2),) and a.sample_rate == cfg.features.sample_rate
    torch.testing.assert_close(a.wave, b.wave)
    assert len(a.alignments) == 2 and a.alignments[0].shape == (STEPS, len("it costs five dollars.") + 1)
    assert not any(a.stopped)
    other = Synthesizer(checkpoint, seed=4).synthesize("It costs $5. Really?")
    assert not torch.allclose(a.wave, other.wave)
    with pytest.raises(ValueError):
        synth.synthesize("...")


def test_synthesize_manifest_takes_griffin_lim_overrides(tiny_model, tmp_path):
    checkpoint, _, cfg = tiny_model
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, [Utterance("u1", "u1.wav", "Hello there.", "s", 1.0, cfg.features.sample_rate)])
    waves = {}
    for name, extra in {"model": [], "one_iter": ["--gl-iters", "1"], "power": ["--gl-power", "2"]}.items():
        out = tmp_path / name
        evaluate(["synth", "--model", str(checkpoint), "--manifest", str(manifest), "--out-dir", str(out), *extra])
        rows = [json.loads(line) for line in (out / "synth.jsonl").read_text().splitlines()]
        assert [row["id"] for row in rows] == ["u1"]
        waves[name] = load(out / "u1.wav", cfg.features.sample_rate)[0]
        assert waves[name].shape[-1] == expected_samples(cfg)
    # Same seed, so only the Griffin-Lim settings differ.
    assert not torch.allclose(waves["model"], waves["one_iter"], atol=1e-4)
    assert not torch.allclose(waves["model"], waves["power"], atol=1e-4)


# --- scoring ----------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
def test_mel_cepstral_distortion(tmp_path):
    def speak(text: str, name: str, *args: str) -> torch.Tensor:
        subprocess.run(["espeak-ng", "-v", "en-us", *args, "-w", str(tmp_path / name), text], check=True)
        return load(tmp_path / name, 22050)[0]

    same = speak("the cat sat on the mat", "a.wav")
    slower = speak("the cat sat on the mat", "b.wav", "-s", "140")
    other = speak("green apples are sour", "c.wav")
    hop = 256
    padded = torch.cat([torch.zeros(20 * hop), same * 0.5, torch.zeros(3000)])  # quieter, silence around it
    assert mel_cepstral_distortion(same, same) == 0.0
    assert mel_cepstral_distortion(same, padded) < 0.5  # level and end silence do not count
    noisy = same + 1e-3 * torch.randn(same.shape, generator=torch.Generator().manual_seed(0))  # -60 dB
    assert mel_cepstral_distortion(same, noisy) < 2.0  # below the 50 dB floor
    assert 1.0 < mel_cepstral_distortion(same, slower) < 0.5 * mel_cepstral_distortion(same, other)


def test_roundtrip_cer(tmp_path):
    rows = [
        {
            "id": f"u{i}",
            "audio": f"wav/u{i}_abc.wav",
            "text": text,
            "speaker": "s",
            "duration": 1.0,
            "sample_rate": 22050,
        }
        for i, text in enumerate(["Dr. Who has 2 cats.", "Hello, world!", "Bye."])
    ]
    manifest = tmp_path / "test.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    transcripts = tmp_path / "roundtrip.jsonl"
    transcripts.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"path": "synth/u0.wav", "text": "doctor who has two cats"},  # synthesised: named by id
                {
                    "path": str(tmp_path / "wav" / "u1_abc.wav"),
                    "text": "hello word",
                },  # the manifest's own audio
                {"path": "synth/elsewhere.wav", "text": "ignored"},
            ]
        )
        + "\n"
    )
    result = roundtrip_cer(manifest, transcripts)
    assert result["per_utterance"]["u0"]["cer"] == 0.0
    assert result["per_utterance"]["u1"] == {
        "ref": "hello world",
        "hyp": "hello word",
        "cer": pytest.approx(1 / 11),
    }
    assert result["missing"] == 1 and result["per_utterance"]["u2"]["hyp"] == ""  # counted as all deleted
    assert result["cer"] == pytest.approx((0 + 1 + 3) / (len("doctor who has two cats") + 11 + 3))
