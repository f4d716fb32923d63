"""Loaders for local copies of real corpora in their standard layouts, and the manifest builder CLI.

Each loader returns ``list[Utterance]`` with absolute audio paths; duration and sample rate come
from the file headers (read in a thread pool). Files that cannot be read are skipped: the loader
logs one warning listing them and, if given a ``skipped`` list, appends ``"path: reason"`` to it.

    python -m audio.corpora librispeech /data/LibriSpeech --subsets dev-clean --out data/dev.jsonl
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from audio.io import AudioError, info
from audio.manifest import Utterance, write_manifest
from audio.text import normalize_transcript

__all__ = [
    "AUDIO_SUFFIXES",
    "LOADERS",
    "load_ljspeech",
    "load_librispeech",
    "load_commonvoice",
    "load_audiofolder",
    "load_hf",
    "load_corpus",
    "main",
]

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".opus")
_PROBE_THREADS = 8  # header reads wait on the disk, not the CPU


@dataclasses.dataclass(frozen=True)
class _Entry:
    """One transcript line before its audio file has been checked."""

    id: str
    path: Path
    text: str
    speaker: str


def _probe(entries: list[_Entry], *, engine: str, skipped: list[str] | None) -> list[Utterance]:
    """Read each entry's audio header; keep the readable ones, report the others."""

    def header(entry: _Entry):
        try:
            meta = info(entry.path)
            if meta.frames == 0:
                raise AudioError(entry.path, "audio has zero length")
            return meta
        except AudioError as err:
            return err

    with ThreadPoolExecutor(max_workers=_PROBE_THREADS) as pool:
        headers = list(pool.map(header, entries))
    records, bad = [], []
    for entry, meta in zip(entries, headers, strict=True):
        if isinstance(meta, AudioError):
            bad.append(str(meta))
            continue
        records.append(
            Utterance(
                id=entry.id,
                audio=str(entry.path.resolve()),
                text=entry.text,
                speaker=entry.speaker,
                duration=meta.duration,
                sample_rate=meta.sample_rate,
                engine=engine,
            )
        )
    _report(bad, engine=engine, skipped=skipped)
    return records


def _report(bad: list[str], *, engine: str, skipped: list[str] | None) -> None:
    if bad:
        log.warning("%s: skipped %d unreadable file(s):\n  %s", engine, len(bad), "\n  ".join(bad))
    if skipped is not None:
        skipped.extend(bad)


def load_ljspeech(root: str | os.PathLike, *, skipped: list[str] | None = None) -> list[Utterance]:
    """LJSpeech: ``root/metadata.csv`` (``id|raw text|normalised text``) and ``root/wavs/<id>.wav``.

    The normalised column (numbers and abbreviations spelled out) is used; speaker is ``"LJ"``.
    """
    root = Path(root)
    entries = []
    with open(root / "metadata.csv", encoding="utf-8", newline="") as f:
        for row in csv.reader(f, delimiter="|", quoting=csv.QUOTE_NONE):
            if not row:
                continue
            text = row[2] if len(row) > 2 and row[2].strip() else row[-1]
            entries.append(
                _Entry(id=row[0], path=root / "wavs" / f"{row[0]}.wav", text=text.strip(), speaker="LJ")
            )
    return _probe(entries, engine="ljspeech", skipped=skipped)


def _is_librispeech_subset(folder: Path) -> bool:
    return any(folder.glob("*/*/*.trans.txt"))


def load_librispeech(
    root: str | os.PathLike,
    *,
    subsets: Iterable[str] | None = None,
    skipped: list[str] | None = None,
) -> list[Utterance]:
    """LibriSpeech: ``root/<subset>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt`` + ``<id>.flac``.

    ``root`` may also be a subset folder itself. ``subsets=None`` takes every subset found, in
    name order. Speaker is the speaker folder name.
    """
    root = Path(root)
    if _is_librispeech_subset(root):
        folders = [root]
    elif subsets is None:
        folders = sorted(p for p in root.iterdir() if p.is_dir() and _is_librispeech_subset(p))
    else:
        folders = [root / name for name in subsets]
    if not folders:
        raise FileNotFoundError(f"{root}: no LibriSpeech subset (*/*/*.trans.txt) found")
    entries = []
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such LibriSpeech subset")
        for trans in sorted(folder.glob("*/*/*.trans.txt")):
            speaker = trans.parent.parent.name
            for line in trans.read_text(encoding="utf-8").splitlines():
                if not line.strip():
                    continue
                utt_id, _, text = line.strip().partition(" ")
                path = trans.parent / f"{utt_id}.flac"
                entries.append(_Entry(id=utt_id, path=path, text=text.strip(), speaker=speaker))
    return _probe(entries, engine="librispeech", skipped=skipped)


def load_commonvoice(
    root: str | os.PathLike,
    *,
    split: str = "test",
    skipped: list[str] | None = None,
) -> list[Utterance]:
    """Common Voice: ``root/<split>.tsv`` (header with ``client_id``, ``path``, ``sentence``) and
    ``root/clips/<path>``. The id is the clip's file stem and the speaker its ``client_id``.
    """
    root = Path(root)
    entries = []
    with open(root / f"{split}.tsv", encoding="utf-8", newline="") as f:
        # Sentences contain bare quotes; Common Voice's tsv is not quoted.
        for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE):
            clip, text = row["path"], row["sentence"].strip()
            entries.append(
                _Entry(id=Path(clip).stem, path=root / "clips" / clip, text=text, speaker=row["client_id"])
            )
    return _probe(entries, engine="commonvoice", skipped=skipped)


def _read_metadata(path: Path) -> list[dict]:
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            return [json.loads(line) for line in f if line.strip()]
    with open(path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def load_audiofolder(root: str | os.PathLike, *, skipped: list[str] | None = None) -> list[Utterance]:
    """The Hugging Face *audiofolder* layout: audio files anywhere under ``root`` plus
    ``metadata.csv`` or ``metadata.jsonl`` files whose ``file_name`` is relative to their own folder.

    Text comes from ``transcription`` or ``text``; speaker from ``speaker``/``speaker_id`` or else
    the audio file's parent folder name. The id is the path below ``root`` without its suffix, with
    ``/`` replaced by ``_``. Audio files no metadata row names are ignored (logged).
    """
    root = Path(root).resolve()
    metadata = sorted(root.rglob("metadata.csv")) + sorted(root.rglob("metadata.jsonl"))
    if not metadata:
        raise FileNotFoundError(f"{root}: no metadata.csv or metadata.jsonl")
    entries, named = [], set()
    for meta_path in metadata:
        for row in _read_metadata(meta_path):
            text_key = next((k for k in ("transcription", "text") if k in row), None)
            if "file_name" not in row or text_key is None:
                raise ValueError(f"{meta_path}: needs a file_name and a transcription or text column")
            path = (meta_path.parent / row["file_name"]).resolve()
            named.add(path)
            speaker = row.get("speaker", row.get("speaker_id", path.parent.name))
            utt_id = path.relative_to(root).with_suffix("").as_posix().replace("/", "_")
            entries.append(
                _Entry(id=utt_id, path=path, text=str(row[text_key]).strip(), speaker=str(speaker))
            )
    unnamed = [p for p in root.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.resolve() not in named]
    if unnamed:
        log.info("audiofolder: %d audio file(s) have no metadata row and are ignored", len(unnamed))
    return _probe(entries, engine="audiofolder", skipped=skipped)


def load_hf(
    root: str | os.PathLike,
    *,
    out_dir: str | os.PathLike,
    split: str | None = None,
    audio_column: str = "audio",
    text_column: str = "text",
    skipped: list[str] | None = None,
) -> list[Utterance]:
    """A local Hugging Face dataset (``save_to_disk`` folder or a folder ``load_dataset`` reads),
    decoded to wav files in ``out_dir``. See :func:`audio.datasets.hf_dataset_to_utterances`.
    """
    from audio.datasets import hf_dataset_to_utterances, load_local_hf_dataset  # datasets is slow to import

    dataset = load_local_hf_dataset(root, split=split)
    return hf_dataset_to_utterances(
        dataset, audio_column=audio_column, text_column=text_column, out_dir=out_dir, skipped=skipped
    )


LOADERS: dict[str, Callable[..., list[Utterance]]] = {
    "ljspeech": load_ljspeech,
    "librispeech": load_librispeech,
    "commonvoice": load_commonvoice,
    "audiofolder": load_audiofolder,
    "hf": load_hf,
}


def load_corpus(kind: str, root: str | os.PathLike, **kwargs) -> list[Utterance]:
    """Dispatch to ``LOADERS[kind]`` and check that ids are unique."""
    if kind not in LOADERS:
        raise ValueError(f"unknown corpus kind {kind!r}; choose from {sorted(LOADERS)}")
    records = LOADERS[kind](root, **kwargs)
    duplicates = sorted(utt_id for utt_id, n in Counter(r.id for r in records).items() if n > 1)
    if duplicates:
        raise ValueError(f"{root}: duplicate utterance ids {duplicates[:5]}")
    return records


def _relative_to(folder: Path, record: Utterance) -> Utterance:
    """Make the audio path relative to ``folder`` if the audio lives below it."""
    path = Path(record.audio)
    if path.is_relative_to(folder):
        return dataclasses.replace(record, audio=path.relative_to(folder).as_posix())
    return record


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Write a manifest for a local corpus.")
    parser.add_argument("kind", choices=sorted(LOADERS))
    parser.add_argument("root", type=Path, help="the corpus folder")
    parser.add_argument("--out", type=Path, required=True, help="manifest to write (JSON lines)")
    parser.add_argument("--subsets", nargs="+", help="librispeech: subset folders (default: all)")
    parser.add_argument("--split", help="commonvoice: tsv name (default test); hf: dataset split")
    parser.add_argument("--audio-dir", type=Path, help="hf: where decoded wavs go (default: <out>_wavs/)")
    parser.add_argument("--audio-column", default="audio", help="hf: the audio column")
    parser.add_argument("--text-column", default="text", help="hf: the transcript column")
    parser.add_argument("--normalize", action="store_true", help="apply normalize_transcript to the text")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    kwargs: dict = {}
    if args.kind == "librispeech" and args.subsets:
        kwargs["subsets"] = args.subsets
    if args.kind == "commonvoice":
        kwargs["split"] = args.split or "test"
    if args.kind == "hf":
        kwargs["split"] = args.split
        kwargs["out_dir"] = args.audio_dir or args.out.with_name(f"{args.out.stem}_wavs")
        kwargs["audio_column"], kwargs["text_column"] = args.audio_column, args.text_column
    skipped: list[str] = []
    try:
        records = load_corpus(args.kind, args.root, skipped=skipped, **kwargs)
    except (OSError, ValueError, KeyError) as err:  # KeyError: a tsv/csv column is missing
        log.error("cannot read %s corpus at %s: %s", args.kind, args.root, err)
        return 2
    if args.normalize:
        records = [dataclasses.replace(r, text=normalize_transcript(r.text)) for r in records]
        empty = [r.id for r in records if not r.text]
        if empty:
            log.warning("dropping %d utterance(s) whose text is empty after normalisation", len(empty))
        records = [r for r in records if r.text]
    folder = args.out.resolve().parent
    write_manifest(args.out, [_relative_to(folder, r) for r in records])
    hours = sum(r.duration for r in records) / 3600
    log.info("wrote %s: %d utterances, %.2f h", args.out, len(records), hours)
    if skipped:
        log.error("%d unreadable file(s) were skipped:\n  %s", len(skipped), "\n  ".join(skipped))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
