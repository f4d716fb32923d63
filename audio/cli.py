"""The ``glottis`` command. Each package owns its subcommands; this dispatcher only routes to them.

Subcommand modules are named as strings and imported on use, so ``audio`` never imports ``asr``/``tts``.
"""

from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "features": ("audio.features_cli", "compute features of an audio file, optionally plot them"),
    "transcribe": ("asr.transcribe", "speech to text with a CTC recogniser"),
    "synthesize": ("tts.synthesize", "text to speech with Tacotron + Griffin-Lim or WaveNet"),
    "vocode": ("tts.vocode", "copy synthesis: audio or mel -> WaveNet -> audio"),
}


def _usage() -> str:
    lines = ["usage: glottis COMMAND [options]   (glottis COMMAND --help for details)", "", "commands:"]
    lines += [f"  {name:<12} {desc}" for name, (_, desc) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"glottis: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    return module.main(rest, prog=f"glottis {name}") or 0


if __name__ == "__main__":
    sys.exit(main())
