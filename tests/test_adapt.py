"""Unsupervised test-time adaptation (``asr.adapt``), through ``Transcriber.adapt``, ``glottis transcribe
--adapt`` and ``asr.evaluate score --adapt``, on the tiny model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from asr import evaluate
from asr.adapt import AdaptConfig, adapt_recognizer, posterior_entropy
from asr.bundle import load_recognizer
from asr.transcribe import Transcriber
from audio.cli import main as glottis
from audio.io import load

FAST = AdaptConfig(epochs=3, lr=0.01, batch_size=4)


@pytest.fixture(scope="module")
def waves(asr_corpus) -> list[torch.Tensor]:
    return [load(p, 16000)[0] for p in asr_corpus.wavs() if p.name.startswith("gbm")]


def mean_entropy(recognizer, waves: list[torch.Tensor]) -> float:
    with torch.no_grad():
        out = [recognizer(w[None], torch.tensor([w.numel()])) for w in waves]
    return sum(float(posterior_entropy(lp[0, : int(n[0])])) for lp, n in out) / len(out)


def test_posterior_entropy():
    uniform = torch.full((5, 4), -torch.log(torch.tensor(4.0)))
    assert float(posterior_entropy(uniform)) == pytest.approx(float(torch.log(torch.tensor(4.0))))
    certain = torch.log(torch.tensor([[1.0, 1e-12, 1e-12]]))
    assert float(posterior_entropy(certain)) < 1e-6
    # Only the frames whose best token is not blank (id 0), if asked; none of them: 0.
    mixed = torch.log(torch.tensor([[0.9, 0.05, 0.05], [0.2, 0.4, 0.4]]))
    assert float(posterior_entropy(mixed, blank_id=0)) == pytest.approx(float(posterior_entropy(mixed[1:])))
    assert float(posterior_entropy(mixed[:1], blank_id=0)) == 0.0
    # A higher temperature flattens the posteriors.
    lp = torch.log_softmax(torch.randn(7, 5, generator=torch.Generator().manual_seed(0)), -1)
    assert float(posterior_entropy(lp, 2.0)) > float(posterior_entropy(lp))


def test_adaptation_sharpens_the_posteriors_and_moves_only_the_front(tiny_bundle, waves):
    model = load_recognizer(tiny_bundle)
    original = {k: v.clone() for k, v in model.recognizer.state_dict().items()}
    # One piece per batch: the training path then equals the transcribing one, and the entropy the
    # report gives after adapting must be that of the adapted recogniser, statistics folded in.
    cfg = AdaptConfig(epochs=3, lr=0.01, batch_size=1, max_change=math.inf)  # the tiny model changes a lot
    adapted, report = adapt_recognizer(model.recognizer, waves, cfg)
    assert report["entropy_after"] < report["entropy_before"]
    assert report["pieces"] == len(waves) and report["seconds"] == pytest.approx(
        sum(w.numel() for w in waves) / 16000, abs=0.01)
    assert mean_entropy(adapted, waves) == pytest.approx(report["entropy_after"], abs=1e-4)
    assert mean_entropy(model.recognizer, waves) == pytest.approx(report["entropy_before"], abs=1e-4)
    assert not adapted.training and not any(p.requires_grad for p in adapted.parameters())
    # The given recogniser is untouched; the copy differs only in its feature statistics and first block.
    assert all(torch.equal(v, original[k]) for k, v in model.recognizer.state_dict().items())
    changed = {k for k, v in adapted.state_dict().items() if not torch.equal(v, original[k])}
    assert {"feat_mean", "feat_std", "model.convs.0.conv.weight"} <= changed
    assert all(k in ("feat_mean", "feat_std") or k.startswith("model.convs.0.") for k in changed), changed
    assert bool((adapted.feat_std > 0).all())


def test_adaptation_is_deterministic_with_dropout_in_the_network(waves):
    """Dropout, the LSTM's between layers included, stays off: the result does not depend on the global
    RNG, and the entropy reported is the transcribing network's."""
    from asr.model import ConvBiLSTM, ConvBiLSTMConfig
    from asr.recognizer import Recognizer
    from audio.features import FeatureConfig

    torch.manual_seed(0)
    cfg = ConvBiLSTMConfig(n_mels=40, conv_channels=(16,), conv_kernels=(3,), conv_strides=(2,), lstm_hidden=8,
                           lstm_layers=2, dropout=0.5)
    recognizer = Recognizer(ConvBiLSTM(cfg), FeatureConfig(n_mels=40)).eval()
    results = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        cfg = AdaptConfig(epochs=2, lr=0.01, batch_size=1, max_change=math.inf)
        results.append(adapt_recognizer(recognizer, waves[:3], cfg))
    (first, report), (second, _) = results
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert mean_entropy(first, waves[:3]) == pytest.approx(report["entropy_after"], abs=1e-4)
    assert first.model.lstm.dropout == 0.5  # restored


def test_a_collapse_is_reverted(tiny_bundle, waves, caplog):
    model = load_recognizer(tiny_bundle)
    adapted, report = adapt_recognizer(model.recognizer, waves, AdaptConfig(epochs=1, max_change=-1.0))
    assert report["reverted"] and "adaptation reverted" in caplog.text
    assert all(torch.equal(v, model.recognizer.state_dict()[k]) for k, v in adapted.state_dict().items())
    _, kept = adapt_recognizer(model.recognizer, waves, AdaptConfig(epochs=1))
    assert not kept["reverted"] and 0 <= kept["token_change"] <= 0.5 and kept["tokens_before"] > 0


def test_adaptation_pieces_long_audio_and_caps_it(tiny_bundle, waves):
    model = load_recognizer(tiny_bundle)
    long = torch.cat(waves * 4)  # one long "recording"
    cfg = AdaptConfig(epochs=1, piece_seconds=2.0, max_seconds=6.0)
    _, report = adapt_recognizer(model.recognizer, [long], cfg)
    assert report["pieces"] == 3 and report["seconds"] == pytest.approx(6.0, abs=0.01)
    with pytest.raises(ValueError, match="0.1 s"):
        adapt_recognizer(model.recognizer, [torch.zeros(100)], cfg)
    with pytest.raises(ValueError, match="Conv1D\\+BiLSTM"):
        adapt_recognizer(torch.nn.Linear(2, 2), waves, cfg)


def test_transcriber_adapt_and_reset(tiny_bundle, asr_corpus, tmp_path):
    t = Transcriber(tiny_bundle, use_lm=False)
    base = t.model.recognizer
    files = [p for p in asr_corpus.wavs() if p.name.startswith("usf")]
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio")
    report = t.adapt([*files, bad], FAST)  # the unreadable file is skipped
    assert report["pieces"] == len(files) and t.model.recognizer is not base
    assert t.transcribe(files[0]).text  # decodes with the adapted recogniser
    t.reset_adaptation()
    assert t.model.recognizer is base
    with pytest.raises(ValueError, match="no readable audio"):
        t.adapt([bad], FAST)
    assert t.model.recognizer is base


@pytest.mark.parametrize("mode", ["all", "file"])
def test_cli_adapt_keeps_going_past_bad_files(tiny_bundle, asr_corpus, tmp_path, capsys, monkeypatch, mode):
    monkeypatch.setattr("asr.transcribe.AdaptConfig", lambda: FAST)
    folder = tmp_path / "in"
    folder.mkdir()
    for src in asr_corpus.wavs()[:3]:
        (folder / src.name).write_bytes(src.read_bytes())
    (folder / "zz_broken.wav").write_bytes(b"RIFF garbage")
    capsys.readouterr()
    code = glottis(["transcribe", str(folder), "--model", str(tiny_bundle), "--no-lm", "--format", "jsonl",
                    "--threads", "1", "--adapt", mode])
    out = capsys.readouterr()
    lines = [json.loads(line) for line in out.out.splitlines()]
    assert code == 1 and len(lines) == 4
    assert [("error" in o) for o in lines] == [False, False, False, True]
    assert all(o["text"] for o in lines[:3]) and "1 of 4 file(s) failed" in out.err


def test_evaluate_tune_and_score_adapt_per_voice(tiny_exp, asr_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(evaluate, "set_threads", lambda n=None: 1)
    model, decoder, out = str(tiny_exp / "final.pt"), tmp_path / "decoder.json", tmp_path / "scores.json"
    assert evaluate.main(["tune", "--model", model, "--lm", str(asr_corpus.lm), "--manifest", str(asr_corpus.manifest),
                          "--out", str(decoder), "--beam", "4", "--lm-weights", "0.5,1", "--word-scores", "0",
                          "--adapt", "--adapt-epochs", "2"]) == 0
    tuned = json.loads(decoder.read_text())
    assert tuned["adapted"]["epochs"] == 2 and tuned["utterances"] == 36 and len(tuned["grid"]) == 2
    assert evaluate.main(["score", "--model", model, "--split", f"all={asr_corpus.manifest}",
                          "--out", str(out), "--adapt", "--adapt-epochs", "2"]) == 0
    scores = json.loads(out.read_text())
    assert scores["adapted"]["epochs"] == 2
    split = scores["splits"]["all"]
    assert set(split["adaptation"]) == set(split["per_voice"]) and len(split["per_voice"]) == 3
    assert all(r["entropy_after"] < r["entropy_before"] for r in split["adaptation"].values())
    assert split["utterances"] == 36 and 0 <= split["greedy"]["cer"] < 1
    report = tmp_path / "RESULTS.md"
    assert evaluate.main(["report", "--scores", str(out), "--out", str(report)]) == 0
    assert "Adapted to each voice before decoding" in report.read_text()
