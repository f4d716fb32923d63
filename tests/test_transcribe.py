"""``Transcriber`` and ``glottis transcribe`` on the tiny model folder: outputs, word times, bad files,
any input format, long-audio windowing, plus ``asr.demo`` and the lazy ``asr`` package."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch

import asr.transcribe as transcribe
from asr import demo
from asr.decode import greedy_decode
from asr.metrics import cer, wer
from asr.transcribe import Transcriber, Word, find_audio_files, srt_time, to_srt
from audio.cli import main as glottis
from audio.io import load, resample, save
from audio.manifest import read_manifest

SR = 16000


@pytest.fixture(scope="module")
def greedy(tiny_bundle) -> Transcriber:
    return Transcriber(tiny_bundle, use_lm=False)


def check_words(words: list[dict], duration: float, text: str) -> None:
    assert [w["word"] for w in words] == text.split()
    previous_end = 0.0
    for w in words:
        assert 0 <= w["start"] <= w["end"] <= duration + 1e-6, w
        assert w["start"] >= previous_end - 1e-6, words  # in order, not overlapping
        previous_end = w["end"]


def test_transcriber_on_fixture_wavs(greedy, asr_corpus):
    records = read_manifest(asr_corpus.manifest)[:6]
    hyps = []
    for r in records:
        result = greedy.transcribe(asr_corpus.root / r.audio)
        assert result.duration == pytest.approx(r.duration, abs=1e-3)
        check_words([w.__dict__ for w in result.words], result.duration, result.text)
        hyps.append(result.text)
    assert cer([r.text for r in records], hyps) < 0.5  # the tiny model has learnt its training set
    # A tensor gives the file's result; one at another rate is resampled to the model's first.
    wave, _ = load(asr_corpus.root / records[0].audio)
    assert greedy.transcribe(wave, sample_rate=SR).text == hyps[0]
    at_8k = greedy.transcribe(resample(wave, SR, 8000), sample_rate=8000)
    assert at_8k.duration == pytest.approx(wave.numel() / SR, abs=1e-3) and at_8k.text
    with pytest.raises(ValueError, match="sample_rate"):
        greedy.transcribe(wave)
    with pytest.raises(ValueError, match="empty"):
        greedy.transcribe(torch.zeros(0), sample_rate=SR)


def test_lm_is_used_by_default_and_corrects_the_tiny_model(tiny_bundle, greedy, asr_corpus):
    with_lm = Transcriber(tiny_bundle)
    assert with_lm.lm_decoder is not None and with_lm.decoder_config.beam == 8
    assert greedy.lm_decoder is None
    records = read_manifest(asr_corpus.manifest)
    refs = [r.text for r in records]
    plain = [greedy.transcribe(asr_corpus.root / r.audio).text for r in records]
    lm = [with_lm.transcribe(asr_corpus.root / r.audio).text for r in records]
    assert wer(refs, lm) < wer(refs, plain)
    lexicon = set(" ".join(refs).split())
    assert set(" ".join(lm).split()) <= lexicon  # lexicon decoding: only LM words


def test_cli_jsonl_walks_folders_and_reports_bad_files(tiny_bundle, asr_corpus, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub" / "deeper").mkdir(parents=True)
    wavs = asr_corpus.wavs()
    good = [folder / "a.wav", folder / "sub" / "b.wav", folder / "sub" / "deeper" / "c.wav"]
    for src, dst in zip(wavs, good, strict=False):
        dst.write_bytes(src.read_bytes())
    (folder / "sub" / "broken.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt garbage garbage garbage")
    (folder / "empty.wav").write_bytes(b"")
    save(folder / "sub" / "silent_header.wav", torch.zeros(0), SR)  # a valid wav with no samples
    (folder / "notes.txt").write_text("not audio, not picked up")
    capsys.readouterr()
    code = glottis(["transcribe", str(folder), "--model", str(tiny_bundle), "--no-lm", "--format", "jsonl",
                    "--threads", "1"])
    captured = capsys.readouterr()
    assert code == 1
    lines = [json.loads(line) for line in captured.out.splitlines()]
    expected_order = [str(p) for p in find_audio_files([str(folder)])]
    assert [o["path"] for o in lines] == expected_order
    assert len(lines) == 6
    errors = {o["path"]: o["error"] for o in lines if "error" in o}
    assert set(errors) == {str(folder / "empty.wav"), str(folder / "sub" / "broken.wav"),
                           str(folder / "sub" / "silent_header.wav")}
    assert "empty" in errors[str(folder / "empty.wav")]
    assert all(set(o) == {"path", "error"} for o in lines if "error" in o)
    results = [o for o in lines if "error" not in o]
    assert [o["path"] for o in results] == sorted(map(str, good))
    for o in results:
        assert set(o) == {"path", "text", "words", "duration"}
        assert o["duration"] == pytest.approx(load(o["path"])[0].numel() / SR, abs=1e-3)
        check_words(o["words"], o["duration"], o["text"])
    assert "3 of 6 file(s) failed" in captured.err


def test_cli_text_and_srt(tiny_bundle, asr_corpus, capsys):
    wav = str(asr_corpus.wavs()[0])
    assert glottis(["transcribe", wav, "--model", str(tiny_bundle), "--threads", "1"]) == 0
    text = capsys.readouterr().out.strip()
    assert text == Transcriber(tiny_bundle).transcribe(wav).text and text

    assert glottis(["transcribe", wav, "--model", str(tiny_bundle), "--lm", "--format", "srt",
                    "--threads", "1"]) == 0
    srt = capsys.readouterr().out
    cues = [c for c in srt.strip().split("\n\n") if c]
    assert cues
    stamp = r"(\d\d):(\d\d):(\d\d),(\d\d\d)"
    previous_end = 0.0
    words = []
    for n, cue in enumerate(cues, 1):
        index, timing, *body = cue.split("\n")
        assert index == str(n)
        m = re.fullmatch(f"{stamp} --> {stamp}", timing)
        assert m, timing
        g = [int(x) for x in m.groups()]
        start = g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000
        end = g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000
        assert previous_end <= start <= end
        previous_end = end
        words += " ".join(body).split()
    assert " ".join(words) == text  # the same LM decoding as the text output


def test_cli_no_lm_and_lm_paths(tiny_bundle, tiny_exp, asr_corpus, capsys):
    wav = str(asr_corpus.wavs()[1])
    assert glottis(["transcribe", wav, "--model", str(tiny_bundle), "--no-lm", "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip() == Transcriber(tiny_bundle, use_lm=False).transcribe(wav).text
    assert glottis(["transcribe", wav, "--model", str(tiny_bundle), "--no-lm", "--beam", "4", "--threads",
                    "1"]) == 0
    assert capsys.readouterr().out.strip()
    # A checkpoint has no LM: --lm is refused with exit code 2, the default falls back to greedy.
    assert glottis(["transcribe", wav, "--model", str(tiny_exp / "final.pt"), "--lm", "--threads", "1"]) == 2
    assert "no language model" in capsys.readouterr().err
    assert glottis(["transcribe", wav, "--model", str(tiny_exp / "final.pt"), "--threads", "1"]) == 0
    assert capsys.readouterr().out.strip() == Transcriber(tiny_bundle, use_lm=False).transcribe(wav).text
    assert glottis(["transcribe", wav, "--model", str(asr_corpus.root / "nowhere"), "--threads", "1"]) == 2


def test_any_rate_and_channel_count(greedy, asr_corpus, tmp_path):
    wav = asr_corpus.wavs()[2]
    wave, _ = load(wav)
    high = resample(wave, SR, 44100)
    other = 0.02 * torch.randn(high.shape, generator=torch.Generator().manual_seed(0))
    stereo = torch.stack([high + other, high - other])  # (2, samples); the channel mean is the speech
    path = tmp_path / "stereo44k.flac"
    save(path, stereo, 44100)
    ref = greedy.transcribe(wav)
    result = greedy.transcribe(path)
    assert result.duration == pytest.approx(ref.duration, abs=1e-3)
    assert result.text == ref.text
    check_words([w.__dict__ for w in result.words], result.duration, result.text)


def test_windowed_log_probs_stitch_exactly_when_the_context_covers_everything(greedy, asr_corpus, monkeypatch):
    wave = torch.cat([load(w, SR)[0] for w in asr_corpus.wavs()[:4]])  # ~5 s
    sub_hop = 160 * greedy.model.recognizer.subsampling
    for length in (wave.numel(), wave.numel() // sub_hop * sub_hop, wave.numel() - 1234):
        x = wave[:length]
        with torch.inference_mode():
            full, n = greedy.model.recognizer(x[None], torch.tensor([length]))
        monkeypatch.setattr(transcribe, "WINDOW_S", 30.0)
        single = greedy.log_probs(x)
        assert single.shape[0] == int(n[0])
        torch.testing.assert_close(single, full[0], atol=0, rtol=0)
        # Windows of 0.5 s, each run with the whole file as context: the same frames exactly.
        monkeypatch.setattr(transcribe, "WINDOW_S", 0.5)
        monkeypatch.setattr(transcribe, "CONTEXT_S", 10.0)
        torch.testing.assert_close(greedy.log_probs(x), full[0], atol=1e-5, rtol=0)


def test_windowed_log_probs_stay_close_with_short_context(greedy, asr_corpus, monkeypatch):
    for voice in ("usm", "gbm"):
        wave = torch.cat([load(w, SR)[0] for w in asr_corpus.wavs() if w.name.startswith(voice)][:5])  # ~7 s
        full = greedy.log_probs(wave)
        monkeypatch.setattr(transcribe, "WINDOW_S", 2.0)
        monkeypatch.setattr(transcribe, "CONTEXT_S", 1.0)
        windowed = greedy.log_probs(wave)
        monkeypatch.undo()
        assert windowed.shape == full.shape
        # Measured on this model: mean |dp| ~0.003, >97% of frames keep their best token, greedy
        # texts within 4% CER. The BiLSTM sees less context at the window edges, hence no exactness.
        assert float((windowed.exp() - full.exp()).abs().mean()) < 0.01
        assert float((windowed.argmax(-1) == full.argmax(-1)).float().mean()) > 0.95
        texts = [greedy_decode(lp[None], None, greedy.tokenizer)[0].text for lp in (full, windowed)]
        assert cer(texts[:1], texts[1:]) < 0.1


def test_three_minutes_run_in_bounded_pieces(greedy, asr_corpus, tmp_path, monkeypatch):
    one_pass = torch.cat([load(w, SR)[0] for w in asr_corpus.wavs()])  # ~49 s, 36 utterances
    long = torch.cat([one_pass] * 4)[: 180 * SR]  # 3 minutes
    path = tmp_path / "long.wav"
    save(path, long, SR)

    chunk_sizes, piece_sizes = [], []
    read_chunks = Transcriber._read_chunks

    def spy_chunks(self, *args, **kwargs):
        for chunk in read_chunks(self, *args, **kwargs):
            chunk_sizes.append(chunk.numel())
            yield chunk

    recognizer = greedy.model.recognizer
    forward = recognizer.forward

    def spy_forward(waves, lengths, *args, **kwargs):
        piece_sizes.append(waves.shape[-1])
        return forward(waves, lengths, *args, **kwargs)

    monkeypatch.setattr(Transcriber, "_read_chunks", spy_chunks)
    monkeypatch.setattr(recognizer, "forward", spy_forward)
    result = greedy.transcribe(path)
    assert result.duration == pytest.approx(180.0)
    assert sum(chunk_sizes) == 180 * SR  # the chunks tile the file exactly
    assert max(chunk_sizes) <= 60 * SR and len(chunk_sizes) == 3
    window = int((transcribe.WINDOW_S + 2 * transcribe.CONTEXT_S) * SR)
    assert max(piece_sizes) <= window and len(piece_sizes) >= 6
    check_words([w.__dict__ for w in result.words], result.duration, result.text)
    assert result.words[-1].end > 150  # speech all the way through, not just the first window
    words_per_pass = 3 * len(asr_corpus.text.read_text().split())  # 3 voices
    assert len(result.words) > 0.5 * 3.5 * words_per_pass, len(result.words)


def test_srt_helpers():
    assert srt_time(3725.5) == "01:02:05,500"

    # 21 + 1 + 21 characters exceed a 42-character cue; a cue also closes once it would pass 6 seconds.
    words = [Word("a" * 21, 0.0, 1.0), Word("b" * 21, 1.0, 2.0), Word("c", 2.0, 3.0), Word("d", 3.5, 8.5),
             Word("e", 8.6, 9.0)]
    cues = [c.split("\n") for c in to_srt(words).strip().split("\n\n")]
    assert [c[2] for c in cues] == ["a" * 21, "b" * 21 + " c", "d e"]
    assert [c[1] for c in cues] == ["00:00:00,000 --> 00:00:01,000", "00:00:01,000 --> 00:00:03,000",
                                    "00:00:03,500 --> 00:00:09,000"]
    assert to_srt([]) == ""


def test_demo_prints_references_hypotheses_and_scores(tiny_bundle, asr_corpus, capsys, monkeypatch):
    monkeypatch.setattr(demo, "set_threads", lambda n=None: 1)
    assert demo.main(["--manifest", str(asr_corpus.manifest), "--limit", "4", "--model", str(tiny_bundle)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| id")]
    assert len(rows) == 4
    records = {r.id: r.text for r in read_manifest(asr_corpus.manifest)}
    model = demo.load_recognizer(tiny_bundle)
    expected = demo.demo_rows(model, str(asr_corpus.manifest), limit=4)
    for row, want in zip(rows, expected, strict=True):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells == [want.id, records[want.id], want.greedy, want.lm]
    refs = [w.reference for w in expected]
    assert f"greedy: WER {100 * wer(refs, [w.greedy for w in expected]):.1f}%" in out
    assert f"with LM: WER {100 * wer(refs, [w.lm for w in expected]):.1f}%" in out
    assert demo.main(["--manifest", str(asr_corpus.manifest), "--limit", "2", "--model", str(tiny_bundle),
                      "--no-lm"]) == 0
    assert "with LM" not in capsys.readouterr().out
    assert demo.main(["--manifest", str(asr_corpus.manifest), "--model", str(asr_corpus.root / "none")]) == 2


def test_asr_package_imports_lazily():
    code = "import sys, asr; print(sorted(m for m in ('torch', 'asr.transcribe', 'asr.decode') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    import asr

    assert asr.Transcriber is Transcriber
    assert asr.load_recognizer is demo.load_recognizer
    assert "Transcriber" in dir(asr)
    with pytest.raises(AttributeError):
        asr.NoSuchThing  # noqa: B018
