"""Model folders (``asr.bundle``) and the scoring tools that read them (``asr.evaluate``)."""

from __future__ import annotations

import gzip
import json
import shutil

import pytest
import torch
from safetensors import safe_open

from asr import bundle, evaluate
from asr.bundle import export_bundle, is_ctc_bundle, load_recognizer
from asr.decode import greedy_decode
from asr.tokenizer import CharTokenizer
from audio.io import load
from audio.training import CheckpointManager


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # The CLIs choose threads for the whole machine; the test process keeps one.
    monkeypatch.setattr(evaluate, "set_threads", lambda n=None: 1)


def run_both(loaded_a, loaded_b, wavs):
    waves = [load(w, 16000)[0] for w in wavs]
    lengths = torch.tensor([w.numel() for w in waves])
    batch = torch.nn.utils.rnn.pad_sequence(waves, batch_first=True)
    with torch.inference_mode():
        return loaded_a.recognizer(batch, lengths), loaded_b.recognizer(batch, lengths)


def test_bundle_folder_layout_and_fp16_safetensors(tiny_bundle, tiny_exp, asr_corpus):
    assert is_ctc_bundle(tiny_bundle)
    assert sorted(p.name for p in tiny_bundle.iterdir()) == [
        "config.json", "decoder.json", "lm.arpa.gz", "model.safetensors"]
    assert not list(tiny_bundle.glob("*.tmp"))
    config = json.loads((tiny_bundle / "config.json").read_text())
    state = CheckpointManager.load(tiny_exp / "final.pt")
    assert config["model_config"] == json.loads(json.dumps(state["model_config"]))
    assert config["feature_config"]["n_mels"] == 40
    assert config["tokenizer"] == CharTokenizer().to_dict()
    lm = tiny_bundle / "lm.arpa.gz"  # gzipped, with no timestamp: the same LM gives the same bytes
    assert gzip.decompress(lm.read_bytes()).decode() == asr_corpus.lm.read_text()
    assert lm.read_bytes()[4:8] == b"\0\0\0\0"
    with safe_open(str(tiny_bundle / "model.safetensors"), framework="pt") as f:
        dtypes = {k: f.get_tensor(k).dtype for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
    assert set(dtypes) == set(state["model"])
    for name, dtype in dtypes.items():
        if name.startswith("feat_"):
            assert dtype == torch.float32, name  # normalisation stats keep full precision
        elif state["model"][name].is_floating_point():
            assert dtype == torch.float16, name
        else:
            assert dtype == state["model"][name].dtype, name


def test_bundle_reloads_to_the_checkpoint_within_fp16_tolerance(tiny_bundle, tiny_exp, asr_corpus):
    from_folder = load_recognizer(tiny_bundle)
    from_checkpoint = load_recognizer(tiny_exp / "final.pt")
    assert from_folder.decoder["beam"] == 8 and from_folder.lm_path == tiny_bundle / "lm.arpa.gz"
    assert from_checkpoint.decoder == {} and from_checkpoint.lm_path is None
    assert not from_folder.recognizer.training
    assert torch.equal(from_folder.recognizer.feat_mean, from_checkpoint.recognizer.feat_mean)
    (a, a_lens), (b, b_lens) = run_both(from_folder, from_checkpoint, asr_corpus.wavs()[:6])
    assert torch.equal(a_lens, b_lens)
    diff = (a.exp() - b.exp()).abs()
    assert float(diff.max()) < 0.02  # fp16 weights: ~1e-3 relative error per weight
    assert float((a - b).abs().mean()) < 0.01
    texts_a = [h.text for h in greedy_decode(a, a_lens, from_folder.tokenizer)]
    texts_b = [h.text for h in greedy_decode(b, b_lens, from_checkpoint.tokenizer)]
    assert texts_a == texts_b
    assert any(texts_a)  # the trained model says something


def test_fp32_bundle_from_the_cli_is_exact(tiny_exp, asr_corpus, tmp_path):
    out = tmp_path / "fp32"
    card = tmp_path / "card.md"
    card.write_text("# tiny\n")
    assert bundle.main(["--checkpoint", str(tiny_exp / "final.pt"), "--out", str(out), "--fp32",
                        "--card", str(card)]) == 0
    assert (out / "README.md").read_text() == "# tiny\n"
    assert not (out / "lm.arpa.gz").exists() and not (out / "decoder.json").exists()
    loaded = load_recognizer(out)
    assert loaded.lm_path is None and loaded.decoder == {}
    (a, _), (b, _) = run_both(loaded, load_recognizer(tiny_exp / "final.pt"), asr_corpus.wavs()[:3])
    assert torch.equal(a, b)


def test_load_recognizer_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        load_recognizer(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither"):
        load_recognizer(tmp_path / "missing")
    (tmp_path / "config.json").write_text(json.dumps({"format": "something-else"}))
    assert not is_ctc_bundle(tmp_path)


def test_a_fresh_export_replaces_an_old_folder(tiny_exp, asr_corpus, tmp_path):
    out = tmp_path / "model"
    export_bundle(tiny_exp / "final.pt", out, lm=str(asr_corpus.lm))
    first = (out / "model.safetensors").read_bytes()
    assert load_recognizer(out).lm_path == out / "lm.arpa.gz"
    # Exported again without an LM: the old LM must not be picked up with the new weights.
    export_bundle(tiny_exp / "final.pt", out)
    assert (out / "model.safetensors").read_bytes() == first
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert load_recognizer(out).lm_path is None


def test_evaluate_tune_score_report(tiny_exp, asr_corpus, tmp_path):
    decoder = tmp_path / "decoder.json"
    assert evaluate.main(["tune", "--model", str(tiny_exp / "final.pt"), "--lm", str(asr_corpus.lm),
                          "--manifest", str(asr_corpus.manifest), "--out", str(decoder), "--beam", "8",
                          "--limit", "12", "--lm-weights", "0,1", "--word-scores", "0,1"]) == 0
    tuned = json.loads(decoder.read_text())
    assert tuned["utterances"] == 12 and tuned["beam"] == 8
    assert [(r["lm_weight"], r["word_score"]) for r in tuned["grid"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    best_wer = min(r["wer"] for r in tuned["grid"])
    assert next(r for r in tuned["grid"] if (r["lm_weight"], r["word_score"]) ==
                (tuned["lm_weight"], tuned["word_score"]))["wer"] == best_wer
    # The LM knows every sentence of this corpus: it must help the weak tiny model.
    no_lm = next(r["wer"] for r in tuned["grid"] if r["lm_weight"] == 0 and r["word_score"] == 0)
    assert best_wer < no_lm

    scores = tmp_path / "scores.json"
    assert evaluate.main(["score", "--model", str(tiny_exp / "final.pt"), "--lm", str(asr_corpus.lm),
                          "--decoder", str(decoder), "--split", f"all={asr_corpus.manifest}",
                          "--out", str(scores)]) == 0
    split = json.loads(scores.read_text())["splits"]["all"]
    assert split["utterances"] == 36
    assert split["hours"] == pytest.approx(sum(
        json.loads(line)["duration"] for line in asr_corpus.manifest.read_text().splitlines()) / 3600, abs=1e-3)
    assert 0 <= split["lm"]["wer"] < split["greedy"]["wer"] <= 1.5
    assert 0 < split["greedy"]["cer"] < 0.6
    assert split["acoustic_rtf"] > 0 and len(split["examples"]) == 5

    report = tmp_path / "RESULTS.md"
    assert evaluate.main(["report", "--scores", str(scores), "--out", str(report)]) == 0
    text = report.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| all |"))
    assert f"{100 * split['greedy']['cer']:.2f}%" in row and f"{100 * split['lm']['wer']:.2f}%" in row


def test_utterance_cmn_travels_with_checkpoint_and_bundle(tiny_exp, tmp_path):
    state = CheckpointManager.load(tiny_exp / "final.pt")
    assert load_recognizer(tiny_exp / "final.pt").recognizer.utterance_cmn is False  # the default
    state["config"]["utterance_cmn"] = True
    checkpoint = tmp_path / "cmn.pt"
    torch.save(state, checkpoint)
    assert load_recognizer(checkpoint).recognizer.utterance_cmn is True
    folder = export_bundle(checkpoint, tmp_path / "bundle")
    assert json.loads((folder / "config.json").read_text())["training_config"]["utterance_cmn"] is True
    assert load_recognizer(folder).recognizer.utterance_cmn is True


def test_a_gzipped_lm_decodes_as_the_plain_one_and_old_folders_still_load(tiny_bundle, tiny_exp, asr_corpus, tmp_path):
    """KenLM reads the folder's lm.arpa.gz as it is; a folder from before (plain lm.arpa) keeps working."""
    from asr.decode import DecoderConfig, LMBeamSearchDecoder, read_arpa_words

    assert read_arpa_words(tiny_bundle / "lm.arpa.gz") == read_arpa_words(asr_corpus.lm)
    old = tmp_path / "old"
    shutil.copytree(tiny_bundle, old)
    (old / "lm.arpa.gz").unlink()
    shutil.copyfile(asr_corpus.lm, old / "lm.arpa")
    loaded = load_recognizer(old)
    assert loaded.lm_path == old / "lm.arpa"
    waves = [load(w, 16000)[0] for w in asr_corpus.wavs()[:4]]
    lengths = torch.tensor([w.numel() for w in waves])
    with torch.inference_mode():
        log_probs, out_lengths = loaded.recognizer(torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), lengths)
    config = DecoderConfig(beam=8, lm_weight=1.0, word_score=0.0)
    texts = [[h.text for h in LMBeamSearchDecoder(loaded.tokenizer, lm_path=lm, config=config)(log_probs, out_lengths)]
             for lm in (old / "lm.arpa", tiny_bundle / "lm.arpa.gz")]
    assert texts[0] == texts[1] and any(texts[0])
