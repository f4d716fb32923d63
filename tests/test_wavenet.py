"""WaveNet vocoder: mu-law, causality, cached generation == parallel pass (torch, numba and C), training,
resume, the bundle, `glottis vocode` and `glottis synthesize --vocoder wavenet`."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from safetensors.torch import load_file

from audio.cli import main as glottis
from audio.config import load_config
from audio.features import deemphasis
from audio.io import load
from audio.training import CheckpointManager
from tts import _wavenet_c as wavenet_c
from tts.spectrogram import SpectrogramScale, TargetExtractor
from tts.vocode import GUIDED_TEMPERATURE, Vocoder, load_vocoder, mel_guide
from tts.vocoder_train import VocoderConfig, WindowCorpus, add_input_noise, build_model
from tts.vocoder_train import main as train_main
from tts.wavenet import (
    FastGenerator,
    WaveNet,
    WaveNetConfig,
    _sample,
    decode_classes,
    encode_wave,
    mu_law_decode,
    mu_law_encode,
    sampling_uniforms,
)
from tts.wavenet_bundle import _init_text, export_vocoder
from tts.wavenet_widen import main as widen_main
from tts.wavenet_widen import widen_wavenet_state

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tts" / "wavenet_tiny.yaml"
SR = 22050


def tiny_net(seed: int = 0) -> WaveNet:
    torch.manual_seed(seed)
    cfg = WaveNetConfig(
        n_mels=8, hop_length=16, residual_channels=8, skip_channels=12, max_dilation=8, cond_channels=8
    )
    return WaveNet(cfg).eval()


def voiced(seconds: float, f0: float, seed: int) -> np.ndarray:
    """A gliding harmonic tone with an envelope and a little noise: speech-like enough to learn from."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.3 * np.sin(2 * np.pi * 1.5 * t))) / SR
    wave = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 * (1 - np.cos(2 * np.pi * t / seconds))
    return (0.3 * envelope * wave + 0.003 * rng.standard_normal(t.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Four training and two dev utterances of synthetic voiced sound, with manifests."""
    folder = tmp_path_factory.mktemp("vocoder_corpus")
    for split, count, base in (("train", 4, 0), ("dev", 2, 10)):
        lines = []
        for i in range(count):
            wav = folder / f"{split}{i}.wav"
            sf.write(str(wav), voiced(0.6, 110 + 20 * (base + i), base + i), SR)
            lines.append(
                json.dumps(
                    {
                        "id": f"{split}{i}",
                        "audio": wav.name,
                        "text": "a",
                        "speaker": "s",
                        "duration": 0.6,
                        "sample_rate": SR,
                    }
                )
            )
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory) -> Path:
    """The tiny config trained for its 30 steps; returns the experiment folder."""
    exp = tmp_path_factory.mktemp("vocoder_exp")
    args = [
        "--config",
        str(TINY),
        "--exp-dir",
        str(exp),
        "--train",
        str(corpus / "train.jsonl"),
        "--dev",
        str(corpus / "dev.jsonl"),
        "--no-progress",
    ]
    assert train_main(args) == 0
    return exp


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory) -> Path:
    return export_vocoder(trained / "final.pt", tmp_path_factory.mktemp("bundle") / "wavenet_tiny")


# --- the model ------------------------------------------------------------------------------------


def test_mu_law_round_trip():
    classes = torch.arange(256)
    assert torch.equal(mu_law_encode(mu_law_decode(classes)), classes)
    wave = torch.linspace(-1, 1, 10001)
    decoded = mu_law_decode(mu_law_encode(wave))
    # The companded step is 2 / 255, so the error is at most half a step times the slope of the expansion,
    # which grows with |x|: take it at the larger of the two magnitudes.
    slope = math.log1p(255) / 255 * (1 + 255 * torch.maximum(wave.abs(), decoded.abs()))
    bound = 1.02 * slope / 255
    assert bool(((decoded - wave).abs() <= bound).all())
    assert int(mu_law_encode(torch.tensor(0.0))) in (127, 128)
    assert torch.equal(mu_law_encode(torch.tensor([-3.0, 3.0])), torch.tensor([0, 255]))


def test_pre_emphasised_mu_law_round_trips_and_shapes_the_noise():
    wave = torch.from_numpy(voiced(1.0, 140.0, seed=3))
    plain, shaped = WaveNetConfig(), WaveNetConfig(preemphasis=0.85)
    assert torch.equal(encode_wave(wave, plain), mu_law_encode(wave))
    assert (decode_classes(encode_wave(wave, shaped), shaped) - wave).abs().mean() < 2e-3
    with pytest.raises(ValueError, match="preemphasis"):
        WaveNetConfig(preemphasis=1.0)
    # A sampler that misses by one class now and then: in plain mu-law its error is white, so it fills the
    # quiet top of the spectrum; pre-emphasised, the error comes out tilted like the signal.
    jitter = torch.from_numpy(np.random.default_rng(0).integers(-1, 2, wave.shape[0]))

    def error_tilt(cfg: WaveNetConfig) -> float:
        classes = (encode_wave(wave, cfg) + jitter).clamp(0, cfg.n_classes - 1)
        power = torch.fft.rfft(decode_classes(classes, cfg) - decode_classes(encode_wave(wave, cfg), cfg)).abs() ** 2
        quarter = power.shape[0] // 4
        return float(power[-quarter:].sum() / power[:quarter].sum())  # top quarter of the band / bottom

    assert error_tilt(shaped) < 0.1 * error_tilt(plain)


def test_shapes_backward_and_batch_independence():
    model = tiny_net().train()
    mel = torch.rand(3, 7, 8)
    inputs = torch.randint(0, 256, (3, 6 * 16))
    logits = model(inputs, mel)
    assert logits.shape == (3, 96, 256)
    loss = torch.nn.functional.cross_entropy(logits.transpose(1, 2), inputs)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # Only the last layer's residual half does not feed the output.
    assert grads["gates.0.weight"].abs().sum() > 0 and grads["cond_net.convs.0.weight"].abs().sum() > 0
    with torch.no_grad():
        alone = model(inputs[1:2], mel[1:2])
    assert torch.allclose(alone[0], logits[1].detach(), atol=1e-5)


def test_causal_with_the_expected_receptive_field():
    model = tiny_net()
    field = model.cfg.receptive_field  # 2 x (1 + 2 + 4 + 8) + 1 = 31
    assert field == 31
    mel = torch.rand(1, 12, 8)
    inputs = torch.randint(0, 256, (1, 160))
    t = 100
    with torch.no_grad():
        base = model(inputs, mel)
        future = inputs.clone()
        future[:, t + 1 :] = torch.randint(0, 256, (1, 59))
        changed = model(future, mel)
        assert torch.equal(base[:, : t + 1], changed[:, : t + 1])  # the past ignores the future
        assert not torch.allclose(base[:, t + 1], changed[:, t + 1])
        # The oldest input reaches t through one chain of every layer's gates: visible in float64 only.
        model, mel = model.double(), mel.double()
        base = model(inputs, mel)
        far, near = inputs.clone(), inputs.clone()
        far[:, t - field] = (far[:, t - field] + 100) % 256  # just outside the receptive field of t
        near[:, t - field + 1] = (near[:, t - field + 1] + 100) % 256  # its oldest input
        assert torch.equal(model(far, mel)[:, t], base[:, t])
        assert (model(near, mel)[:, t] - base[:, t]).abs().max() > 1e-12


@pytest.fixture(scope="module")
def teacher_case():
    model = tiny_net(1)
    mel = torch.rand(2, 9, 8)
    inputs = torch.randint(0, 256, (2, 8 * 16 + 5))  # past the last frame centre: the repeated frame
    with torch.no_grad():
        parallel = model(inputs, mel)
    return model, mel, inputs, parallel


def test_incremental_torch_equals_parallel(teacher_case):
    model, mel, inputs, parallel = teacher_case
    _, incremental = model.incremental_forward(mel, teacher=inputs)
    assert parallel.abs().max() > 0.1
    assert (incremental - parallel).abs().max() < 1e-5


@pytest.fixture(params=["c", "numba"])
def kernel(request) -> str:
    """Both compiled loops; the C one needs a C compiler (CI has gcc)."""
    if request.param == "c" and wavenet_c._compiler() is None:
        pytest.skip("no C compiler")
    return request.param


def test_incremental_fast_equals_parallel(teacher_case, kernel):
    model, mel, inputs, parallel = teacher_case
    generator = FastGenerator(model, kernel)
    assert generator.kernel == kernel
    fast = generator.teacher_forced_logits(mel, inputs)
    assert (fast - parallel).abs().max() < 1e-5


def test_all_generators_draw_the_same_samples(kernel):
    model = tiny_net(2)
    mel = torch.rand(2, 5, 8)
    naive = model.naive_generate(mel, n_samples=60, seed=5)
    cached, _ = model.incremental_forward(mel, n_samples=60, seed=5)
    fast = FastGenerator(model, kernel).generate(mel, n_samples=60, seed=5)
    assert torch.equal(naive, cached) and torch.equal(cached, fast)
    assert len(torch.unique(fast)) > 10  # really sampled, not a constant
    other = FastGenerator(model, kernel).generate(mel, n_samples=60, seed=6)
    assert not torch.equal(fast, other)


def test_generate_rejects_too_many_samples(kernel):
    model = tiny_net()
    with pytest.raises(ValueError, match="cannot generate"):
        FastGenerator(model, kernel).generate(torch.rand(1, 3, 8), n_samples=3 * 16 + 1)


def test_guided_generation_keeps_the_chosen_candidate_and_goes_on_from_it(kernel):
    """Spans alternate between candidate 0 and 1, so every span starts from a state copied from the other
    stream: re-sampling the parallel pass on the output with the chosen stream's uniforms draws it again."""
    model = tiny_net(5)
    mel = torch.rand(2, 9, 8)
    n, span, hop, count = 8 * 16, 2, 16, 3
    generator = FastGenerator(model, kernel)
    calls = []

    def alternate(classes, end):
        assert classes.shape == (2, count, 5 + span * hop)  # the lookback, then the span's new samples
        calls.append(end)
        return torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0]]).roll(len(calls) - 1, dims=1)[:, :count]

    out = generator.generate_guided(mel, alternate, candidates=count, span=span, lookback=5, n_samples=n, seed=3)
    assert calls == [32, 64, 96, 128]
    inputs = torch.cat([torch.full((2, 1), model.silence), out[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model(inputs, mel)
    uniforms = torch.from_numpy(sampling_uniforms(n, 2 * count, 3))  # (N, streams)
    for b in range(2):
        for t in range(n):
            chosen = int(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 2.0]]).roll(t // (span * hop), 1)[b].argmin())
            assert int(_sample(logits[b, t][None], uniforms[t, b * count + chosen][None])) == out[b, t]
    # one candidate is plain sampling
    one = generator.generate_guided(mel, alternate, candidates=1, n_samples=n, seed=3)
    assert torch.equal(one, generator.generate(mel, n_samples=n, seed=3))
    with pytest.raises(ValueError, match="candidates"):
        generator.generate_guided(mel, alternate, candidates=0)


def test_guided_beam_search_returns_the_best_path_and_continues_each_beam(kernel):
    """Two beams of two draws over two spans. For utterance 0 the costs make the beam search keep the
    span-1 draw that a single chain would drop (stream 1, 1.5 against 1.0), because its continuation is far
    cheaper; for utterance 1 the best path goes through the beam ranked first. Re-sampling the parallel pass
    on the output with each span's stream's uniforms must draw it again: the output is that path, and every
    span continued from its own beam's state."""
    model = tiny_net(6)
    mel = torch.rand(2, 9, 8)
    n, span, hop = 2 * 2 * 16, 2, 16
    tables = [
        torch.tensor([[1.0, 1.5, 9.0, 9.0], [1.5, 1.0, 9.0, 9.0]]),  # span 1: the beams start alike
        torch.tensor([[5.0, 5.0, 0.0, 3.0], [0.0, 3.0, 5.0, 5.0]]),  # span 2: beams ranked by span-1 total
    ]
    paths = [[1, 2], [1, 0]]  # per utterance, the stream that drew each span of the best path
    calls = []

    def table(classes, end):
        assert classes.shape == (2, 4, 3 + span * hop)
        calls.append(end)
        return tables[len(calls) - 1]

    out = FastGenerator(model, kernel).generate_guided(
        mel, table, candidates=4, beams=2, span=span, lookback=3, n_samples=n, seed=4
    )
    assert calls == [32, 64] and out.shape == (2, n)
    inputs = torch.cat([torch.full((2, 1), model.silence), out[:, :-1]], dim=1)
    with torch.no_grad():
        logits = model(inputs, mel)
    uniforms = torch.from_numpy(sampling_uniforms(n, 2 * 4, 4))  # (N, streams)
    for b in range(2):
        for t in range(n):
            stream = paths[b][t // (span * hop)]
            assert int(_sample(logits[b, t][None], uniforms[t, b * 4 + stream][None])) == out[b, t]
    with pytest.raises(ValueError, match="beams"):
        FastGenerator(model, kernel).generate_guided(mel, table, candidates=4, beams=3)


@pytest.mark.skipif(wavenet_c._compiler() is None, reason="no C compiler")
def test_c_kernel_is_cached_per_size(tmp_path, monkeypatch):
    monkeypatch.setenv("GLOTTIS_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(wavenet_c, "_loaded", {})
    first = wavenet_c.load((8, 12, 256))
    assert first.path.parent == tmp_path and list(tmp_path.iterdir()) == [first.path]  # no temporary left
    stamp = first.path.stat().st_mtime_ns
    monkeypatch.setattr(wavenet_c, "_loaded", {})
    assert wavenet_c.load((8, 12, 256)).path == first.path and first.path.stat().st_mtime_ns == stamp
    other = wavenet_c.load((4, 12, 256))  # another size is another library
    assert other.path != first.path and len(list(tmp_path.iterdir())) == 2
    generator = FastGenerator(tiny_net(), "c")
    generator._c = other
    with pytest.raises(ValueError, match="compiled for sizes"):  # the size check inside the library
        generator.generate(torch.rand(1, 3, 8), n_samples=10)


def test_kernel_choice_and_fallback(tmp_path, monkeypatch, caplog):
    model = tiny_net()
    with pytest.raises(ValueError, match="kernel must be one of"):
        FastGenerator(model, "fortran")
    monkeypatch.setenv("GLOTTIS_WAVENET_KERNEL", "numba")
    assert FastGenerator(model).kernel == "numba"
    assert FastGenerator(model, "auto").kernel == "numba"
    monkeypatch.setenv("GLOTTIS_WAVENET_KERNEL", "cobol")
    with pytest.raises(ValueError, match="GLOTTIS_WAVENET_KERNEL"):
        FastGenerator(model)
    # No compiler: auto falls back on numba with one warning; asking for C is an error naming the cause.
    monkeypatch.delenv("GLOTTIS_WAVENET_KERNEL")
    monkeypatch.setenv("GLOTTIS_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    monkeypatch.setattr(wavenet_c, "_loaded", {})
    monkeypatch.setattr(FastGenerator, "_warned", False)
    with caplog.at_level("WARNING"):
        assert FastGenerator(model).kernel == "numba"
        assert FastGenerator(model).kernel == "numba"
    assert sum("numba kernel" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(RuntimeError, match="no-such-cc"):
        FastGenerator(model, "c")


# --- training -------------------------------------------------------------------------------------


def test_windows_match_the_whole_utterance(corpus):
    cfg = load_config(VocoderConfig, TINY)
    data = WindowCorpus(corpus / "train.jsonl", cfg)
    model = build_model(cfg).eval()
    inputs, targets, mel = data.window_at(1, 5)
    hop, n = cfg.features.hop_length, cfg.train.window_frames * cfg.features.hop_length
    assert torch.equal(inputs[1:], targets[:-1]) and inputs.shape == (n,)
    full = data.mels[1][data.margin : len(data.mels[1]) - data.margin].float().unsqueeze(0)
    whole_inputs = torch.cat([torch.tensor([model.silence]), data.classes[1][:-1].long()]).unsqueeze(0)
    with torch.no_grad():
        whole = model(whole_inputs[:, : 5 * hop + n], full)[0, 5 * hop :]
        window = model(inputs.unsqueeze(0), mel.unsqueeze(0), padded=True)[0]
    # Same conditioning; the window's first samples lack their history, later ones see all of it.
    field = model.cfg.receptive_field
    assert torch.allclose(window[field:], whole[field:], atol=1e-5)


def test_windows_hold_the_pre_emphasised_classes(corpus):
    cfg = load_config(VocoderConfig, TINY, ["model.preemphasis=0.85"])
    data = WindowCorpus(corpus / "train.jsonl", cfg)
    wave, _ = load(corpus / "train1.wav", SR)
    assert data.ids[1] == "train1"
    assert torch.equal(data.classes[1].long(), encode_wave(wave, cfg.model))
    assert not torch.equal(data.classes[1].long(), mu_law_encode(wave))


def test_training_lowers_the_loss_and_writes_its_outputs(trained):
    rows = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    train = [r["value"] for r in rows if r["name"] == "train/loss"]
    dev = [r["value"] for r in rows if r["name"] == "dev/loss"]
    assert len(train) == 6 and len(dev) == 2
    assert train[-1] < train[0] - 0.5 and train[0] < math.log(256) + 0.5
    assert dev[-1] < dev[0] and dev[-1] < math.log(256) - 0.6  # log(256): the untrained model's loss
    for name in (
        "final.pt",
        "final.txt",
        "curves.png",
        "config.yaml",
        "checkpoints/best.pt",
        "samples/step-00000030.wav",
        "samples/reference.wav",
    ):
        assert (trained / name).stat().st_size > 0, name
    state = CheckpointManager.load(trained / "final.pt")
    assert state["step"] == 30 and "optimizer" not in state and len(state["averaged"]) == 2


def test_resume_continues_exactly_and_a_finished_run_is_a_no_op(corpus, trained, tmp_path):
    args = [
        "--config",
        str(TINY),
        "--exp-dir",
        str(tmp_path),
        "--train",
        str(corpus / "train.jsonl"),
        "--dev",
        str(corpus / "dev.jsonl"),
        "--no-progress",
    ]
    assert train_main([*args, "--stop-after-steps", "12"]) == 0
    assert not (tmp_path / "final.pt").exists()
    assert CheckpointManager.load(CheckpointManager(tmp_path).latest())["step"] == 12
    assert train_main(args) == 0
    resumed = CheckpointManager.load(tmp_path / "final.pt")["model"]
    straight = CheckpointManager.load(trained / "final.pt")["model"]
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)
    mtime = (tmp_path / "final.pt").stat().st_mtime_ns
    assert train_main(args) == 0
    assert (tmp_path / "final.pt").stat().st_mtime_ns == mtime


def test_input_noise_moves_each_class_by_at_most_its_amount():
    generator = torch.Generator().manual_seed(0)
    classes = torch.cat([torch.zeros(500, dtype=torch.long), torch.full((500,), 255), torch.randint(0, 256, (1000,))])
    noisy = add_input_noise(classes, 3, 256, generator)
    moved = noisy - classes
    assert moved.abs().max() == 3 and noisy.min() == 0 and noisy.max() == 255  # clamped at both ends
    assert 0.75 < (moved[1000:] != 0).float().mean() < 0.95  # 6 of 7 offsets are not zero
    assert abs(moved[1000:].float().mean()) < 0.2  # no bias
    assert add_input_noise(classes, 0, 256, generator) is classes


def test_training_with_input_noise_keeps_the_dev_loss_clean(corpus, trained, tmp_path):
    args = ["--config", str(TINY), "--exp-dir", str(tmp_path), "--train", str(corpus / "train.jsonl"),
            "--dev", str(corpus / "dev.jsonl"), "--no-progress", "--set", "train.input_noise=4"]
    assert train_main(args) == 0
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    noisy_train = [r["value"] for r in rows if r["name"] == "train/loss"]
    clean = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    clean_train = [r["value"] for r in clean if r["name"] == "train/loss"]
    # Same seed and windows: only the inputs differ, and noisy inputs make the targets harder to predict.
    assert noisy_train[-1] > clean_train[-1]
    assert load_config(VocoderConfig, tmp_path / "config.yaml").train.input_noise == 4


# --- bundle and command line ----------------------------------------------------------------------


def test_init_starts_a_new_run_from_a_bundle(corpus, bundle, tmp_path):
    exp = tmp_path / "continued"
    args = ["--config", str(TINY), "--exp-dir", str(exp), "--train", str(corpus / "train.jsonl"), "--no-progress",
            "--init", str(bundle), "--set", "train.peak_lr=0.0", "--set", "train.total_steps=2"]
    assert train_main(args) == 0
    got = CheckpointManager.load(exp / "final.pt")
    assert got["init"] == str(bundle)
    for name, value in load_file(str(bundle / "model.safetensors")).items():
        if "running_" in name or "num_batches" in name:
            continue  # batch-norm statistics move in training even at a learning rate of 0
        torch.testing.assert_close(got["model"][name], value.to(got["model"][name].dtype), atol=0, rtol=0, msg=name)


def test_bundle_round_trip(trained, bundle):
    weights = load_file(str(bundle / "model.safetensors"))
    assert weights["gates.0.weight"].dtype == torch.float16
    assert "WaveNet" in (bundle / "MODEL_CARD.md").read_text()
    assert sum(f.stat().st_size for f in bundle.iterdir()) < 30e6
    from_bundle, from_checkpoint = load_vocoder(bundle), load_vocoder(trained / "final.pt")
    assert from_bundle.step == 30 and from_bundle.feature_config == from_checkpoint.feature_config
    mel, inputs = torch.rand(1, 6, 32), torch.randint(0, 256, (1, 5 * 256))
    with torch.no_grad():
        a, b = from_bundle.model(inputs, mel), from_checkpoint.model(inputs, mel)
    assert 0 < (a - b).abs().max() < 0.05  # fp16 rounding only


def test_card_names_the_init_weights_without_pointing_at_itself(tmp_path):
    assert _init_text(str(tmp_path / "bundle"), tmp_path / "bundle").endswith("before this one (see How it was made)")
    assert _init_text("tts/pretrained/other", tmp_path / "bundle") == "`tts/pretrained/other`"
    assert _init_text(None, tmp_path / "bundle") is None


def test_bundle_keeps_its_temperature_and_card_command(trained, tmp_path):
    scores = tmp_path / "scores.json"
    systems = {"wavenet": {"mcd_db": 9.0, "real_time_factor": 0.4}, "griffin-lim": {"mcd_db": 5.0, "real_time_factor": 0.1}}
    scores.write_text(json.dumps({"systems": systems, "settings": {"temperature": 0.7}}))
    command = "make -C recipes/synth_en vocoder && make -C recipes/synth_en vocoder VOC_EXP=exp/second"
    folder = export_vocoder(
        trained / "final.pt", tmp_path / "scored", scores=scores, command=command, config_path="configs/x.yaml"
    )
    card = (folder / "MODEL_CARD.md").read_text()
    assert Vocoder(folder).temperature == 0.7 and "temperature 0.7" in card
    assert f"    {command}\n" in card and "Config: `configs/x.yaml`" in card
    assert Vocoder(folder, temperature=1.2).temperature == 1.2
    assert Vocoder(trained / "final.pt").temperature == 1.0  # a checkpoint has no tuned temperature
    with pytest.raises(ValueError, match="temperature"):
        Vocoder(folder, temperature=0.0)


def test_guided_vocoder_follows_the_mel_more_closely(corpus, bundle):
    wave = torch.from_numpy(sf.read(str(corpus / "dev0.wav"), dtype="float32")[0])
    mel = Vocoder(bundle).mel(wave)

    def distance(candidates: int) -> float:
        """Mean over 3 seeds of the raw output's mel distance to the mel it was generated from."""
        total = 0.0
        for seed in range(3):
            vocoder = Vocoder(bundle, postfilter=False, candidates=candidates, seed=seed)
            total += float((vocoder.mel(vocoder.vocode(mel, wave.shape[0])) - mel).abs().mean()) / 3
        return total

    assert Vocoder(bundle, candidates=2).copy_synthesis(wave).shape == wave.shape
    # utterances of a few frames, shorter than the guide's look-back and than half an analysis window
    for vocoder in (Vocoder(bundle), Vocoder(bundle, candidates=3)):
        outs = vocoder.vocode_batch([mel[:2], mel[:7], mel[:3]], [100, 1500, 700])
        assert [o.shape[0] for o in outs] == [100, 1500, 700] and all(torch.isfinite(o).all() for o in outs)
    # the tiny test model barely follows its mel, so the gain is small (0.233 -> 0.226); the bundle's is in
    # recipes/synth_en/RESULTS.md (session 35)
    assert distance(8) < distance(1) - 0.003
    with pytest.raises(ValueError, match="candidates"):
        Vocoder(bundle, candidates=0)
    # the default temperature: the bundle's own, or the guided one when guided sampling feeds the mel gate
    own = load_vocoder(bundle).temperature
    assert own != GUIDED_TEMPERATURE
    assert Vocoder(bundle).temperature == own
    assert Vocoder(bundle, candidates=2).temperature == GUIDED_TEMPERATURE
    assert Vocoder(bundle, candidates=2, postfilter=False).temperature == own
    assert Vocoder(bundle, candidates=2, temperature=0.9).temperature == 0.9
    # candidates split into beams of at least 2 draws by default; other splits are refused
    assert [Vocoder(bundle, candidates=c).beams for c in (1, 2, 3, 4, 6, 7)] == [1, 1, 1, 2, 2, 1]
    assert Vocoder(bundle, candidates=4, beams=1).beams == 1
    assert Vocoder(bundle, candidates=4, beams=4).beams == 4  # the best of 4 whole samples
    for candidates, beams in ((4, 3), (6, 4), (2, 0)):
        with pytest.raises(ValueError, match="beams"):
            Vocoder(bundle, candidates=candidates, beams=beams)


def test_mel_guide_weighs_missing_energy_above_excess():
    """A candidate 6 dB under the mel and one 6 dB over it cost about the same with the plain L1, but the
    quiet one costs far more when excess is down-weighted (the mel gate cuts excess, not what is missing)."""
    from tts.spectrogram import TTS_FEATURES

    cfg, scale, model_cfg = TTS_FEATURES, SpectrogramScale(), WaveNetConfig()
    wave = torch.from_numpy(voiced(0.5, 140.0, seed=3)).float()
    mel, _, _ = TargetExtractor(cfg, scale)(wave[None])  # (1, T, M)
    candidates = torch.stack([encode_wave(wave * 0.5, model_cfg), encode_wave(wave * 2.0, model_cfg)])
    n = wave.shape[0]

    def costs(weight: float) -> tuple[float, float]:
        cost, lookback = mel_guide(mel, cfg, scale, model_cfg, excess_weight=weight)
        assert lookback < n
        quiet, loud = cost(candidates[None], n)[0].tolist()  # (B=1, C=2) -> (2,)
        return quiet, loud

    quiet, loud = costs(1.0)
    assert quiet > 0 and loud > 0 and 0.5 < quiet / loud < 2.0  # 151 and 215
    quiet, loud = costs(0.1)
    assert quiet > 5 * loud
    quiet, loud = costs(0.0)
    assert quiet > 0 and loud == 0.0
    with pytest.raises(ValueError, match="excess_weight"):
        mel_guide(mel, cfg, scale, model_cfg, excess_weight=-1.0)


def test_vocode_cli_copy_synthesis_and_mel(corpus, bundle, tmp_path, capsys):
    wav = corpus / "dev0.wav"
    out = tmp_path / "copy.wav"
    assert glottis(["vocode", str(wav), "-o", str(out), "--model", str(bundle)]) == 0
    assert sf.info(str(out)).frames == sf.info(str(wav)).frames and sf.info(str(out)).samplerate == SR
    copy, _ = sf.read(str(out))
    assert 0.005 < np.abs(copy).max() <= 1.0
    guided = tmp_path / "guided.wav"
    assert glottis(["vocode", str(wav), "-o", str(guided), "--model", str(bundle), "--candidates", "2"]) == 0
    assert sf.info(str(guided)).frames == sf.info(str(wav)).frames
    assert not np.array_equal(sf.read(str(guided))[0], copy)
    assert glottis(["vocode", str(wav), "-o", str(guided), "--model", str(bundle), "--candidates", "0"]) == 2
    assert "--candidates" in capsys.readouterr().err
    mel = Vocoder(bundle).mel(torch.from_numpy(sf.read(str(wav), dtype="float32")[0]))
    np.save(tmp_path / "mel.npy", mel.numpy())
    assert (
        glottis(
            ["vocode", str(tmp_path / "mel.npy"), "-o", str(tmp_path / "mel.wav"), "--model", str(bundle)]
        )
        == 0
    )
    assert sf.info(str(tmp_path / "mel.wav")).frames == (mel.shape[0] - 1) * 256
    capsys.readouterr()
    np.save(tmp_path / "bad.npy", np.zeros((10, 7), dtype=np.float32))
    assert (
        glottis(["vocode", str(tmp_path / "bad.npy"), "-o", str(tmp_path / "x.wav"), "--model", str(bundle)])
        == 2
    )
    assert "bad.npy" in capsys.readouterr().err
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    assert (
        glottis(["vocode", str(tmp_path / "junk.wav"), "-o", str(tmp_path / "x.wav"), "--model", str(bundle)])
        == 2
    )
    assert "junk.wav" in capsys.readouterr().err
    assert (
        glottis(["vocode", str(wav), "-o", str(tmp_path / "x.wav"), "--model", str(tmp_path / "nowhere")])
        == 1
    )
    assert "nowhere" in capsys.readouterr().err
    assert not (tmp_path / "x.wav").exists()


def test_vocoder_de_emphasises_what_a_pre_emphasised_model_generates(bundle):
    import dataclasses

    vocoder = Vocoder(bundle, postfilter=False)
    mel = vocoder.mel(torch.from_numpy(voiced(0.3, 120.0, seed=5)))
    plain = vocoder.vocode(mel)
    vocoder.loaded.model.cfg = dataclasses.replace(vocoder.loaded.model.cfg, preemphasis=0.85)
    torch.testing.assert_close(vocoder.vocode(mel), deemphasis(plain, 0.85).clamp(-1, 1))


def test_synthesize_with_the_wavenet_vocoder(bundle, tmp_path, capsys):
    from tts.bundle import export_bundle
    from tts.train import TTSConfig
    from tts.train import build_model as build_tacotron
    from tts.train import model_metadata as tacotron_metadata

    steps = 10
    cfg = load_config(
        TTSConfig, ROOT / "configs" / "tts" / "tacotron_tiny.yaml", [f"model.max_decoder_steps={steps}"]
    )
    torch.manual_seed(0)
    tacotron = build_tacotron(cfg)
    with torch.no_grad():
        tacotron.decoder.stop_proj.bias.fill_(-20.0)  # never stops: a known length
    checkpoint = tmp_path / "tacotron.pt"
    torch.save({**tacotron_metadata(cfg, tacotron), "model": tacotron.state_dict(), "step": 1}, checkpoint)
    tacotron_dir = export_bundle(checkpoint, tmp_path / "tacotron")
    out = tmp_path / "hi.wav"
    common = ["synthesize", "hello there", "-o", str(out), "--model", str(tacotron_dir), "--threads", "1"]
    assert glottis([*common, "--vocoder", "wavenet", "--vocoder-model", str(bundle)]) == 0
    assert sf.info(str(out)).frames == (steps * cfg.model.r - 1) * cfg.features.hop_length
    capsys.readouterr()
    assert glottis([*common, "--vocoder", "wavenet", "--vocoder-model", str(tmp_path / "none")]) == 2
    assert "not available" in capsys.readouterr().err
    # A vocoder trained on other features is refused.
    mismatch = load_config(VocoderConfig, TINY, ["features.n_mels=40"])
    model = build_model(mismatch)
    path = tmp_path / "mismatch.pt"
    from tts.vocoder_train import model_metadata

    torch.save({**model_metadata(mismatch, model), "model": model.state_dict(), "step": 0}, path)
    assert glottis([*common, "--vocoder", "wavenet", "--vocoder-model", str(path)]) == 2
    assert "other mel features" in capsys.readouterr().err


def test_mel_gate_cuts_the_noise_above_the_mel_and_adds_nothing(bundle):
    from tts.spectrogram import mel_gate

    vocoder = Vocoder(bundle)
    cfg, scale = vocoder.loaded.feature_config, vocoder.loaded.scale
    clean = torch.from_numpy(voiced(0.8, 130.0, seed=7))
    noise = 0.01 * torch.randn(clean.shape[0], generator=torch.Generator().manual_seed(0))
    mel = vocoder.mel(clean)
    # Gated by its own mel a wave comes back as it was (gain 1 everywhere; the STFT round trip is exact).
    torch.testing.assert_close(mel_gate(clean, mel, cfg, scale), clean, atol=1e-4, rtol=0)
    # Noise spread into the quiet bands and the fades comes out; the tone's harmonics stay.
    gated = mel_gate(clean + noise, mel, cfg, scale)
    assert (gated - clean).pow(2).mean() < 0.25 * noise.pow(2).mean()
    loud = mel > mel.max() - 0.2  # the harmonics: within 20 dB of the loudest band and frame
    assert loud.sum() > 50
    for band_mel in (vocoder.mel(gated), vocoder.mel(clean + noise)):
        assert (band_mel[loud] - mel[loud]).abs().mean() * 100 < 1.5  # within 1.5 dB
    # It never adds: gated by a louder mel, the wave is unchanged.
    torch.testing.assert_close(mel_gate(clean, (mel + 0.2).clamp(max=1), cfg, scale), clean, atol=1e-4, rtol=0)
    # The vocoder applies it to what it generates, unless told not to.
    raw = Vocoder(bundle, postfilter=False).vocode(mel)
    torch.testing.assert_close(vocoder.vocode(mel), mel_gate(raw, mel, cfg, scale).clamp(-1, 1))


def test_widening_keeps_the_function_and_trains_the_new_units(tmp_path):
    model = tiny_net(3)
    ckpt = tmp_path / "small.pt"
    torch.save({"model": model.state_dict()}, ckpt)
    out = tmp_path / "wide.pt"
    assert widen_main(["--model", str(ckpt), "--residual", "12", "--skip", "16", "--out", str(out)]) == 0
    wide = WaveNet(replace(model.cfg, residual_channels=12, skip_channels=16)).eval()
    wide.load_state_dict(torch.load(out)["model"])
    mel, inputs = torch.rand(2, 6, 8), torch.randint(0, 256, (2, 80))
    with torch.no_grad():
        assert (wide(inputs, mel) - model(inputs, mel)).abs().max() < 1e-5
    assert torch.equal(FastGenerator(wide).generate(mel, n_samples=60, seed=1),
                       FastGenerator(model).generate(mel, n_samples=60, seed=1))
    # The zero weights out of the new units get gradients, so training can use them.
    wide.train()
    torch.nn.functional.cross_entropy(wide(inputs, mel).transpose(1, 2), inputs.roll(-1, 1)).backward()
    assert wide.out2.weight.grad[:, 12:].abs().sum() > 0  # out2 columns of the new first-output units
    assert wide.res_skip[0].weight.grad[:8, 8:].abs().sum() > 0  # new gated units into old residual rows
    with pytest.raises(ValueError, match="can only widen"):
        widen_wavenet_state(model.state_dict(), 4, 16)


@pytest.mark.skipif(wavenet_c._compiler() is None, reason="no C compiler")
def test_c_kernel_builds_without_march_native_when_refused(tmp_path, monkeypatch):
    real = wavenet_c._compiler()
    fussy = tmp_path / "fussy-cc"
    fussy.write_text(f'#!/bin/sh\ncase "$*" in *-march=native*) echo "no -march=native here" >&2; exit 1;; esac\n'
                     f'exec {real} "$@"\n')
    fussy.chmod(0o755)
    monkeypatch.setenv("GLOTTIS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(fussy))
    monkeypatch.setattr(wavenet_c, "_loaded", {})
    model = tiny_net(2)
    mel = torch.rand(1, 5, 8)
    generator = FastGenerator(model, "c")
    assert generator.kernel == "c"
    assert torch.equal(generator.generate(mel, n_samples=40, seed=1), FastGenerator(model, "numba").generate(
        mel, n_samples=40, seed=1))
    broken = tmp_path / "broken-cc"
    broken.write_text('#!/bin/sh\necho "internal compiler error" >&2\nexit 1\n')
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    monkeypatch.setattr(wavenet_c, "_loaded", {})
    with pytest.raises(RuntimeError, match="internal compiler error"):
        FastGenerator(model, "c")
    assert not [p for p in (tmp_path / "cache").iterdir() if p.suffix == ".tmp"]  # nothing half-written left
