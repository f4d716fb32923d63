"""Speech recognition: CTC models, training, decoders, and ``Transcriber``.

``from asr import Transcriber`` is lazy: the heavy modules (torch models, flashlight decoders) are
imported on first use of a name, so ``import asr`` itself stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from asr.bundle import export_bundle, load_recognizer
    from asr.transcribe import Transcriber, Transcript, Word

__all__ = ["Transcriber", "Transcript", "Word", "load_recognizer", "export_bundle"]

_LAZY = {
    "Transcriber": "asr.transcribe",
    "Transcript": "asr.transcribe",
    "Word": "asr.transcribe",
    "load_recognizer": "asr.bundle",
    "export_bundle": "asr.bundle",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'asr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
