"""Corpus loaders, the manifest builder CLI, the HF bridges, the utterance dataset and the sampler."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from audio.corpora import (
    load_audiofolder,
    load_commonvoice,
    load_corpus,
    load_librispeech,
    load_ljspeech,
    main,
)
from audio.datasets import (
    BucketBatchSampler,
    UtteranceDataset,
    collate_waves,
    hf_dataset_to_utterances,
    manifest_to_hf_dataset,
)
from audio.manifest import Utterance, read_manifest, resolve_audio, write_manifest
from audio.text import normalize_transcript

SR = 16_000


def _tone(path: Path, seconds: float, *, sample_rate: int = SR, freq: float = 220.0, **kw) -> np.ndarray:
    """Write a sine of ``seconds`` to ``path`` (format from the suffix) and return its samples."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), wave, sample_rate, **kw)
    return wave


def _by_id(records: list[Utterance]) -> dict[str, Utterance]:
    return {r.id: r for r in records}


# --------------------------------------------------------------------------- text


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Hello, World!", "hello world"),
        ("Don’t  STOP\tnow.", "don't stop now"),
        ("'Quoted' well-known café", "quoted well known cafe"),
        ("3 cats, 42 dogs", "3 cats 42 dogs"),  # digits are kept, not spelled out
        ("  ?!  ", ""),
    ],
)
def test_normalize_transcript(raw, expected):
    assert normalize_transcript(raw) == expected


# --------------------------------------------------------------------------- corpus loaders


def test_ljspeech_uses_normalised_column_and_skips_bad_files(tmp_path):
    _tone(tmp_path / "wavs" / "LJ001-0001.wav", 0.5)
    _tone(tmp_path / "wavs" / "LJ001-0002.wav", 0.25, sample_rate=22_050)
    (tmp_path / "wavs" / "LJ001-0003.wav").write_bytes(b"")  # empty file
    (tmp_path / "metadata.csv").write_text(
        "LJ001-0001|Printing, in 1 sense|Printing, in one sense\n"
        'LJ001-0002|He said "no|He said "no\n'  # an unbalanced quote must not swallow lines
        "LJ001-0003|Broken|Broken\n"
        "LJ001-0004|Missing|Missing\n",
        encoding="utf-8",
    )
    skipped: list[str] = []
    records = _by_id(load_ljspeech(tmp_path, skipped=skipped))
    assert sorted(records) == ["LJ001-0001", "LJ001-0002"]
    assert records["LJ001-0001"].text == "Printing, in one sense"
    assert records["LJ001-0002"].text == 'He said "no'
    assert records["LJ001-0001"].duration == pytest.approx(0.5)
    assert records["LJ001-0002"].sample_rate == 22_050
    assert {r.speaker for r in records.values()} == {"LJ"}
    assert {r.engine for r in records.values()} == {"ljspeech"}
    assert Path(records["LJ001-0001"].audio) == (tmp_path / "wavs" / "LJ001-0001.wav").resolve()
    assert len(skipped) == 2
    assert any("LJ001-0003.wav" in s and "empty" in s for s in skipped)
    assert any("LJ001-0004.wav" in s and "no such file" in s for s in skipped)


def _librispeech(root: Path) -> None:
    """Two subsets, two speakers; one corrupt flac in dev-clean."""
    layout = {
        "dev-clean": {("84", "121123"): ["IT WAS NIGHT", "THE END"], ("174", "50561"): ["HELLO THERE"]},
        "test-clean": {("61", "70968"): ["GOOD MORNING"]},
    }
    for subset, chapters in layout.items():
        for (speaker, chapter), texts in chapters.items():
            folder = root / subset / speaker / chapter
            lines = []
            for k, text in enumerate(texts):
                utt_id = f"{speaker}-{chapter}-{k:04d}"
                _tone(folder / f"{utt_id}.flac", 0.2 + 0.1 * k)
                lines.append(f"{utt_id} {text}")
            (folder / f"{speaker}-{chapter}.trans.txt").write_text("\n".join(lines) + "\n")
    (root / "dev-clean" / "174" / "50561" / "174-50561-0000.flac").write_text("not audio")


def test_librispeech_subsets_speakers_and_corrupt_flac(tmp_path):
    root = tmp_path / "LibriSpeech"
    _librispeech(root)
    skipped: list[str] = []
    records = _by_id(load_librispeech(root, skipped=skipped))
    assert sorted(records) == ["61-70968-0000", "84-121123-0000", "84-121123-0001"]
    assert records["84-121123-0001"].text == "THE END"
    assert records["84-121123-0001"].speaker == "84"
    assert records["84-121123-0001"].duration == pytest.approx(0.3)
    assert records["61-70968-0000"].engine == "librispeech"
    assert len(skipped) == 1 and "174-50561-0000.flac" in skipped[0]

    only_test = load_librispeech(root, subsets=["test-clean"])
    assert [r.id for r in only_test] == ["61-70968-0000"]
    direct = load_librispeech(root / "test-clean")  # the root may be a subset folder
    assert direct == only_test
    with pytest.raises(FileNotFoundError):
        load_librispeech(root, subsets=["train-other-500"])


def test_commonvoice_tsv_with_mp3_and_wav_clips(tmp_path):
    _tone(tmp_path / "clips" / "cv_1.mp3", 1.0, format="MP3", subtype="MPEG_LAYER_III")
    _tone(tmp_path / "clips" / "cv_2.wav", 0.5)
    (tmp_path / "test.tsv").write_text(
        "client_id\tpath\tsentence\tup_votes\tdown_votes\n"
        'abc123\tcv_1.mp3\tShe said "hi" loudly.\t2\t0\n'
        "def456\tcv_2.wav\tSecond one\t3\t1\n"
        "def456\tcv_3.mp3\tNot there\t1\t0\n",
        encoding="utf-8",
    )
    (tmp_path / "train.tsv").write_text("client_id\tpath\tsentence\n", encoding="utf-8")
    skipped: list[str] = []
    records = _by_id(load_commonvoice(tmp_path, split="test", skipped=skipped))
    assert sorted(records) == ["cv_1", "cv_2"]
    assert records["cv_1"].text == 'She said "hi" loudly.'
    assert records["cv_1"].speaker == "abc123"
    assert records["cv_1"].duration == pytest.approx(1.0, abs=0.06)  # mp3 frames are coarse
    assert records["cv_2"].duration == pytest.approx(0.5)
    assert len(skipped) == 1 and "cv_3.mp3" in skipped[0]
    assert load_commonvoice(tmp_path, split="train") == []


def test_audiofolder_csv_speaker_from_folder(tmp_path):
    _tone(tmp_path / "alice" / "a1.wav", 0.3)
    _tone(tmp_path / "bob" / "b1.flac", 0.4)
    _tone(tmp_path / "bob" / "unlisted.wav", 0.1)  # no metadata row: ignored
    (tmp_path / "bob" / "bad.wav").write_bytes(b"RIFF....garbage")
    (tmp_path / "metadata.csv").write_text(
        'file_name,transcription\nalice/a1.wav,first one\nbob/b1.flac,"second, quoted"\nbob/bad.wav,bad\n'
    )
    skipped: list[str] = []
    records = _by_id(load_audiofolder(tmp_path, skipped=skipped))
    assert sorted(records) == ["alice_a1", "bob_b1"]
    assert records["bob_b1"].text == "second, quoted"
    assert records["alice_a1"].speaker == "alice"
    assert records["bob_b1"].duration == pytest.approx(0.4)
    assert len(skipped) == 1 and "bad.wav" in skipped[0]


def test_audiofolder_jsonl_speaker_column_and_nested_metadata(tmp_path):
    _tone(tmp_path / "train" / "x.wav", 0.2)
    _tone(tmp_path / "train" / "y.wav", 0.6)
    rows = [
        {"file_name": "x.wav", "text": "ex", "speaker_id": 7},
        {"file_name": "y.wav", "text": "why", "speaker_id": 9},
    ]
    (tmp_path / "train" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = _by_id(load_corpus("audiofolder", tmp_path))
    assert sorted(records) == ["train_x", "train_y"]
    assert (records["train_x"].speaker, records["train_y"].speaker) == ("7", "9")
    assert records["train_y"].text == "why"
    assert records["train_y"].duration == pytest.approx(0.6)


def test_load_corpus_rejects_unknown_kind_and_duplicate_ids(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus kind"):
        load_corpus("timit", tmp_path)
    _tone(tmp_path / "clips" / "same.wav", 0.1)
    _tone(tmp_path / "clips" / "sub" / "same.wav", 0.1)
    (tmp_path / "test.tsv").write_text("client_id\tpath\tsentence\nc\tsame.wav\ta\nc\tsub/same.wav\tb\n")
    with pytest.raises(ValueError, match="duplicate"):
        load_corpus("commonvoice", tmp_path)


# --------------------------------------------------------------------------- CLI and manifests


def test_cli_writes_relative_manifest_and_fails_on_bad_files(tmp_path):
    root = tmp_path / "LibriSpeech"
    _librispeech(root)
    out = tmp_path / "manifests" / "libri.jsonl"
    assert main(["librispeech", str(root), "--out", str(out)]) == 1  # one corrupt flac
    records = read_manifest(out)
    assert [r.id for r in records] == ["84-121123-0000", "84-121123-0001", "61-70968-0000"]
    # The corpus is not below the manifest's folder, so paths stay absolute.
    assert all(Path(r.audio).is_absolute() for r in records)

    out_inside = tmp_path / "inside.jsonl"
    assert main(["librispeech", str(root / "test-clean"), "--out", str(out_inside), "--normalize"]) == 0
    (record,) = read_manifest(out_inside)
    assert record.audio == "LibriSpeech/test-clean/61/70968/61-70968-0000.flac"
    assert record.text == "good morning"
    assert resolve_audio(out_inside, record) == (root / "test-clean/61/70968/61-70968-0000.flac").resolve()
    assert not out_inside.with_name("inside.jsonl.tmp").exists()

    assert main(["ljspeech", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.jsonl")]) == 2


def test_manifest_round_trip(tmp_path):
    records = load_librispeech(_make_small_subset(tmp_path))
    path = tmp_path / "m.jsonl"
    write_manifest(path, records)
    assert read_manifest(path) == records
    # Scored and adapted per voice, else per speaker (LibriSpeech has no voice field).
    assert records[0].voice == "" and records[0].voice_or_speaker == records[0].speaker != ""
    assert replace(records[0], voice="flite-awb").voice_or_speaker == "flite-awb"


def _make_small_subset(tmp_path: Path) -> Path:
    folder = tmp_path / "sub" / "1" / "2"
    for k, seconds in enumerate([0.2, 0.35, 0.5]):
        _tone(folder / f"1-2-{k:04d}.flac", seconds, freq=200 + 100 * k)
    (folder / "1-2.trans.txt").write_text("1-2-0000 A\n1-2-0001 B C\n1-2-0002 D\n")
    return tmp_path / "sub"


# --------------------------------------------------------------------------- Hugging Face bridges


def test_manifest_to_hf_dataset_map_decodes_and_resamples(tmp_path):
    records = load_librispeech(_make_small_subset(tmp_path))
    manifest = tmp_path / "m.jsonl"
    write_manifest(manifest, records)
    dataset = manifest_to_hf_dataset(manifest, sample_rate=8000)
    assert dataset.column_names[:3] == ["id", "audio", "text"]

    def measure(example):
        audio = example["audio"]
        return {"samples": len(audio["array"]), "rate": audio["sampling_rate"]}

    mapped = dataset.map(measure)
    assert list(mapped["id"]) == [r.id for r in records]
    assert list(mapped["rate"]) == [8000] * 3
    assert list(mapped["samples"]) == [round(r.duration * 8000) for r in records]


def test_hf_dataset_saved_to_disk_becomes_a_manifest(tmp_path):
    import datasets

    sources = [_tone(tmp_path / "src" / f"{k}.flac", 0.2 + 0.1 * k, freq=300 + 50 * k) for k in range(2)]
    features = datasets.Features(
        {
            "audio": datasets.Audio(),
            "sentence": datasets.Value("string"),
            "speaker_id": datasets.Value("int64"),
        }
    )
    table = {
        "audio": [str(tmp_path / "src" / "0.flac"), str(tmp_path / "src" / "1.flac"), {"bytes": b"junk"}],
        "sentence": ["zero", "one", "broken"],
        "speaker_id": [5, 6, 7],
    }
    datasets.Dataset.from_dict(table, features=features).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "src" / "0.flac").unlink()  # save_to_disk embedded the bytes; the source is no longer needed

    saved = datasets.load_from_disk(str(tmp_path / "saved"))
    skipped: list[str] = []
    records = hf_dataset_to_utterances(
        saved, out_dir=tmp_path / "wavs", text_column="sentence", engine="mini", skipped=skipped
    )
    assert [r.id for r in records] == ["000000", "000001"]
    assert [r.text for r in records] == ["zero", "one"]
    assert [r.speaker for r in records] == ["5", "6"]
    assert len(skipped) == 1 and "mini[2]" in skipped[0]
    for record, source in zip(records, sources, strict=True):
        wave, sample_rate = sf.read(record.audio, dtype="float32")
        assert sample_rate == SR and record.duration == pytest.approx(len(source) / SR)
        np.testing.assert_allclose(wave, source, atol=2e-4)  # flac -> 16-bit wav

    out = tmp_path / "hf.jsonl"
    argv = ["hf", str(tmp_path / "saved"), "--out", str(out), "--audio-dir", str(tmp_path / "cli_wavs")]
    assert main(argv) == 2  # there is no "text" column
    argv += ["--text-column", "sentence"]
    assert main(argv) == 1  # the junk row
    assert [r.audio for r in read_manifest(out)] == ["cli_wavs/000000.wav", "cli_wavs/000001.wav"]


def test_hf_dataset_with_plain_array_column(tmp_path):
    import datasets

    stereo = np.stack([np.full(800, 0.5, np.float32), np.full(800, -0.25, np.float32)])
    table = {"id": ["s/1"], "audio": [{"array": stereo, "sampling_rate": 8000}], "text": ["t"]}
    (record,) = hf_dataset_to_utterances(datasets.Dataset.from_dict(table), out_dir=tmp_path)
    assert record.id == "s/1" and Path(record.audio).name == "s_1.wav"
    assert (record.duration, record.sample_rate) == (0.1, 8000)
    wave, _ = sf.read(record.audio, dtype="float32")
    np.testing.assert_allclose(wave, 0.125, atol=1e-4)  # channels averaged


# --------------------------------------------------------------------------- dataset and collate


def test_utterance_dataset_resamples_and_collate_pads(tmp_path):
    waves = {
        "a": _tone(tmp_path / "a.wav", 0.25),
        "b": _tone(tmp_path / "b.wav", 0.1, sample_rate=8000),
        "c": _tone(tmp_path / "c.flac", 0.4),
    }
    records = [
        Utterance(id=k, audio=f"{k}.{'flac' if k == 'c' else 'wav'}", text=k.upper(), speaker="s",
                  duration=len(w) / (8000 if k == "b" else SR), sample_rate=SR)
        for k, w in waves.items()
    ]  # fmt: skip
    write_manifest(tmp_path / "m.jsonl", records)
    dataset = UtteranceDataset(tmp_path / "m.jsonl", sample_rate=SR)
    assert len(dataset) == 3 and dataset.durations == pytest.approx([0.25, 0.1, 0.4])
    item = dataset[1]
    assert item["id"] == "b" and item["text"] == "B" and item["speaker"] == "s"
    assert item["wave"].dtype == torch.float32 and item["wave"].shape == (1600,)  # 8 kHz -> 16 kHz

    batch = collate_waves([dataset[i] for i in range(3)])
    assert batch["waves"].shape == (3, 6400)
    assert batch["lengths"].tolist() == [4000, 1600, 6400] and batch["lengths"].dtype == torch.int64
    assert batch["ids"] == ["a", "b", "c"] and batch["texts"] == ["A", "B", "C"]
    torch.testing.assert_close(batch["waves"][0, :4000], torch.from_numpy(waves["a"]), atol=1e-4, rtol=0)
    assert batch["waves"][0, 4000:].abs().max() == 0 and batch["waves"][1, 1600:].abs().max() == 0

    framed = UtteranceDataset(tmp_path / "m.jsonl", sample_rate=SR, transform=lambda w: w.reshape(-1, 160))
    features = collate_waves([framed[0], framed[2]])
    assert features["waves"].shape == (2, 40, 160) and features["lengths"].tolist() == [25, 40]

    loader = torch.utils.data.DataLoader(
        dataset,
        batch_sampler=BucketBatchSampler(dataset.durations, max_seconds=0.5),
        collate_fn=collate_waves,
    )
    seen = [utt_id for batch in loader for utt_id in batch["ids"]]
    assert sorted(seen) == ["a", "b", "c"]


# --------------------------------------------------------------------------- bucket sampler


def _durations(n: int = 300, seed: int = 0) -> list[float]:
    return np.random.default_rng(seed).uniform(1.0, 10.0, size=n).round(3).tolist()


def _padded(batch: list[int], lengths: np.ndarray) -> float:
    return len(batch) * lengths[batch].max()


def test_sampler_covers_every_index_once_within_budget():
    durations = _durations()
    sampler = BucketBatchSampler(durations, max_seconds=40.0, seed=3)
    lengths = np.asarray(durations)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert Counter(i for b in batches for i in b) == Counter(range(len(durations)))
        assert all(_padded(b, lengths) <= 40.0 for b in batches)
        # Bucketing keeps padding low; random batches of U(1, 10) s waste about 40%.
        efficiency = lengths.sum() / sum(_padded(b, lengths) for b in batches)
        assert efficiency > 0.85


def test_sampler_frames_budget_and_batch_size_cap():
    durations = _durations(100)
    sampler = BucketBatchSampler(durations, max_frames=4000, frames_per_second=100, max_batch_size=3)
    frames = np.asarray(durations) * 100
    batches = list(sampler)
    assert all(len(b) <= 3 and _padded(b, frames) <= 4000 for b in batches)
    assert sorted(i for b in batches for i in b) == list(range(100))


def test_sampler_is_deterministic_per_seed_and_epoch():
    durations = _durations()

    def batches(seed, epoch):
        sampler = BucketBatchSampler(durations, max_seconds=30.0, seed=seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    assert batches(1, 0) == batches(1, 0)
    assert batches(1, 1) == batches(1, 1)
    assert batches(1, 0) != batches(1, 1)
    assert batches(1, 0) != batches(2, 0)
    unshuffled = BucketBatchSampler(durations, max_seconds=30.0, shuffle=False)
    order = [i for b in unshuffled for i in b]
    assert order == sorted(range(len(durations)), key=lambda i: durations[i])


def test_sampler_ranks_get_disjoint_equal_shares():
    durations = _durations()
    replicas = 3
    samplers = [
        BucketBatchSampler(durations, max_seconds=35.0, seed=7, num_replicas=replicas, rank=r)
        for r in range(replicas)
    ]
    full = BucketBatchSampler(durations, max_seconds=35.0, seed=7)
    for epoch in range(2):
        for s in (*samplers, full):
            s.set_epoch(epoch)
        shares = [list(s) for s in samplers]
        assert len({len(share) for share in shares}) == 1
        assert all(len(s) == len(share) for s, share in zip(samplers, shares, strict=True))
        indices = [i for share in shares for b in share for i in b]
        assert len(indices) == len(set(indices))  # disjoint
        all_batches = list(full)
        assert sum(len(share) for share in shares) == len(all_batches) - len(all_batches) % replicas
        assert set(map(tuple, (b for share in shares for b in share))) <= set(map(tuple, all_batches))


def test_sampler_resumes_mid_epoch():
    durations = _durations()
    sampler = BucketBatchSampler(durations, max_seconds=30.0, seed=5)
    sampler.set_epoch(2)
    full = list(sampler)
    iterator = iter(sampler)
    done = [next(iterator) for _ in range(4)]
    assert done == full[:4]
    state = sampler.state_dict()
    assert state == {"seed": 5, "epoch": 2, "batches_done": 4}

    resumed = BucketBatchSampler(durations, max_seconds=30.0, seed=5)
    resumed.load_state_dict(json.loads(json.dumps(state)))
    resumed.set_epoch(2)  # a training loop re-announcing the resumed epoch keeps the skip
    assert len(resumed) == len(full) - 4
    assert list(resumed) == full[4:]
    assert len(resumed) == len(full)  # the skip applies once; a re-iteration is the whole epoch
    resumed.set_epoch(3)
    sampler.set_epoch(3)
    assert list(resumed) == list(sampler)

    # A trainer that knows how many batches it really used (DataLoader prefetches) says so.
    explicit = BucketBatchSampler(durations, max_seconds=30.0, seed=5)
    explicit.load_state_dict(sampler.state_dict(batches_done=2) | {"epoch": 2})
    assert list(explicit) == full[2:]
    with pytest.raises(ValueError, match="seed"):
        BucketBatchSampler(durations, max_seconds=30.0, seed=6).load_state_dict(state)


def test_sampler_leaves_out_utterances_longer_than_the_budget():
    sampler = BucketBatchSampler([1.0, 12.0, 2.0, 3.0], max_seconds=10.0, num_buckets=2)
    assert sampler.too_long == [1]
    assert sorted(i for b in sampler for i in b) == [0, 2, 3]
    with pytest.raises(ValueError):
        BucketBatchSampler([1.0], max_frames=10)
