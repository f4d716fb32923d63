"""Text to speech: Tacotron (``tts.tacotron``) with Griffin-Lim, its text front end, training and synthesis.

``from tts import Synthesizer`` is resolved lazily, so importing a submodule stays cheap.
"""

from __future__ import annotations

__all__ = ["Synthesizer", "SynthesisResult"]


def __getattr__(name: str):
    if name in __all__:
        from tts import synthesize

        return getattr(synthesize, name)
    raise AttributeError(f"module 'tts' has no attribute {name!r}")
