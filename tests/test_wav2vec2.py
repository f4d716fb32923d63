"""wav2vec 2.0 on tiny random configs in temporary folders, never the network: pretraining lowers its loss
and writes a folder fine-tuning loads; fine-tuning lowers the CTC loss, keeps the feature encoder frozen
as told, and its model folder round-trips; label decoding keeps repeated letters; ``glottis transcribe``
and ``asr.evaluate`` recognise a wav2vec 2.0 folder. Plus the 1-hour subset and the comparison table."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers is imported: nothing here may use the network

from transformers import Wav2Vec2ForCTC  # noqa: E402

from asr import evaluate  # noqa: E402
from asr.bundle import is_wav2vec2_folder, load_recognizer  # noqa: E402
from asr.compare import compare, report  # noqa: E402
from asr.decode import greedy_decode  # noqa: E402
from asr.subset import balanced_subset  # noqa: E402
from asr.tokenizer import CharTokenizer  # noqa: E402
from asr.transcribe import Transcriber  # noqa: E402
from asr.wav2vec2 import (  # noqa: E402
    FbankBranch,
    FbankFrontEnd,
    LogMelFrontEnd,
    LSTMHead,
    Wav2Vec2ExpConfig,
    Wav2Vec2Recognizer,
    build_processor,
    decode_labels,
    every_hidden_state,
    init_ctc_model,
    load_pretrained,
    normalize_waves,
    trailing_zero_lengths,
)
from asr.wav2vec2 import main as wav2vec2_main  # noqa: E402
from asr.wav2vec2_pretrain import build_pretraining_model, pretraining_loss  # noqa: E402
from asr.wav2vec2_pretrain import main as pretrain_main  # noqa: E402
from audio.atomic import write_json  # noqa: E402
from audio.cli import main as glottis  # noqa: E402
from audio.config import load_config  # noqa: E402
from audio.features import FeatureConfig  # noqa: E402
from audio.io import load  # noqa: E402
from audio.manifest import Utterance, read_manifest  # noqa: E402
from audio.stats import FeatureStats  # noqa: E402
from audio.training import CheckpointManager  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "asr" / "wav2vec2_tiny.yaml"
SR = 16000
FT_STEPS = 40


def metric(exp_dir: Path, name: str) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (exp_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["value"]) for r in rows if r["name"] == name]


def batch_of(manifest: Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    records = read_manifest(manifest)[:n]
    waves = [load(manifest.parent / r.audio, SR)[0] for r in records]
    return torch.nn.utils.rnn.pad_sequence(waves, batch_first=True), torch.tensor([w.numel() for w in waves])


def assert_same_as_checkpoint_and_alone(from_folder, from_checkpoint, manifest: Path, n: int) -> torch.Tensor:
    """A model folder and the checkpoint it came from give the same log-probs on a padded batch of ``n``
    utterances, and in that batch each utterance gets its lone result (attention mask, masked
    normalisation, a head packed by lengths). Returns the batch's lengths in samples."""
    waves, lengths = batch_of(manifest, n)
    with torch.inference_mode():
        a, a_lengths = from_folder.recognizer(waves, lengths)
        b, b_lengths = from_checkpoint.recognizer(waves, lengths)
        alone = [from_folder.recognizer(waves[i : i + 1, : lengths[i]], lengths[i : i + 1]) for i in range(n)]
    assert torch.equal(a_lengths, b_lengths)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    for i, (lp, frames) in enumerate(alone):
        assert int(frames) == int(a_lengths[i])
        torch.testing.assert_close(a[i, : int(frames)], lp[0], atol=1e-4, rtol=0)
    return lengths


@pytest.fixture(scope="module")
def pretrained(asr_corpus, tmp_path_factory) -> Path:
    """``asr.wav2vec2_pretrain`` for a few steps on the fixture corpus: its ``final/`` folder."""
    exp = tmp_path_factory.mktemp("w2v_pretrain")
    assert pretrain_main(["--config", str(TINY), "--exp-dir", str(exp), "--train", str(asr_corpus.manifest),
                          "--dev", str(asr_corpus.manifest), "--threads", "1", "--device", "cpu"]) == 0
    return exp / "final"


@pytest.fixture(scope="module")
def finetuned(asr_corpus, pretrained, tmp_path_factory) -> Path:
    """Fine-tuned from ``pretrained`` for FT_STEPS on the fixture corpus, feature encoder frozen for 20."""
    exp = tmp_path_factory.mktemp("w2v_finetune")
    args = ["finetune", "--config", str(TINY), "--exp-dir", str(exp), "--train", str(asr_corpus.manifest),
            "--dev", str(asr_corpus.manifest), "--tokenizer", str(asr_corpus.tokenizer), "--init", str(pretrained),
            "--threads", "1", "--device", "cpu"]
    for item in (f"finetune.total_steps={FT_STEPS}", "finetune.freeze_feature_encoder_steps=20",
                 "finetune.average_last=1"):
        args += ["--set", item]
    assert wav2vec2_main(args) == 0
    return exp


def test_label_decoding_keeps_repeated_letters():
    tokenizer = CharTokenizer()
    texts = ["hello little bookkeeper", "all ok"]
    rows = [tokenizer.encode(t) for t in texts]
    labels = torch.full((2, max(map(len, rows))), -100)
    for b, row in enumerate(rows):
        labels[b, : len(row)] = torch.tensor(row)
    assert decode_labels(labels, tokenizer) == texts
    # The HF processor built from our tokenizer spells the same ids; its default decode groups repeats.
    processor = build_processor(tokenizer, sample_rate=SR, attention_mask=True)
    assert len(processor.tokenizer) == tokenizer.vocab_size
    assert processor.tokenizer(texts[0]).input_ids == rows[0]
    assert processor.tokenizer.decode(rows[0], group_tokens=False) == texts[0]
    assert processor.tokenizer.decode(rows[0]) == "helo litle bokeper"


def test_pretraining_step_lowers_the_loss_on_a_repeated_batch(asr_corpus):
    cfg = load_config(Wav2Vec2ExpConfig, TINY)
    torch.manual_seed(0)
    model = build_pretraining_model(cfg).train()
    model.set_gumbel_temperature(1.0)
    waves, lengths = batch_of(asr_corpus.manifest, 4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(12):
        torch.manual_seed(1)  # the same Gumbel noise and dropout every step: only the weights change
        out = pretraining_loss(model, waves, lengths, cfg.pretrain, seed=0)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        losses.append(out["loss"].item())
        assert 1 <= float(out["perplexity"]) <= 2 * 8  # groups x codevectors per group
    assert out["masked"] > 0 and out["contrastive"] > 0
    assert losses[-1] < 0.8 * losses[0], losses


def test_pretraining_writes_a_folder_that_fine_tuning_loads(pretrained, asr_corpus):
    glottis_json = json.loads((pretrained / "glottis.json").read_text())
    assert glottis_json["step"] == 10 and glottis_json["train_seconds"] > 0
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in pretrained.iterdir()}
    exp = pretrained.parent
    assert [s for s, _ in metric(exp, "train/perplexity")] == [10]
    assert [s for s, _ in metric(exp, "dev/contrastive")] == [5, 10]
    cfg = load_config(Wav2Vec2ExpConfig, TINY)
    ctc = init_ctc_model(str(pretrained), cfg, CharTokenizer())
    state = CheckpointManager.load(exp / "checkpoints" / "step-00000010.pt")["model"]
    for name, value in ctc.wav2vec2.state_dict().items():
        assert torch.equal(value, state[f"wav2vec2.{name}"]), name
    assert ctc.lm_head.out_features == 29 and ctc.config.pad_token_id == 0
    assert ctc.config.mask_time_prob == cfg.masking.mask_time_prob  # our masking, not pretraining's
    with pytest.raises(FileNotFoundError, match="cache"):
        init_ctc_model("nobody/no-such-wav2vec2", cfg, CharTokenizer())


def test_fine_tuning_lowers_the_loss_and_freezes_the_feature_encoder(finetuned, pretrained):
    dev = metric(finetuned, "dev/loss")
    assert [s for s, _ in dev] == [10, 20, 30, 40]
    assert dev[-1][1] < 0.8 * dev[0][1], dev
    head, body = dict(metric(finetuned, "train/lr_head")), dict(metric(finetuned, "train/lr_body"))
    assert head[10] / body[10] == pytest.approx(0.005 / 0.002)  # wav2vec2_tiny.yaml: head_lr / body_lr
    start = CheckpointManager.load(pretrained.parent / "checkpoints" / "step-00000010.pt")["model"]
    at_20 = CheckpointManager.load(finetuned / "checkpoints" / "step-00000020.pt")["model"]
    at_40 = CheckpointManager.load(finetuned / "checkpoints" / "step-00000040.pt")["model"]
    conv = "wav2vec2.feature_extractor.conv_layers.1.conv.weight"
    assert torch.equal(at_20[conv], start[conv])  # frozen for the first 20 steps
    assert not torch.equal(at_40[conv], at_20[conv])  # and trained after
    layer = "wav2vec2.encoder.layers.0.feed_forward.output_dense.weight"
    assert not torch.equal(at_20[layer], start[layer])


def test_model_folder_round_trips(finetuned, asr_corpus):
    final = finetuned / "final"
    assert is_wav2vec2_folder(final) and not list(finetuned.rglob("*.tmp"))
    from_folder = load_recognizer(final)
    from_checkpoint = load_recognizer(finetuned / "checkpoints" / "step-00000040.pt")
    assert isinstance(from_folder.recognizer, Wav2Vec2Recognizer)
    assert from_folder.tokenizer.to_dict() == CharTokenizer().to_dict()
    assert from_folder.recognizer.frame_shift == pytest.approx(0.02)
    assert_same_as_checkpoint_and_alone(from_folder, from_checkpoint, asr_corpus.manifest, 5)
    assert json.loads((final / "glottis.json").read_text())["step"] == FT_STEPS


def test_transcribe_and_evaluate_detect_a_wav2vec2_folder(finetuned, asr_corpus, tmp_path, capsys, monkeypatch):
    final = finetuned / "final"
    wav = asr_corpus.wavs()[0]
    assert glottis(["transcribe", str(wav), "--model", str(final), "--no-lm", "--format", "jsonl",
                    "--threads", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip())
    loaded = load_recognizer(final)
    wave, _ = load(wav, SR)
    with torch.inference_mode():
        log_probs, n = loaded.recognizer(wave[None], torch.tensor([wave.numel()]))
    assert result["text"] == greedy_decode(log_probs, n, loaded.tokenizer)[0].text
    # Test-time adaptation is for the Conv1D+BiLSTM recogniser only: a clear refusal, not a silent no-op.
    assert glottis(["transcribe", str(wav), "--model", str(final), "--no-lm", "--adapt", "file"]) == 2
    assert "not a Conv1D+BiLSTM recogniser" in capsys.readouterr().err
    # Exported with the LM and decoder settings, the folder decodes with the LM by default.
    decoder = tmp_path / "decoder.json"
    write_json(decoder, {"beam": 8, "lm_weight": 0.5, "word_score": 0.0})
    model_dir = tmp_path / "model"
    assert wav2vec2_main(["export", "--model", str(final), "--out", str(model_dir), "--lm", str(asr_corpus.lm),
                          "--decoder", str(decoder)]) == 0
    with_lm = Transcriber(model_dir)
    assert with_lm.lm_decoder is not None and with_lm.decoder_config.beam == 8
    text = with_lm.transcribe(wav).text
    lexicon = set(asr_corpus.text.read_text().split())
    assert set(text.split()) <= lexicon
    monkeypatch.setattr(evaluate, "set_threads", lambda n=None: 1)
    scores = evaluate.score_split(loaded, str(asr_corpus.manifest), None)
    assert scores["utterances"] == len(read_manifest(asr_corpus.manifest)) and 0 < scores["greedy"]["cer"] <= 1.5


def _record(i: int, speaker: str, duration: float) -> Utterance:
    return Utterance(id=f"{speaker}-{i}", audio=f"{speaker}-{i}.wav", text="a", speaker=speaker,
                     duration=duration, sample_rate=SR)


def test_subset_is_balanced_over_speakers_and_deterministic():
    records = [_record(i, s, 2.0 + (i % 5)) for s in ("a", "b", "c") for i in range(100)]
    records += [_record(i, "d", 3.0) for i in range(5)]  # a speaker with little audio
    records += [_record(i, "e", 30.0) for i in range(50)]  # too long: never picked
    subset = balanced_subset(records, hours=0.25, seed=3, max_duration=16)
    assert subset == balanced_subset(records, hours=0.25, seed=3, max_duration=16)
    assert subset != balanced_subset(records, hours=0.25, seed=4, max_duration=16)
    total = sum(r.duration for r in subset)
    assert 900 <= total < 900 + 7
    counts = {s: sum(r.speaker == s for r in subset) for s in "abcde"}
    assert counts["d"] == 5 and counts["e"] == 0
    assert max(counts["a"], counts["b"], counts["c"]) - min(counts["a"], counts["b"], counts["c"]) <= 1
    assert subset == sorted(subset, key=records.index)  # manifest order


def test_compare_checks_the_reference_and_sums_stage_times(tmp_path):
    def system(name: str, cer: float, seconds: float) -> Path:
        folder = tmp_path / name
        write_json(folder / "final" / "glottis.json", {"train_seconds": seconds})
        split = {"greedy": {"cer": cer, "wer": 2 * cer}, "lm": {"cer": cer / 2, "wer": cer}}
        write_json(folder / "scores.json", {"splits": {"dev": split, "test": split}, "wall_seconds": 10.0})
        write_json(folder / "decoder.json", {"wall_seconds": 5.0})
        return folder

    stage = tmp_path / "pt.json"
    write_json(stage, {"train_seconds": 100.0})
    result = compare({"pre": system("pre", 0.1, 50), "scratch": system("scratch", 0.3, 60)}, {"pt": stage},
                     reference="pre")
    assert result["reference"] == {"system": "pre", "test_greedy_cer_lowest": True, "test_lm_cer_lowest": True}
    assert result["stage_seconds_total"] == 100 + 50 + 60 + 2 * (10 + 5)
    assert "| pre | test | 10.00% | 20.00% | 5.00% | 10.00% |" in report(result)
    worse = compare({"pre": system("pre2", 0.5, 50), "scratch": system("s2", 0.3, 60)}, {}, reference="pre")
    assert worse["reference"]["test_greedy_cer_lowest"] is False


def assert_makes_the_conv_encoders_frames(model: Wav2Vec2ForCTC, sample_counts: tuple[int, ...]) -> None:
    """``model``'s front end gives as many frames as HF's conv encoder would for each of ``sample_counts``,
    and zeros appended after a wave (a padded batch) leave its frames as they were."""
    front_end = model.wav2vec2.feature_extractor
    for samples in sample_counts:
        out = front_end(torch.randn(2, samples))
        expected = int(model._get_feat_extract_output_lengths(torch.tensor(samples)))
        assert out.shape == (2, model.config.conv_dim[-1], expected), samples
    wave = torch.randn(1, 8000)
    with torch.inference_mode():
        alone, padded = front_end(wave), front_end(torch.nn.functional.pad(wave, (0, 3000)))
    torch.testing.assert_close(padded[..., : alone.shape[-1]], alone, atol=1e-5, rtol=0)


# 20 ms frames of two 10 ms mels (the tiny config's stride), and 40 ms frames of four.
@pytest.mark.parametrize("overrides", [[], ["encoder.conv_stride=[5, 8, 16]", "encoder.conv_kernel=[10, 8, 16]",
                                             "encoder.mel_stack=4"]])
def test_log_mel_front_end_makes_the_conv_encoders_frames(overrides):
    cfg = load_config(Wav2Vec2ExpConfig, TINY, ["encoder.front_end=logmel", *overrides])
    model = init_ctc_model("random", cfg, CharTokenizer()).eval()
    front_end = model.wav2vec2.feature_extractor
    assert isinstance(front_end, LogMelFrontEnd)
    assert front_end.hop == 160 and front_end.stack == cfg.encoder.mel_stack
    assert not any(k.startswith("wav2vec2.feature_extractor.conv_layers") for k in model.state_dict())
    # Each frame sees only its own samples.
    assert_makes_the_conv_encoders_frames(model, (400, 559, 560, 719, 720, 16000, 16161))
    with pytest.raises(ValueError, match="front_end"):
        load_config(Wav2Vec2ExpConfig, TINY, ["encoder.front_end=mfcc"])
    with pytest.raises(ValueError, match="cannot stack 3"):
        init_ctc_model("random", load_config(Wav2Vec2ExpConfig, TINY, ["encoder.front_end=logmel",
                                                                       "encoder.mel_stack=3"]), CharTokenizer())


def test_log_mel_model_pretrains_fine_tunes_and_round_trips(asr_corpus, tmp_path):
    pt, ft = tmp_path / "pt", tmp_path / "ft"
    logmel = ["--set", "encoder.front_end=logmel", "--threads", "1", "--device", "cpu"]
    assert pretrain_main(["--config", str(TINY), "--exp-dir", str(pt), "--train", str(asr_corpus.manifest),
                          "--set", "pretrain.total_steps=5", *logmel]) == 0
    assert json.loads((pt / "final" / "config.json").read_text())["glottis_front_end"]["kind"] == "logmel"
    assert wav2vec2_main(["finetune", "--config", str(TINY), "--exp-dir", str(ft), "--train",
                          str(asr_corpus.manifest), "--tokenizer", str(asr_corpus.tokenizer), "--init",
                          str(pt / "final"), "--set", "finetune.total_steps=5", "--set",
                          "finetune.freeze_feature_encoder_steps=0", *logmel]) == 0
    # The pretrained front end (not a fresh one) is what fine-tuning started from.
    pretrained = CheckpointManager.load(pt / "checkpoints" / "step-00000005.pt")["model"]
    ctc = init_ctc_model(str(pt / "final"), load_config(Wav2Vec2ExpConfig, TINY), CharTokenizer())
    for name, value in ctc.wav2vec2.state_dict().items():
        assert torch.equal(value, pretrained[f"wav2vec2.{name}"]), name
    assert isinstance(ctc.wav2vec2.feature_extractor, LogMelFrontEnd)
    with pytest.raises(ValueError, match="lm_head"):  # a pretraining folder is no CTC model, unless told
        load_pretrained(Wav2Vec2ForCTC, pt / "final")
    from_folder, from_checkpoint = load_recognizer(ft / "final"), load_recognizer(ft / "checkpoints" / "step-00000005.pt")
    assert isinstance(from_folder.recognizer.model.wav2vec2.feature_extractor, LogMelFrontEnd)
    assert_same_as_checkpoint_and_alone(from_folder, from_checkpoint, asr_corpus.manifest, 3)


def test_lstm_head_fine_tunes_from_a_pretraining_folder_and_round_trips(asr_corpus, pretrained, tmp_path):
    ft = tmp_path / "ft"
    lstm = ["--set", "head.kind=lstm", "--set", "head.lstm_hidden=32", "--set", "head.lstm_layers=2",
            "--set", "finetune.head_lr=0.01", "--set", "finetune.eval_every=5"]
    assert wav2vec2_main(["finetune", "--config", str(TINY), "--exp-dir", str(ft), "--train",
                          str(asr_corpus.manifest), "--dev", str(asr_corpus.manifest), "--tokenizer",
                          str(asr_corpus.tokenizer), "--init", str(pretrained), "--set", "finetune.total_steps=40",
                          "--set", "finetune.average_last=1", *lstm, "--threads", "1", "--device", "cpu"]) == 0
    dev = metric(ft, "dev/loss")  # down from ~30 at random; then slowly off the blank plateau (~3.07 -> 2.84)
    assert dev[0][1] < 5.0 and dev[-1][1] < 0.97 * dev[0][1], dev
    # The body starts from the pretraining folder; the head is new, and it is the one that trained fastest.
    start = CheckpointManager.load(pretrained.parent / "checkpoints" / "step-00000010.pt")["model"]
    at_10 = CheckpointManager.load(ft / "checkpoints" / "step-00000010.pt")["model"]
    assert any(k.startswith("lm_head.lstm.") for k in at_10) and "lm_head.weight" not in at_10
    assert dict(metric(ft, "train/lr_head"))[10] / dict(metric(ft, "train/lr_body"))[10] == pytest.approx(5)
    layer = "wav2vec2.encoder.layers.0.feed_forward.output_dense.weight"
    assert at_10[layer].shape == start[layer].shape and not torch.equal(at_10[layer], start[layer])
    from_folder, from_checkpoint = load_recognizer(ft / "final"), load_recognizer(ft / "checkpoints" / "step-00000040.pt")
    assert isinstance(from_folder.recognizer.model.lm_head, LSTMHead)
    assert from_folder.recognizer.model.lm_head.lstm.num_layers == 2
    # The head packs the padding away: in a padded batch each utterance gets its lone result.
    lengths = assert_same_as_checkpoint_and_alone(from_folder, from_checkpoint, asr_corpus.manifest, 4)
    assert len(set(lengths.tolist())) > 1
    # A linear-head config fine-tuning this folder gets a linear head again, not the folder's LSTM.
    linear = init_ctc_model(str(ft / "final"), load_config(Wav2Vec2ExpConfig, TINY), CharTokenizer())
    assert isinstance(linear.lm_head, torch.nn.Linear)
    with pytest.raises(ValueError, match="head.kind"):
        load_config(Wav2Vec2ExpConfig, TINY, ["head.kind=transformer"])


def test_lstm_head_trains_on_the_padded_batch_and_packs_at_inference():
    """As the Conv1D+BiLSTM: training runs the BiLSTM over the padded batch (the CPU backward of a packed
    one is several times slower), so a short row's backward direction starts in its padding; inference
    packs, so each row gets its lone result."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    config = SimpleNamespace(glottis_head={"hidden": 8, "layers": 2, "dropout": 0.0}, hidden_size=6,
                             num_hidden_layers=2, vocab_size=5)
    head = LSTMHead(config)
    x, lengths = torch.randn(2, 9, 6), torch.tensor([9, 5])
    x[1, 5:] = 0.0
    lone = head.lstm_forward(x[1:, :5], lengths[1:])[0]
    for training, short_row_alone in ((True, False), (False, True)):
        head.train(training)
        out = head.lstm_forward(x, lengths)
        torch.testing.assert_close(out[0], head.lstm_forward(x[:1], lengths[:1])[0])  # a full row: no padding
        assert torch.allclose(out[1, :5], lone, atol=1e-6) == short_row_alone


def test_mixing_head_reads_every_hidden_state_and_round_trips(asr_corpus, tmp_path):
    cfg = load_config(Wav2Vec2ExpConfig, TINY, ["head.kind=lstm", "head.lstm_hidden=16", "head.mix_layers=true"])
    model = init_ctc_model("random", cfg, CharTokenizer()).eval()
    head = model.lm_head
    layers = model.config.num_hidden_layers + 1
    assert head.mix_layers and head.layer_weights.shape == (layers,)
    waves, lengths = batch_of(asr_corpus.manifest, 2)
    with torch.inference_mode():
        hidden = every_hidden_state(model.wav2vec2, waves, None)
        hf = model.wav2vec2(waves, output_hidden_states=True)  # [0]: after the positional convolution
        torch.testing.assert_close(hidden[1:], list(hf.hidden_states[1:]))
        torch.testing.assert_close(hidden[0], model.wav2vec2.feature_projection.projection(hf.extract_features))
        assert len(hidden) == layers
        even = head.mix(hidden)  # zeros: every layer-normed state weighs 1 / layers
        normed = [torch.nn.functional.layer_norm(h, h.shape[-1:]) for h in hidden]
        torch.testing.assert_close(even, sum(normed) / layers)
        head.layer_weights[0] = 50.0  # all the weight on the transformer's input
        torch.testing.assert_close(head.mix(hidden), normed[0], atol=1e-5, rtol=0)
        with pytest.raises(TypeError, match="every hidden state"):  # HF's forward passes the last one only
            model(waves)
        # Under LayerDrop HF leaves a skipped layer's state out; its input (what it passes on) stands in.
        model.train()
        model.config.layerdrop = 1.0
        dropped = every_hidden_state(model.wav2vec2, waves, None)
        assert len(dropped) == layers and all(torch.equal(h, dropped[0]) for h in dropped)
    with pytest.raises(ValueError, match="mix_layers"):
        load_config(Wav2Vec2ExpConfig, TINY, ["head.mix_layers=true"])
    # Fine-tuned, the weights train with the head, and the folder gives the checkpoint's outputs.
    ft = tmp_path / "ft"
    assert wav2vec2_main(["finetune", "--config", str(TINY), "--exp-dir", str(ft), "--train",
                          str(asr_corpus.manifest), "--dev", str(asr_corpus.manifest), "--tokenizer",
                          str(asr_corpus.tokenizer), "--init", "random", "--set", "finetune.total_steps=6",
                          "--set", "finetune.average_last=1", "--set", "head.kind=lstm", "--set",
                          "head.lstm_hidden=16", "--set", "head.mix_layers=true", "--threads", "1",
                          "--device", "cpu"]) == 0
    from_folder, from_checkpoint = load_recognizer(ft / "final"), load_recognizer(ft / "checkpoints" / "step-00000006.pt")
    trained = from_folder.recognizer.model.lm_head.layer_weights
    assert trained.abs().max() > 0 and torch.equal(trained, from_checkpoint.recognizer.model.lm_head.layer_weights)
    assert_same_as_checkpoint_and_alone(from_folder, from_checkpoint, asr_corpus.manifest, 3)


def test_fbank_head_reads_the_log_mels_beside_the_transformer_and_round_trips(asr_corpus, tmp_path):
    stats = tmp_path / "feature_stats.json"
    FeatureStats(mean=tuple(-6.0 + 0.01 * i for i in range(80)), std=tuple([2.5] * 80), count=1000).save(stats)
    ft = tmp_path / "ft"
    run = ["finetune", "--config", str(TINY), "--exp-dir", str(ft), "--train", str(asr_corpus.manifest),
           "--dev", str(asr_corpus.manifest), "--tokenizer", str(asr_corpus.tokenizer), "--init", "random",
           "--set", "finetune.total_steps=6", "--set", "finetune.average_last=1", "--set", "head.kind=lstm",
           "--set", "head.lstm_hidden=16", "--set", "head.fbank=true", "--set", "head.fbank_channels=24",
           "--threads", "1", "--device", "cpu"]
    with pytest.raises(ValueError, match="--feature-stats"):
        wav2vec2_main(run)
    assert wav2vec2_main([*run, "--feature-stats", str(stats)]) == 0
    from_folder, from_checkpoint = load_recognizer(ft / "final"), load_recognizer(ft / "checkpoints" / "step-00000006.pt")
    model = from_folder.recognizer.model
    branch = model.lm_head.fbank_branch
    assert isinstance(branch, FbankBranch) and model.lm_head.lstm.input_size == model.config.hidden_size + 24
    # The statistics travel with the weights.
    torch.testing.assert_close(branch.feat_mean, torch.tensor(FeatureStats.load(stats).mean, dtype=torch.float32))
    torch.testing.assert_close(branch.feat_std, torch.full((80,), 2.5))
    lengths = assert_same_as_checkpoint_and_alone(from_folder, from_checkpoint, asr_corpus.manifest, 3)
    # Both inputs count: silencing either the branch or the transformer changes the output.
    waves, _ = batch_of(asr_corpus.manifest, 3)
    with torch.inference_mode():
        full, _ = from_folder.recognizer(waves, lengths)
        frames = full.shape[1]
        out = branch(waves, lengths, frames)
        assert out.shape == (3, frames, 24)
        branch.forward = lambda w, n, f, seed=None: torch.zeros(len(w), f, 24)
        without_branch, _ = from_folder.recognizer(waves, lengths)
        del branch.forward
        model.lm_head.lstm.weight_ih_l0[:, : model.config.hidden_size] = 0.0
        without_transformer, _ = from_folder.recognizer(waves, lengths)
    assert (without_branch - full).abs().max() > 1e-3 and (without_transformer - full).abs().max() > 1e-3
    with pytest.raises(TypeError, match="log-mels"):  # HF's forward has no waveform lengths for the branch
        model(waves)
    with pytest.raises(ValueError, match="head.fbank"):
        load_config(Wav2Vec2ExpConfig, TINY, ["head.fbank=true"])


def test_fbank_branch_computes_the_features_its_statistics_were_taken_with():
    cfg = load_config(Wav2Vec2ExpConfig, TINY, ["head.kind=lstm", "head.lstm_hidden=16", "head.fbank=true",
                                                "head.fbank_channels=24"])
    features = FeatureConfig(n_fft=512, win_length=400, hop_length=160, n_mels=40, fmin=50.0, fmax=7600.0)
    stats = FeatureStats(mean=(-5.0,) * 40, std=(2.0,) * 40, count=10, feature_config=asdict(features))
    branch = init_ctc_model("random", cfg, CharTokenizer(), stats).lm_head.fbank_branch
    assert branch.feature_config == features and len(branch.feat_mean) == 40
    assert branch.convs[0].conv.in_channels == 40
    with pytest.raises(ValueError, match=r"n_fft 400 \(the fbank branch: 512\), fmin 0.0 \(the fbank branch: 50.0\)"):
        branch.set_stats(FeatureStats(mean=(0.0,) * 40, std=(1.0,) * 40, count=10,
                                      feature_config=asdict(FeatureConfig(n_mels=40))))
    with pytest.raises(ValueError, match="8000 Hz"):
        init_ctc_model("random", cfg, CharTokenizer(), FeatureStats(
            mean=(0.0,) * 80, std=(1.0,) * 80, count=10, feature_config=asdict(FeatureConfig(sample_rate=8000))))
    # Folders written before the spec carried the features name only conv_bilstm.yaml's framing.
    legacy = FbankBranch({"channels": 24, "n_mels": 80, "n_fft": 400, "hop_length": 160}, 0.0)
    assert legacy.feature_config == FeatureConfig(fmax=8000.0)


# The filterbank front end's 40 ms frames: two stride-2 convolutions over 10 ms mels, a 640-sample stride.
FBANK40 = ["encoder.front_end=fbank", "encoder.conv_stride=[5, 8, 16]", "encoder.conv_kernel=[10, 8, 16]"]


def fake_stats(path: Path) -> Path:
    """conv_bilstm.yaml's log-mels (the fbank front end's) with made-up statistics."""
    FeatureStats(mean=tuple(-6.0 + 0.01 * i for i in range(80)), std=tuple([2.5] * 80), count=1000,
                 feature_config=asdict(FeatureConfig(fmax=8000.0))).save(path)
    return path


def test_trailing_zero_lengths_recover_a_padded_batchs_lengths():
    waves = torch.zeros(3, 10)
    waves[0, :7], waves[1, :10], waves[2, :3] = 1.0, -1.0, 2.0
    waves[0, 2] = 0.0  # a zero inside a wave is not its end
    assert trailing_zero_lengths(waves).tolist() == [7, 10, 3]
    assert trailing_zero_lengths(torch.zeros(1, 5)).tolist() == [1]


def test_fbank_front_end_makes_the_conv_encoders_frames(tmp_path):
    stats = FeatureStats.load(fake_stats(tmp_path / "stats.json"))
    cfg = load_config(Wav2Vec2ExpConfig, TINY, FBANK40)
    with pytest.raises(ValueError, match="--feature-stats"):
        init_ctc_model("random", cfg, CharTokenizer())
    model = init_ctc_model("random", cfg, CharTokenizer(), stats).eval()
    front_end = model.wav2vec2.feature_extractor
    assert isinstance(front_end, FbankFrontEnd) and front_end.convs[0].conv.in_channels == 80
    torch.testing.assert_close(front_end.feat_mean, torch.tensor(stats.mean, dtype=torch.float32))
    assert "wav2vec2.feature_extractor.feat_std" in model.state_dict()  # the statistics travel with the weights
    assert_makes_the_conv_encoders_frames(model, (720, 1000, 1359, 1360, 16000, 16161))
    with pytest.raises(ValueError, match="total conv stride of 640, not 320"):
        init_ctc_model("random", load_config(Wav2Vec2ExpConfig, TINY, ["encoder.front_end=fbank"]),
                       CharTokenizer(), stats)
    with pytest.raises(ValueError, match=r"n_mels 40 \(the fbank front end: 80\)"):
        front_end.set_stats(FeatureStats(mean=(0.0,) * 80, std=(1.0,) * 80, count=1,
                                         feature_config=asdict(FeatureConfig(n_mels=40))))


def test_fbank_front_end_pretrains_with_its_statistics_and_fine_tunes(asr_corpus, tmp_path):
    stats = fake_stats(tmp_path / "stats.json")
    pt, ft = tmp_path / "pt", tmp_path / "ft"
    fbank = [x for o in FBANK40 for x in ("--set", o)] + ["--threads", "1", "--device", "cpu"]
    run = ["--config", str(TINY), "--exp-dir", str(pt), "--train", str(asr_corpus.manifest),
           "--set", "pretrain.total_steps=5", *fbank]
    with pytest.raises(ValueError, match="--feature-stats"):
        pretrain_main(run)
    assert pretrain_main([*run, "--feature-stats", str(stats)]) == 0
    assert json.loads((pt / "final" / "config.json").read_text())["glottis_front_end"]["kind"] == "fbank"
    # Fine-tuning starts from the pretrained front end, statistics and all, with no --feature-stats.
    assert wav2vec2_main(["finetune", "--config", str(TINY), "--exp-dir", str(ft), "--train",
                          str(asr_corpus.manifest), "--dev", str(asr_corpus.manifest), "--tokenizer",
                          str(asr_corpus.tokenizer), "--init", str(pt / "final"), "--set", "finetune.total_steps=6",
                          "--set", "finetune.average_last=1", "--set", "head.kind=lstm", "--set",
                          "head.lstm_hidden=16", "--set", "head.mix_layers=true", *fbank]) == 0
    pretrained = CheckpointManager.load(pt / "checkpoints" / "step-00000005.pt")["model"]
    ctc = init_ctc_model(str(pt / "final"), load_config(Wav2Vec2ExpConfig, TINY, FBANK40), CharTokenizer())
    for name, value in ctc.wav2vec2.state_dict().items():
        assert torch.equal(value, pretrained[f"wav2vec2.{name}"]), name
    torch.testing.assert_close(ctc.wav2vec2.feature_extractor.feat_std, torch.full((80,), 2.5))
    from_folder, from_checkpoint = load_recognizer(ft / "final"), load_recognizer(ft / "checkpoints" / "step-00000006.pt")
    assert isinstance(from_folder.recognizer.model.wav2vec2.feature_extractor, FbankFrontEnd)
    assert_same_as_checkpoint_and_alone(from_folder, from_checkpoint, asr_corpus.manifest, 3)


def test_fbank_branch_from_body_starts_as_the_pretrained_front_end_and_reads_its_input(asr_corpus, tmp_path):
    stats = fake_stats(tmp_path / "stats.json")
    pt, ft = tmp_path / "pt", tmp_path / "ft"
    fbank = [x for o in FBANK40 for x in ("--set", o)] + ["--threads", "1", "--device", "cpu"]
    assert pretrain_main(["--config", str(TINY), "--exp-dir", str(pt), "--train", str(asr_corpus.manifest),
                          "--set", "pretrain.total_steps=3", "--feature-stats", str(stats), *fbank]) == 0
    head = ["head.kind=lstm", "head.lstm_hidden=16", "head.fbank=true", "head.fbank_channels=16",
            "head.fbank_from_body=true"]
    cfg = load_config(Wav2Vec2ExpConfig, TINY, [*FBANK40, *head])
    model = init_ctc_model(str(pt / "final"), cfg, CharTokenizer(), FeatureStats.load(stats)).eval()
    body, branch = model.wav2vec2.feature_extractor, model.lm_head.fbank_branch
    assert branch.normalized_input and not body.convs[0].conv.weight.equal(
        init_ctc_model("random", cfg, CharTokenizer(), FeatureStats.load(stats)).wav2vec2.feature_extractor.convs[0].conv.weight)
    for name, value in body.state_dict().items():  # the pretrained weights, batch-norm and feature statistics
        assert torch.equal(value, branch.state_dict()[name]), name
    # At the start the branch's frames are the body's own front end's, on the same normalised waveform.
    waves, lengths = batch_of(asr_corpus.manifest, 2)
    x, _ = normalize_waves(waves, lengths)
    with torch.inference_mode():
        torch.testing.assert_close(branch(x, lengths, 7), body(x).transpose(1, 2)[:, :7])
    assert wav2vec2_main(["finetune", "--config", str(TINY), "--exp-dir", str(ft), "--train", str(asr_corpus.manifest),
                          "--dev", str(asr_corpus.manifest), "--tokenizer", str(asr_corpus.tokenizer), "--init",
                          str(pt / "final"), "--feature-stats", str(stats), "--set", "finetune.total_steps=4",
                          "--set", "finetune.average_last=1", *[x for o in head for x in ("--set", o)], *fbank]) == 0
    from_folder, from_checkpoint = load_recognizer(ft / "final"), load_recognizer(ft / "checkpoints" / "step-00000004.pt")
    assert from_folder.recognizer.model.lm_head.fbank_branch.normalized_input
    assert_same_as_checkpoint_and_alone(from_folder, from_checkpoint, asr_corpus.manifest, 3)
    with pytest.raises(ValueError, match="encoder.front_end 'fbank', not 'conv'"):
        init_ctc_model("random", load_config(Wav2Vec2ExpConfig, TINY, head), CharTokenizer(), FeatureStats.load(stats))
    with pytest.raises(ValueError, match=r"fbank_channels \(24\) must be the front end's width"):
        init_ctc_model("random", load_config(Wav2Vec2ExpConfig, TINY, [*FBANK40, *head, "head.fbank_channels=24"]),
                       CharTokenizer(), FeatureStats.load(stats))
    with pytest.raises(ValueError, match="head.fbank_from_body needs head.fbank"):
        load_config(Wav2Vec2ExpConfig, TINY, ["head.kind=lstm", "head.fbank_from_body=true"])
    other = FeatureStats.load(stats)
    other = replace(other, feature_config={**other.feature_config, "fmax": 7000.0})
    with pytest.raises(ValueError, match=r"other features than the body's front end computes: "
                                         r"fmax 7000.0 \(the body's front end: 8000.0\)$"):
        init_ctc_model(str(pt / "final"), cfg, CharTokenizer(), other)
