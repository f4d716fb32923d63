"""Model soups (``asr.soup``): the mean of sibling recognisers' weights, as a checkpoint the tools read."""

from __future__ import annotations

import pytest
import torch

from asr import evaluate, soup
from asr.bundle import load_recognizer
from audio.io import load
from audio.training import CheckpointManager, read_weights


def _sibling(tiny_exp, path, *, scale: float = 0.01, seed: int = 0, edit=None):
    """``tiny_exp``'s final.pt with every trained weight moved a little (a stand-in for a sibling run)."""
    state = CheckpointManager.load(tiny_exp / "final.pt")
    gen = torch.Generator().manual_seed(seed)
    state["model"] = {k: v + scale * torch.randn(v.shape, generator=gen) if v.is_floating_point()
                      and not k.startswith("feat_") else v for k, v in state["model"].items()}
    if edit:
        edit(state)
    torch.save(state, path)
    return path


def test_soup_is_the_mean_of_its_members_and_loads(tiny_exp, asr_corpus, tmp_path):
    a = tiny_exp / "final.pt"
    b = _sibling(tiny_exp, tmp_path / "b.pt", seed=1)
    c = _sibling(tiny_exp, tmp_path / "c.pt", seed=2)
    out = soup.make_soup([a, b, c], tmp_path / "soup" / "final.pt")
    assert sorted(p.name for p in out.parent.iterdir()) == ["final.pt"]  # nothing half-written left
    states = [CheckpointManager.load(p) for p in (a, b, c)]
    mixed = CheckpointManager.load(out)
    for name, value in mixed["model"].items():
        expected = sum(s["model"][name].double() for s in states) / 3
        assert torch.allclose(value.double(), expected, atol=1e-6), name
    assert torch.equal(mixed["model"]["feat_mean"], states[0]["model"]["feat_mean"])
    assert len(mixed["soup"]) == 3 and mixed["model_config"] == states[0]["model_config"]
    assert "optimizer" not in mixed

    # The soup is a recogniser like any checkpoint; a soup of one model twice is that model.
    twice = soup.make_soup([a, a], tmp_path / "twice.pt")
    wave = load(asr_corpus.wavs()[0], 16000)[0][None]
    lengths = torch.tensor([wave.shape[1]])
    with torch.inference_mode():
        ref, _ = load_recognizer(a).recognizer(wave, lengths)
        same, _ = load_recognizer(twice).recognizer(wave, lengths)
        mixed_out, _ = load_recognizer(out).recognizer(wave, lengths)
    assert torch.allclose(ref, same, atol=1e-5)
    assert mixed_out.shape == ref.shape and not torch.allclose(ref, mixed_out, atol=1e-5)


def test_soup_refuses_members_that_do_not_match(tiny_exp, tmp_path, capsys):
    a = tiny_exp / "final.pt"

    def other_stats(state):
        state["model"]["feat_mean"] = state["model"]["feat_mean"] + 1

    def wider(state):
        state["model_config"] = {**state["model_config"], "lstm_hidden": 2 * state["model_config"]["lstm_hidden"]}

    def other_dropout(state):
        state["model_config"] = {**state["model_config"], "dropout": 0.5}

    with pytest.raises(ValueError, match=r"stats\.pt: its feature statistics \(feat_mean\)"):
        soup.make_soup([a, _sibling(tiny_exp, tmp_path / "stats.pt", edit=other_stats)], tmp_path / "x.pt")
    def centred(state):
        state["config"] = {**state["config"], "utterance_cmn": True}

    with pytest.raises(ValueError, match=r"cmn\.pt: utterance_cmn"):
        soup.make_soup([a, _sibling(tiny_exp, tmp_path / "cmn.pt", edit=centred)], tmp_path / "x.pt")
    with pytest.raises(ValueError, match=r"wide\.pt: model_config"):
        soup.make_soup([a, _sibling(tiny_exp, tmp_path / "wide.pt", edit=wider)], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="at least two"):
        soup.make_soup([a], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()
    # dropout is a training setting, not the architecture
    soup.make_soup([a, _sibling(tiny_exp, tmp_path / "drop.pt", edit=other_dropout)], tmp_path / "ok.pt")

    assert soup.main(["--out", str(tmp_path / "y.pt"), str(a), str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt" in capsys.readouterr().err
    assert soup.main(["--out", str(tmp_path / "y.pt"), str(a), str(tmp_path / "stats.pt")]) == 2
    assert "feature statistics" in capsys.readouterr().err and not (tmp_path / "y.pt").exists()


def test_model_card_says_a_soup_is_a_soup(tiny_exp, tmp_path):
    a = tiny_exp / "final.pt"
    out = soup.make_soup([a, _sibling(tiny_exp, tmp_path / "b.pt")], tmp_path / "soup.pt")
    text = evaluate._provenance(CheckpointManager.load(out), None)
    assert "mean of 2 recognisers" in text and "b.pt" in text
    single = evaluate._provenance(CheckpointManager.load(a), 600.0)
    assert single.startswith("Trained for") and "10 minutes" in single and "soup" not in single


def test_weighted_soup_moves_a_run_back_towards_the_bundle_it_started_from(tiny_exp, tiny_bundle, tmp_path,
                                                                          capsys):
    run = _sibling(tiny_exp, tmp_path / "run.pt", scale=0.05, seed=3)  # a run fine-tuned from the bundle
    out = soup.make_soup([run, tiny_bundle], tmp_path / "quarter.pt", weights=[3, 1])
    mixed, ran = CheckpointManager.load(out), CheckpointManager.load(run)
    _, stored = read_weights(tiny_bundle, label="test")  # fp16, as bundles store weights
    for name, value in mixed["model"].items():
        expected = 0.75 * ran["model"][name].double() + 0.25 * stored[name].double()
        assert value.dtype == ran["model"][name].dtype and torch.allclose(value.double(), expected, atol=1e-6)
    assert mixed["soup_weights"] == [0.75, 0.25] and mixed["model_config"] == ran["model_config"]
    load_recognizer(out)  # a checkpoint the tools read

    with pytest.raises(ValueError, match="first member must be a checkpoint"):
        soup.make_soup([tiny_bundle, run], tmp_path / "x.pt")
    with pytest.raises(ValueError, match="--weights"):
        soup.make_soup([run, tiny_bundle], tmp_path / "x.pt", weights=[1.0])
    assert soup.main(["--out", str(tmp_path / "x.pt"), str(run), str(tiny_bundle), "--weights", "1", "-1"]) == 2
    assert "--weights" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()
