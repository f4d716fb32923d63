"""Tacotron training: targets, overfitting a few espeak-ng sentences (loss and alignment), exact resume."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import soundfile as sf
import torch

from audio.config import load_config
from audio.training import CheckpointManager
from tts.alignment import alignment_scores, mean_scores
from tts.tacotron import tacotron_loss
from tts.train import TrainConfig, TTSConfig, build_loader, build_model, collate_tts, main, priority_bins

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tts" / "tacotron_tiny.yaml"
SENTENCES = ["the cat sat on a mat.", "a dog ran home.", "we like green apples."]

pytestmark = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Three ~1.2 s sentences spoken by espeak-ng (22.05 kHz) and their manifest."""
    folder = tmp_path_factory.mktemp("tts_corpus")
    lines = []
    for i, text in enumerate(SENTENCES):
        wav = folder / f"u{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "200", "-w", str(wav), text], check=True)
        info = sf.info(str(wav))
        lines.append(
            json.dumps(
                {
                    "id": f"u{i}",
                    "audio": wav.name,
                    "text": text,
                    "speaker": "espeak",
                    "duration": info.duration,
                    "sample_rate": info.samplerate,
                }
            )
        )
    manifest = folder / "train.jsonl"
    manifest.write_text("\n".join(lines) + "\n")
    return manifest


def whole_batch(cfg: TTSConfig, manifest: Path) -> dict:
    loader, _ = build_loader(manifest, cfg, rank=0, world=1, train=False)
    dataset = loader.dataset
    return collate_tts(cfg.features, cfg.scale)([dataset[i] for i in range(len(dataset))])


def test_collated_targets(corpus):
    cfg = load_config(TTSConfig, TINY)
    batch = whole_batch(cfg, corpus)
    assert batch["ids"].shape[0] == 3 and batch["text_lengths"].max() == batch["ids"].shape[1]
    assert batch["mels"].shape[2] == cfg.features.n_mels and batch["linears"].shape[2] == cfg.features.n_freqs
    for b, frames in enumerate(batch["mel_lengths"].tolist()):
        valid = batch["mels"][b, :frames]
        assert 0.0 <= valid.min() and valid.max() <= 1.0 and valid.max() > 0.5  # dB-normalised speech
        assert torch.all(batch["mels"][b, frames:] == 0) and torch.all(batch["linears"][b, frames:] == 0)


def test_priority_bins_follow_the_feature_config():
    assert priority_bins(load_config(TTSConfig, TINY)) == 0  # off by default, as in the paper
    cfg = load_config(TTSConfig, TINY, ["train.priority_freq=3000"])
    nyquist, bins = cfg.features.sample_rate / 2, cfg.features.n_freqs
    assert priority_bins(cfg) == int(3000 / nyquist * bins)
    assert priority_bins(load_config(TTSConfig, TINY, ["train.priority_freq=1e6"])) == bins


def _teacher_forced_scores(model, batch, r: int) -> dict[str, float]:
    model.eval()
    with torch.no_grad():
        out = model(
            batch["ids"], batch["text_lengths"], batch["mels"], batch["mel_lengths"], prenet_dropout=False
        )
    model.train()
    steps = (-(-batch["mel_lengths"] // r)).tolist()
    return mean_scores(
        [
            alignment_scores(out.alignments[b], steps=steps[b], text_length=int(batch["text_lengths"][b]))
            for b in range(len(steps))
        ]
    )


def test_overfits_a_few_sentences_and_learns_a_diagonal_alignment(corpus):
    cfg = load_config(TTSConfig, TINY, ["model.r=3"])
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = whole_batch(cfg, corpus)
    before = _teacher_forced_scores(model, batch, cfg.model.r)
    optimizer = torch.optim.Adam(model.parameters(), lr=6e-3)
    history = []
    # 80 steps left the diagonality at 0.71-0.96 over seeds 0-3 (0.74 for seed 0 with espeak-ng 1.51 on a new
    # machine, where the 0.75 bar failed); after 120 it is 0.95-0.99.
    for _ in range(120):
        out = model(batch["ids"], batch["text_lengths"], batch["mels"], batch["mel_lengths"])
        losses = tacotron_loss(
            out,
            batch["mels"],
            batch["linears"],
            batch["mel_lengths"],
            batch["text_lengths"],
            r=cfg.model.r,
            guided_weight=cfg.train.guided_attention_weight,
        )
        optimizer.zero_grad()
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        history.append({k: v.item() for k, v in losses.items()})
    after = _teacher_forced_scores(model, batch, cfg.model.r)
    first, last = history[0], history[-1]
    assert last["loss"] < 0.5 * first["loss"]
    assert last["mel"] + last["linear"] < 0.8 * (first["mel"] + first["linear"])
    assert before["diagonality"] < 0.3 and before["focus_rate"] < 0.1
    assert after["diagonality"] > 0.85, after
    assert after["monotonic"] > 0.9 and after["end_reached"] == 1.0, after
    assert after["focus_rate"] > 2 * before["focus_rate"], (before, after)


def _train(exp: Path, corpus: Path, *extra: str) -> None:
    overrides = [
        "train.total_steps=6",
        "train.checkpoint_every=2",
        "train.max_batch_size=2",
        "train.log_every=1",
        "train.average_last=2",
        "train.warmup_steps=2",
    ]
    argv = [
        "--config",
        str(TINY),
        "--exp-dir",
        str(exp),
        "--train",
        str(corpus),
        "--threads",
        "1",
        "--no-progress",
    ]
    for item in overrides:
        argv += ["--set", item]
    assert main(argv + list(extra)) == 0


def test_resume_after_a_kill_continues_exactly(corpus, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    _train(straight, corpus)
    _train(interrupted, corpus, "--stop-after-steps", "3")
    manager = CheckpointManager(interrupted)
    assert [p.name for p in manager.steps()] == ["step-00000002.pt", "step-00000003.pt"]
    assert CheckpointManager.load(manager.latest())["step"] == 3
    assert not (interrupted / "final.pt").exists()
    manager.latest().unlink()  # as if killed after step 3, before it was saved: resume from step 2
    _train(interrupted, corpus)
    assert [p.name for p in manager.steps()] == ["step-00000002.pt", "step-00000004.pt", "step-00000006.pt"]
    resumed = CheckpointManager.load(interrupted / "checkpoints" / "step-00000006.pt")
    reference = CheckpointManager.load(straight / "checkpoints" / "step-00000006.pt")
    assert resumed["step"] == 6 and resumed["sampler"] == reference["sampler"]
    for name, value in reference["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, atol=1e-6, rtol=1e-5, msg=name)
    final = CheckpointManager.load(interrupted / "final.pt")
    assert final["averaged"] == ["step-00000004.pt", "step-00000006.pt"] and "optimizer" not in final
    logged = [json.loads(line) for line in (interrupted / "metrics.jsonl").read_text().splitlines()]
    assert max(row["step"] for row in logged if row["name"] == "train/loss") == 6


def test_init_continues_from_a_bundle_with_a_fresh_schedule(corpus, tmp_path):
    from safetensors.torch import load_file

    from tts.bundle import export_bundle

    first = tmp_path / "first"
    _train(first, corpus)
    bundle = export_bundle(first / "final.pt", tmp_path / "bundle")
    second = tmp_path / "second"
    # A learning rate of 0: the second stage's weights are exactly the bundle's (fp16 or fp32).
    _train(second, corpus, "--init", str(bundle), "--set", "train.peak_lr=0.0")
    got = CheckpointManager.load(second / "final.pt")
    assert got["step"] == 6 and got["init"] == str(bundle)
    shipped = load_file(str(bundle / "model.safetensors"))
    for name, value in shipped.items():
        if "running_" in name or "num_batches" in name:
            continue  # batch-norm statistics move in training even at a learning rate of 0
        torch.testing.assert_close(got["model"][name], value.to(got["model"][name].dtype), atol=0, rtol=0, msg=name)


def test_scheduled_sampling_ramps_up_and_is_logged(corpus, tmp_path):
    from tts.train import TrainConfig

    ramp = TrainConfig(feedback=0.4, feedback_ramp_steps=4)
    assert [ramp.feedback_at(s) for s in (0, 2, 4, 9)] == [0.0, 0.2, 0.4, 0.4]
    assert TrainConfig(feedback=0.4).feedback_at(0) == 0.4
    _train(tmp_path, corpus, "--set", "train.feedback=0.4", "--set", "train.feedback_ramp_steps=4")
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    fed = {row["step"]: row["value"] for row in logged if row["name"] == "train/feedback"}
    # logged at step s (1-based): the probability that step's batch (0-based s - 1) was trained with
    assert fed == pytest.approx({1: 0.0, 2: 0.1, 3: 0.2, 4: 0.3, 5: 0.4, 6: 0.4})


def test_a_postnet_stage_trains_a_resized_postnet_on_a_frozen_model(corpus, tmp_path):
    from tts.bundle import export_bundle

    first = tmp_path / "first"
    _train(first, corpus)
    bundle = export_bundle(first / "final.pt", tmp_path / "bundle")
    resized = ["--set", "model.postnet_channels=48", "--set", "model.postnet_gru=40"]
    with pytest.raises(ValueError, match="shape mismatch"):  # a resized post-net does not fit the bundle
        _train(tmp_path / "strict", corpus, "--init", str(bundle), *resized)
    second = tmp_path / "second"
    _train(second, corpus, "--init", str(bundle), *resized,
           "--set", "train.train_only=[postnet, linear_proj]", "--set", "train.init_skip=[postnet, linear_proj]")
    before = CheckpointManager.load(first / "final.pt")["model"]
    after = CheckpointManager.load(second / "final.pt")["model"]
    for name, value in after.items():
        if name.startswith(("encoder.", "decoder.")):  # frozen, batch-norm statistics included
            torch.testing.assert_close(value, before[name].to(value.dtype), atol=1e-3, rtol=1e-3, msg=name)
    assert after["linear_proj.weight"].shape[1] == 80 and after["postnet.gru.forward_gru.weight_hh_l0"].shape[1] == 40
    logged = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    linear = [row["value"] for row in logged if row["name"] == "train/linear"]
    assert linear[-1] < linear[0]  # the fresh post-net learns


def test_decoder_cache_needs_a_frozen_decoder():
    from tts.train import TrainConfig

    TrainConfig(decoder_cache=True, train_only=("postnet", "linear_proj"))
    for train_only in ((), ("decoder", "postnet")):
        with pytest.raises(ValueError, match="decoder_cache needs a frozen encoder and decoder"):
            TrainConfig(decoder_cache=True, train_only=train_only)


def test_decoder_cache_gives_the_forward_passs_post_net_output(corpus):
    from tts.train import DecoderCache

    cfg = load_config(TTSConfig, TINY)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    batch = whole_batch(cfg, corpus)
    one = {k: v[:1] for k, v in batch.items()}  # one item: no padding beyond its own decoder steps
    cache = DecoderCache(cfg.model.r)
    assert one["utt_ids"] not in cache
    out = model(one["ids"], one["text_lengths"], one["mels"], one["mel_lengths"], feedback=0.5)
    cache.store(one["utt_ids"], out, one["mel_lengths"], one["text_lengths"])
    assert one["utt_ids"] in cache and batch["utt_ids"] not in cache
    again = cache.output(model, one["utt_ids"], one["mel_lengths"], torch.device("cpu"))
    for name in ("mel", "linear", "stop_logits", "alignments"):
        torch.testing.assert_close(getattr(again, name), getattr(out, name), atol=1e-3, rtol=1e-3, msg=name)


def test_a_cached_postnet_stage_runs_the_decoder_in_the_first_epoch_only(corpus, tmp_path, monkeypatch):
    from tts.tacotron import Tacotron

    first = tmp_path / "first"
    _train(first, corpus)
    calls = []
    forward = Tacotron.forward

    def counted(self, *args, **kwargs):
        calls.append(self.training)
        return forward(self, *args, **kwargs)

    monkeypatch.setattr(Tacotron, "forward", counted)
    second = tmp_path / "second"
    _train(second, corpus, "--init", str(first / "final.pt"), "--set", "train.feedback=0.5",
           "--set", "train.train_only=[postnet, linear_proj]", "--set", "train.decoder_cache=true")
    cfg = load_config(TTSConfig, TINY, ["train.max_batch_size=2"])
    epoch = len(build_loader(corpus, cfg, rank=0, world=1, train=True)[0])
    assert 0 < epoch < 6 and calls.count(True) == epoch  # the decoder ran in the first epoch only
    logged = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    linear = [row["value"] for row in logged if row["name"] == "train/linear"]
    assert len(linear) == 6 and linear[-1] < linear[0]
    before = CheckpointManager.load(first / "final.pt")["model"]
    after = CheckpointManager.load(second / "final.pt")["model"]
    torch.testing.assert_close(after["decoder.rnns.0.weight_hh"], before["decoder.rnns.0.weight_hh"])


def test_mel_to_linear_map_recovers_the_linear_spectrogram(corpus):
    from tts.spectrogram import mel_to_linear_map

    cfg = TTSConfig()
    batch = whole_batch(cfg, corpus)
    weight, bias = mel_to_linear_map(cfg.features, cfg.scale)
    mel, linear = batch["mels"], batch["linears"]
    estimate = (mel @ weight + bias).clamp(0, 1)
    valid = linear > 0
    loud = linear > 0.3  # the bins above -70 dB, where the speech is
    assert (estimate - linear)[valid].abs().mean() < 0.08
    assert (estimate - linear)[loud].mean().abs() < 0.03  # no level offset (without it: ~-0.25)
    assert (mel @ weight).clamp(0, 1)[loud].mean() < linear[loud].mean() - 0.15


def test_a_skip_postnet_starts_at_the_map_and_survives_a_bundle(corpus, tmp_path):
    from tts.bundle import export_bundle, load_tacotron
    from tts.spectrogram import mel_to_linear_map

    first = tmp_path / "first"
    _train(first, corpus)
    bundle = export_bundle(first / "final.pt", tmp_path / "bundle")
    skip = ["--set", "model.postnet_skip=true"]
    with pytest.raises(ValueError, match="missing"):  # the bundle has no linear_skip
        _train(tmp_path / "strict", corpus, "--init", str(bundle), *skip, "--set", "train.skip_start=zero")
    cfg = load_config(TTSConfig, TINY, overrides=["model.postnet_skip=true"])
    model = build_model(cfg).eval()
    weight, bias = mel_to_linear_map(cfg.features, cfg.scale)
    mel = torch.rand(2, 12, cfg.features.n_mels)
    torch.testing.assert_close(model.postprocess(mel, torch.tensor([12, 12])), mel @ weight + bias)
    second = tmp_path / "second"
    parts = "[postnet, linear_proj, linear_skip]"
    _train(second, corpus, "--init", str(bundle), *skip,
           "--set", f"train.train_only={parts}", "--set", f"train.init_skip={parts}")
    after = CheckpointManager.load(second / "final.pt")["model"]
    assert not torch.equal(after["linear_skip.weight"], weight.T)  # trained
    skip_bundle = export_bundle(second / "final.pt", tmp_path / "skip_bundle")
    loaded = load_tacotron(skip_bundle)
    assert loaded.model.cfg.postnet_skip
    torch.testing.assert_close(loaded.model.linear_skip.weight, after["linear_skip.weight"].float(),
                               atol=2e-3, rtol=2e-3)  # fp16 storage
    third = tmp_path / "third"  # a further stage loads the trained skip path, whatever skip_start says
    _train(third, corpus, "--init", str(skip_bundle), *skip, "--set", "train.skip_start=zero",
           "--set", f"train.train_only={parts}", "--set", "train.total_steps=1", "--set", "train.peak_lr=1e-9")
    torch.testing.assert_close(CheckpointManager.load(third / "final.pt")["model"]["linear_skip.weight"],
                               loaded.model.linear_skip.weight, atol=1e-6, rtol=0)


def test_a_zero_skip_beside_a_trained_postnet_leaves_its_output_unchanged(corpus, tmp_path):
    first = tmp_path / "first"
    _train(first, corpus)
    parts = "[postnet, linear_proj, linear_skip]"
    second = tmp_path / "second"
    _train(second, corpus, "--init", str(first / "final.pt"), "--set", "model.postnet_skip=true",
           "--set", "train.skip_start=zero", "--set", f"train.train_only={parts}",
           "--set", "train.init_skip=[linear_skip]", "--set", "train.total_steps=1", "--set", "train.peak_lr=1e-9")
    before = CheckpointManager.load(first / "final.pt")["model"]
    after = CheckpointManager.load(second / "final.pt")["model"]
    assert after["linear_skip.weight"].abs().max() < 1e-6  # started at zero, barely moved
    torch.testing.assert_close(after["linear_proj.weight"], before["linear_proj.weight"], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="skip_start"):
        TrainConfig(skip_start="both")
    with pytest.raises(ValueError, match="skip_start=zero"):  # the map beside a trained post-net
        _train(tmp_path / "doubled", corpus, "--init", str(first / "final.pt"), "--set", "model.postnet_skip=true",
               "--set", f"train.train_only={parts}", "--set", "train.init_skip=[linear_skip]")
