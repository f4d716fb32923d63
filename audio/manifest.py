"""Typed utterance records stored as JSON lines (one object per line), as in lhotse/icefall.

``audio`` is a path relative to the manifest's folder, so a corpus can be moved as a whole.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from audio.atomic import write_lines

__all__ = ["Utterance", "read_manifest", "write_manifest", "resolve_audio"]


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: str  # path relative to the manifest file's folder (or absolute)
    text: str
    speaker: str
    duration: float  # seconds
    sample_rate: int  # Hz
    engine: str = ""  # the synthesiser or corpus that produced it
    voice: str = ""  # the exact voice setting (engine-specific), for synthetic data

    @property
    def voice_or_speaker(self) -> str:
        """The group an utterance is scored (and a recogniser adapted) in: its voice, else its speaker."""
        return self.voice or self.speaker or ""


_FIELDS = {f.name for f in dataclasses.fields(Utterance)}


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSON-lines manifest. Unknown keys are an error that names the file and line."""
    path = Path(path)
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from None
            unknown = set(obj) - _FIELDS
            if unknown:
                raise ValueError(f"{path}:{lineno}: unknown manifest keys {sorted(unknown)}")
            try:
                records.append(Utterance(**obj))
            except TypeError as err:
                raise ValueError(f"{path}:{lineno}: {err}") from None
    return records


def write_manifest(path: str | os.PathLike, records: Iterable[Utterance]) -> None:
    """Write records atomically as JSON lines."""
    write_lines(path, (json.dumps(dataclasses.asdict(r), ensure_ascii=False) for r in records))


def resolve_audio(manifest_path: str | os.PathLike, record: Utterance) -> Path:
    """The absolute audio path of ``record``, resolved against its manifest's folder."""
    p = Path(record.audio)
    return p if p.is_absolute() else Path(manifest_path).resolve().parent / p
