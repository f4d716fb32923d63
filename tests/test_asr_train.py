"""``python -m asr.train`` end to end on the espeak-ng fixture corpus with ``configs/asr/tiny.yaml``:
the loss falls, checkpoints are atomic and averaged, and an interrupted run resumes exactly."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from asr.train import ASRConfig, main
from audio.config import load_config
from audio.training import CheckpointManager, TrainLogger
from tests.asr_fixtures import TINY_CONFIG, TRAIN_OVERRIDES, train_args


def metric_steps(exp_dir: Path, name: str) -> list[int]:
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["name"] == name]


def metric_values(exp_dir: Path, name: str) -> list[float]:
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["value"] for r in rows if r["name"] == name]


def checkpoint_steps(exp_dir: Path) -> list[int]:
    return [CheckpointManager.load(p)["step"] for p in CheckpointManager(exp_dir).steps()]


def test_tiny_config_maps_onto_the_dataclasses():
    cfg = load_config(ASRConfig, TINY_CONFIG, ["train.total_steps=7", "model.lstm_hidden=8"])
    assert cfg.train.total_steps == 7 and cfg.model.lstm_hidden == 8
    assert cfg.features.n_mels == 40 and cfg.model.conv_strides == (2,)
    with pytest.raises(ValueError, match="bogus"):
        load_config(ASRConfig, TINY_CONFIG, ["train.bogus=1"])


def test_unknown_override_is_an_error(asr_corpus, tmp_path):
    with pytest.raises(ValueError, match="lstm_hiden"):
        main(train_args(asr_corpus, tmp_path / "exp", "model.lstm_hiden=8"))
    assert not (tmp_path / "exp" / "checkpoints").exists()


def test_loss_falls_and_checkpoints_are_atomic_and_averaged(asr_corpus, tmp_path):
    exp = tmp_path / "exp"
    assert main(train_args(asr_corpus, exp, "train.total_steps=30", "train.eval_every=10",
                           "train.checkpoint_every=10", "train.average_last=2", dev=True)) == 0
    # Dev loss (the whole corpus, in eval mode) after 10, 20 and 30 steps.
    assert metric_steps(exp, "dev/loss") == [10, 20, 30]
    losses = metric_values(exp, "dev/loss")
    assert losses[2] < losses[1] < losses[0], losses
    assert losses[2] < 0.6 * losses[0], losses

    assert not list(exp.rglob("*.tmp"))
    assert [p.name for p in CheckpointManager(exp).steps()] == [
        "step-00000010.pt", "step-00000020.pt", "step-00000030.pt"]
    assert checkpoint_steps(exp) == [10, 20, 30]
    assert (exp / "checkpoints" / "best.pt").is_file()
    assert (exp / "config.yaml").is_file() and (exp / "curves.png").is_file()

    final = CheckpointManager.load(exp / "final.pt")
    assert final["averaged"] == ["step-00000020.pt", "step-00000030.pt"]
    assert "optimizer" not in final and final["step"] == 30
    a = CheckpointManager.load(exp / "checkpoints" / "step-00000020.pt")["model"]
    b = CheckpointManager.load(exp / "checkpoints" / "step-00000030.pt")["model"]
    assert set(final["model"]) == set(a)
    differs = 0
    for name, value in final["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (a[name] + b[name]) / 2)
            differs += not torch.equal(value, b[name])
        else:
            assert torch.equal(value, b[name])  # e.g. BatchNorm's num_batches_tracked
    assert differs > 0
    # Everything needed to rebuild the model travels with the checkpoint.
    assert {"config", "model_config", "feature_config", "feature_stats", "tokenizer"} <= set(final)


def test_a_crash_while_saving_leaves_no_partial_checkpoint(asr_corpus, tmp_path, monkeypatch):
    import audio.training

    real_save = torch.save

    def crash_at_step_10(obj, path, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 10:
            Path(path).write_bytes(b"half a checkpoint")
            raise OSError("disk full")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(audio.training.torch, "save", crash_at_step_10)
    exp = tmp_path / "exp"
    with pytest.raises(OSError, match="disk full"):
        main(train_args(asr_corpus, exp, "train.total_steps=20", "train.checkpoint_every=5"))
    assert [p.name for p in (exp / "checkpoints").iterdir()] == ["step-00000005.pt"]
    assert CheckpointManager.load(exp / "checkpoints" / "step-00000005.pt")["step"] == 5


def test_resume_after_a_kill_gives_the_uninterrupted_result(asr_corpus, tmp_path, caplog):
    overrides = ("train.total_steps=20", "train.checkpoint_every=5", "train.average_last=2")
    whole = tmp_path / "whole"
    assert main(train_args(asr_corpus, whole, *overrides)) == 0
    assert checkpoint_steps(whole) == [5, 10, 15, 20]

    # A run killed at step 12: its newest checkpoint is step 10, and there is no final.pt.
    killed = tmp_path / "killed"
    shutil.copytree(whole, killed)
    for name in ("step-00000015.pt", "step-00000020.pt"):
        (killed / "checkpoints" / name).unlink()
    (killed / "final.pt").unlink()
    (killed / "metrics.jsonl").unlink(missing_ok=True)
    with caplog.at_level(logging.INFO, logger="asr.train"):
        assert main(train_args(asr_corpus, killed, *overrides)) == 0
    assert "at step 10" in caplog.text
    assert checkpoint_steps(killed) == [5, 10, 15, 20]

    # Same data order, optimizer and schedule state: the same weights as the uninterrupted run.
    for name in ("checkpoints/step-00000020.pt", "final.pt"):
        got = CheckpointManager.load(killed / name)["model"]
        want = CheckpointManager.load(whole / name)["model"]
        for key in want:
            torch.testing.assert_close(got[key], want[key], atol=1e-6, rtol=1e-5, msg=f"{name} {key}")


def test_resume_with_more_steps_continues_and_a_finished_run_does_nothing(asr_corpus, tmp_path, caplog,
                                                                          monkeypatch):
    monkeypatch.setattr(TrainLogger, "plot", lambda self, names=None: None)  # ~1.5 s per plot
    exp = tmp_path / "exp"
    common = ("train.checkpoint_every=5", "train.eval_every=5")
    assert main(train_args(asr_corpus, exp, "train.total_steps=10", *common, dev=True)) == 0
    assert checkpoint_steps(exp) == [5, 10]
    with caplog.at_level(logging.INFO, logger="asr.train"):
        assert main(train_args(asr_corpus, exp, "train.total_steps=20", *common, dev=True)) == 0
    assert "resumed from" in caplog.text and "at step 10" in caplog.text
    assert checkpoint_steps(exp) == [5, 10, 15, 20]
    steps = metric_steps(exp, "dev/loss")
    assert steps == [5, 10, 15, 20]  # strictly increasing: the second run did not start again at 1
    assert CheckpointManager.load(exp / "final.pt")["step"] == 20

    # Rerunning the finished command trains no further step and logs nothing new.
    metrics_before = (exp / "metrics.jsonl").read_text()
    mtimes = {p: p.stat().st_mtime_ns for p in CheckpointManager(exp).steps()}
    final_before = CheckpointManager.load(exp / "final.pt")["model"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="asr.train"):
        assert main(train_args(asr_corpus, exp, "train.total_steps=20", *common, dev=True)) == 0
    assert "at step 20" in caplog.text
    assert (exp / "metrics.jsonl").read_text() == metrics_before
    assert {p: p.stat().st_mtime_ns for p in CheckpointManager(exp).steps()} == mtimes
    final_after = CheckpointManager.load(exp / "final.pt")["model"]
    assert all(torch.equal(final_after[k], v) for k, v in final_before.items())


def test_oversampled_engines_are_repeated_in_each_epoch(asr_corpus):
    from asr.tokenizer import load_tokenizer
    from asr.train import build_loader

    tokenizer = load_tokenizer(json.loads(Path(asr_corpus.tokenizer).read_text()))
    base = load_config(ASRConfig, TINY_CONFIG)
    plain, _ = build_loader(asr_corpus.manifest, base, tokenizer, rank=0, world=1, train=True)
    more = load_config(ASRConfig, TINY_CONFIG, ["train.oversample_engines=[espeak-ng]", "train.oversample_factor=3"])
    tripled, _ = build_loader(asr_corpus.manifest, more, tokenizer, rank=0, world=1, train=True)
    other = load_config(ASRConfig, TINY_CONFIG, ["train.oversample_engines=[flite]", "train.oversample_factor=3"])
    untouched, _ = build_loader(asr_corpus.manifest, other, tokenizer, rank=0, world=1, train=True)
    assert len(tripled.dataset) == 3 * len(plain.dataset) > 0
    assert len(untouched.dataset) == len(plain.dataset)


def test_training_can_keep_only_some_engines(asr_corpus):
    from asr.tokenizer import load_tokenizer
    from asr.train import build_loader

    tokenizer = load_tokenizer(json.loads(Path(asr_corpus.tokenizer).read_text()))
    plain, _ = build_loader(asr_corpus.manifest, load_config(ASRConfig, TINY_CONFIG), tokenizer, rank=0, world=1,
                            train=True)
    kept, _ = build_loader(asr_corpus.manifest, load_config(ASRConfig, TINY_CONFIG, ["train.engines=[espeak-ng]"]),
                           tokenizer, rank=0, world=1, train=True)
    assert len(kept.dataset) == len(plain.dataset) > 0
    with pytest.raises(ValueError, match=r"no training utterance of engines \['flite'\]"):
        build_loader(asr_corpus.manifest, load_config(ASRConfig, TINY_CONFIG, ["train.engines=[flite]"]), tokenizer,
                     rank=0, world=1, train=True)


def test_init_starts_from_trained_weights_and_resuming_wins(asr_corpus, tiny_exp, tmp_path, caplog):
    from asr.bundle import export_bundle

    trained = CheckpointManager.load(tiny_exp / "final.pt")["model"]
    # Batch-norm running statistics move in the one training step; everything else must not.
    trained = {k: v for k, v in trained.items() if "running_" not in k and "num_batches" not in k}
    frozen = (*TRAIN_OVERRIDES, "train.total_steps=1", "train.peak_lr=0.0", "train.checkpoint_every=1",
              "train.average_last=1")
    # A learning rate of 0 keeps the initial weights, so final.pt shows what training started from.
    exp = tmp_path / "from_checkpoint"
    assert main(train_args(asr_corpus, exp, *frozen) + ["--init", str(tiny_exp / "final.pt")]) == 0
    got = CheckpointManager.load(exp / "final.pt")
    assert all(torch.equal(got["model"][k], v) for k, v in trained.items())
    assert got["init"] == str(tiny_exp / "final.pt")
    assert list(got["feature_stats"]["mean"]) == pytest.approx(trained["feat_mean"].flatten().tolist())

    bundle = export_bundle(tiny_exp / "final.pt", tmp_path / "bundle")  # fp16 weights
    exp = tmp_path / "from_bundle"
    assert main(train_args(asr_corpus, exp, *frozen) + ["--init", str(bundle)]) == 0
    got = CheckpointManager.load(exp / "final.pt")["model"]
    for key, value in trained.items():
        want = value if "feat_" in key or not value.is_floating_point() else value.half().float()
        torch.testing.assert_close(got[key], want, atol=0, rtol=0, msg=key)

    # An exp folder with checkpoints resumes from them and ignores --init, and --stats: the statistics it
    # records are still its weights' (here the init's), not those of a --stats file that differs.
    from dataclasses import replace

    from audio.stats import FeatureStats

    stats = FeatureStats.load(asr_corpus.stats)
    shifted = tmp_path / "shifted_stats.json"
    replace(stats, mean=tuple(m + 1 for m in stats.mean)).save(shifted)
    args = train_args(asr_corpus, exp, *frozen, "train.total_steps=2") + ["--init", str(tiny_exp / "final.pt")]
    args[args.index("--stats") + 1] = str(shifted)
    before = CheckpointManager.load(exp / "final.pt")["model"]
    with caplog.at_level(logging.INFO, logger="asr.train"):
        assert main(args) == 0
    assert "resumed from" in caplog.text and "initialised" not in caplog.text
    after = CheckpointManager.load(exp / "final.pt")
    assert all(torch.equal(after["model"][k], before[k]) for k in trained)  # the resumed weights, not the init's
    assert list(after["feature_stats"]["mean"]) == pytest.approx(trained["feat_mean"].flatten().tolist())


def test_init_from_a_different_architecture_is_an_error_naming_the_file(asr_corpus, tiny_exp, tmp_path):
    with pytest.raises(ValueError, match=r"final\.pt does not fit this model.*lstm"):
        main(train_args(asr_corpus, tmp_path / "exp", *TRAIN_OVERRIDES, "model.lstm_hidden=12", "train.total_steps=1")
             + ["--init", str(tiny_exp / "final.pt")])
    with pytest.raises(FileNotFoundError, match="nowhere"):
        main(train_args(asr_corpus, tmp_path / "exp2", *TRAIN_OVERRIDES, "train.total_steps=1")
             + ["--init", str(tmp_path / "nowhere")])


def test_model_card_names_the_init_weights_as_the_checkpoint_stored_them(tmp_path, monkeypatch):
    """The trainer stores --init relative to the repository; the card prints it from any directory."""
    from asr.evaluate import main as evaluate_main

    cfg = {"model_type": "conv_bilstm", "train": {"average_last": 5},
           "model": {"conv_channels": [8], "conv_strides": [2], "lstm_layers": 1, "lstm_hidden": 8}}
    torch.save({"config": cfg, "model": {"w": torch.zeros(3)}, "step": 7, "train_seconds": 120.0,
                "init": "asr/pretrained/conv_bilstm_synth_en"}, tmp_path / "final.pt")
    split = {"greedy": {"cer": 0.1, "wer": 0.2}, "lm": {"cer": 0.05, "wer": 0.1}}
    (tmp_path / "scores.json").write_text(json.dumps({"splits": {"dev": split}, "decoder": {"beam": 5}}))
    voices = {"hours": 1.0, "utterances": 10, "voices": 2, "speakers": 2}
    (tmp_path / "stats.json").write_text(json.dumps({"asr": {"train": voices, "dev": voices, "test": voices}}))
    monkeypatch.chdir(Path(__file__).resolve().parents[1] / "recipes" / "synth_en")  # as make -C does
    assert evaluate_main(["card", "--scores", str(tmp_path / "scores.json"), "--checkpoint",
                          str(tmp_path / "final.pt"), "--data-stats", str(tmp_path / "stats.json"),
                          "--config", "configs/asr/x.yaml", "--command", "make it",
                          "--out", str(tmp_path / "card.md")]) == 0
    card = (tmp_path / "card.md").read_text()
    assert "Trained for 7 steps starting from the weights of `asr/pretrained/conv_bilstm_synth_en` in 2 minutes" in card
    assert "1.0 h of training speech (10 utterances, 2 voices of 2 speakers" in card

    # A stage trained on another manifest (train_plus.jsonl) is described by that manifest.
    from audio.manifest import Utterance, write_manifest

    write_manifest(tmp_path / "train_plus.jsonl", [
        Utterance(id=f"u{i}", audio=f"{i}.wav", text="a b", speaker=f"s{i % 3}", duration=360.0,
                  sample_rate=16000, engine="flite", voice=f"v{i % 4}") for i in range(12)])
    assert evaluate_main(["card", "--scores", str(tmp_path / "scores.json"), "--checkpoint",
                          str(tmp_path / "final.pt"), "--data-stats", str(tmp_path / "stats.json"),
                          "--config", "configs/asr/x.yaml", "--command", "make it", "--train-manifest",
                          str(tmp_path / "train_plus.jsonl"), "--out", str(tmp_path / "card.md")]) == 0
    card = (tmp_path / "card.md").read_text()
    assert ("`make data` (training manifest `train_plus.jsonl`): 1.2 h of training speech "
            "(12 utterances, 4 voices of 3 speakers") in card
