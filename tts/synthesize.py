"""Text to speech: ``glottis synthesize "TEXT" -o out.wav [--model DIR] [--vocoder griffin-lim|wavenet]``.

Text is normalised (numbers and abbreviations spelled out), split into sentences, each sentence is
synthesised by Tacotron, turned into audio by Griffin-Lim (or the WaveNet vocoder, ``tts.vocode``), and
the pieces are joined with short pauses. ``--text-file F --out-dir D`` synthesises every non-empty line
of F to ``D/0001.wav``, ... ; ``--plot`` writes the alignment and mel spectrogram PNGs next to each wav.

Python API::

    from tts import Synthesizer
    result = Synthesizer().synthesize("Hello there.")   # .wave (samples,), .sample_rate, .mels, ...
    Synthesizer().synthesize_to_file("Hello there.", "hello.wav")

Exit codes: 0 success, 1 missing model or failed synthesis, 2 bad input (empty or unpronounceable
text, unavailable vocoder, bad arguments).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from audio.io import save
from audio.plot import plot_alignment, plot_spectrogram
from audio.training import set_threads
from tts.bundle import DEFAULT_MODEL_DIR, LoadedTacotron, load_tacotron
from tts.spectrogram import GriffinLimConfig, linear_to_wave
from tts.text import normalize_text, split_sentences, texts_to_ids

log = logging.getLogger(__name__)

__all__ = ["Synthesizer", "SynthesisResult", "VOCODERS", "VocoderUnavailable", "main"]

VOCODERS = ("griffin-lim", "wavenet")
PAUSE_S = 0.25  # silence between sentences
WAVENET_MODEL_DIR = Path(__file__).parent / "pretrained" / "wavenet_synth_en"


class VocoderUnavailable(ValueError):
    """The requested vocoder cannot be used (yet)."""


@dataclass
class SynthesisResult:
    wave: torch.Tensor  # (samples,) float32 in [-1, 1]
    sample_rate: int  # Hz
    sentences: list[str]  # the normalised sentences, in order
    mels: list[torch.Tensor] = field(default_factory=list)  # per sentence (frames, n_mels), normalised dB
    alignments: list[torch.Tensor] = field(default_factory=list)  # per sentence (decoder steps, symbols)
    stopped: list[bool] = field(default_factory=list)  # False where max_decoder_steps cut a sentence off

    @property
    def duration(self) -> float:
        """Seconds of audio."""
        return self.wave.shape[0] / self.sample_rate


class Synthesizer:
    """A loaded Tacotron plus vocoder.

    Args:
        model: a model folder or training checkpoint (default: the bundled model).
        vocoder: ``"griffin-lim"`` or ``"wavenet"`` (:class:`VocoderUnavailable` if there is no vocoder).
        vocoder_model: WaveNet folder or checkpoint (default: the bundled ``WAVENET_MODEL_DIR``).
        seed: seeds the pre-net dropout and Griffin-Lim's initial phases, so output is reproducible.
        max_decoder_steps: per-sentence guard (default: the model's).
        griffin_lim: Griffin-Lim settings to use instead of the model's.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        vocoder: str = "griffin-lim",
        vocoder_model: str | os.PathLike | None = None,
        seed: int = 0,
        max_decoder_steps: int | None = None,
        griffin_lim: GriffinLimConfig | None = None,
        postfilter: bool = True,
        candidates: int = 1,
    ):
        if vocoder not in VOCODERS:
            raise VocoderUnavailable(f"unknown vocoder {vocoder!r}; choose from {VOCODERS}")
        self.loaded: LoadedTacotron = load_tacotron(model)
        self.wavenet = None
        if vocoder == "wavenet":
            from tts.vocode import Vocoder

            try:
                self.wavenet = Vocoder(vocoder_model or WAVENET_MODEL_DIR, seed=seed, postfilter=postfilter,
                                       candidates=candidates)
            except FileNotFoundError as err:
                raise VocoderUnavailable(
                    f"the WaveNet vocoder is not available yet: {err}; or use --vocoder griffin-lim"
                ) from None
            if self.wavenet.loaded.feature_config != self.loaded.feature_config:
                raise VocoderUnavailable(
                    f"the WaveNet vocoder {self.wavenet.loaded.source} was trained on other mel features "
                    f"than the Tacotron model {self.loaded.source}"
                )
        self.vocoder = vocoder
        self.seed = seed
        self.max_decoder_steps = max_decoder_steps
        self.griffin_lim = griffin_lim or self.loaded.griffin_lim

    def override_griffin_lim(self, *, n_iter: int | None = None, power: float | None = None) -> None:
        """Use ``n_iter`` Griffin-Lim iterations and/or magnitude ``power`` (None keeps the current value)."""
        gl = self.griffin_lim
        self.griffin_lim = replace(
            gl, n_iter=gl.n_iter if n_iter is None else n_iter, power=gl.power if power is None else power
        )

    @property
    def sample_rate(self) -> int:
        return self.loaded.feature_config.sample_rate

    @torch.inference_mode()
    def synthesize(self, text: str) -> SynthesisResult:
        """Text of any length -> one waveform (sentences joined by ``PAUSE_S`` of silence).

        Raises:
            ValueError: empty or unpronounceable text.
        """
        loaded = self.loaded
        sentences = split_sentences(normalize_text(text), max_chars=loaded.text_config.max_sentence_chars)
        if not sentences:
            raise ValueError(f"nothing pronounceable in the text {text!r}")
        all_ids = texts_to_ids(sentences, loaded.text_config, normalized=True)
        generator = torch.Generator().manual_seed(self.seed)
        pause = torch.zeros(int(PAUSE_S * self.sample_rate))
        result = SynthesisResult(wave=torch.zeros(0), sample_rate=self.sample_rate, sentences=sentences)
        pieces = []
        for sentence, ids in zip(sentences, all_ids, strict=True):
            out = loaded.model.inference(
                torch.tensor(ids), max_decoder_steps=self.max_decoder_steps, generator=generator
            )
            frames = int(out.lengths[0])
            if self.wavenet is not None:
                pieces += [self.wavenet.vocode(out.mel[0, :frames]), pause]
            else:
                wave, lengths = linear_to_wave(
                    out.linear[:, :frames],
                    loaded.feature_config,
                    loaded.scale,
                    self.griffin_lim,
                    generator=generator,
                )
                pieces += [wave[0, : int(lengths[0])], pause]
            result.mels.append(out.mel[0, :frames])
            result.alignments.append(out.alignments[0, : frames // loaded.model.cfg.r, : len(ids)])
            result.stopped.append(bool(out.stopped[0]))
            if not out.stopped[0]:
                log.warning("the decoder did not stop within %d steps: %r", out.alignments.shape[1], sentence)
        result.wave = torch.cat(pieces[:-1])
        return result

    def synthesize_to_file(
        self, text: str, path: str | os.PathLike, *, plot: bool = False
    ) -> SynthesisResult:
        """Synthesise ``text`` into ``path`` (wav/flac/ogg, 16-bit); with ``plot``, also write
        ``<stem>.alignment.png`` and ``<stem>.mel.png`` (the first sentence's, or each sentence's)."""
        result = self.synthesize(text)
        path = Path(path)
        save(path, result.wave, result.sample_rate)
        if plot:
            many = len(result.sentences) > 1
            for i, (mel, attn) in enumerate(zip(result.mels, result.alignments, strict=True)):
                stem = path.with_suffix("") if not many else path.with_name(f"{path.stem}.{i + 1}")
                plot_alignment(attn, f"{stem}.alignment.png", title=result.sentences[i][:60])
                plot_spectrogram(
                    mel,
                    self.loaded.feature_config,
                    "logmel",
                    f"{stem}.mel.png",
                    title="mel spectrogram (normalised dB)",
                )
        return result


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip()]


def main(argv: list[str] | None = None, prog: str = "glottis synthesize") -> int:
    from tts.vocode import CANDIDATES_HELP  # ~10 ms on top of this module's imports

    parser = argparse.ArgumentParser(prog=prog, description="Text to speech with Tacotron.")
    parser.add_argument("text", nargs="?", help="the text to say (or use --text-file)")
    parser.add_argument("-o", "--output", help="wav file to write (with TEXT)")
    parser.add_argument("--text-file", help="synthesise each non-empty line of this file")
    parser.add_argument("--out-dir", help="folder for the --text-file wavs (0001.wav, 0002.wav, ...)")
    parser.add_argument("--model", help=f"model folder or checkpoint (default: {DEFAULT_MODEL_DIR})")
    parser.add_argument("--vocoder", choices=VOCODERS, default="griffin-lim")
    parser.add_argument(
        "--vocoder-model", help=f"WaveNet folder or checkpoint (default: {WAVENET_MODEL_DIR})"
    )
    parser.add_argument(
        "--no-postfilter",
        dest="postfilter",
        action="store_false",
        help="with --vocoder wavenet: keep its raw output (default: cut its sampling noise above the mel)",
    )
    parser.add_argument(
        "--candidates",
        type=int,
        default=1,
        help=f"with --vocoder wavenet: {CANDIDATES_HELP}",
    )
    parser.add_argument(
        "--plot", action="store_true", help="also write alignment and mel PNGs next to each wav"
    )
    parser.add_argument("--gl-iters", type=int, help="Griffin-Lim iterations (default: the model's)")
    parser.add_argument(
        "--gl-power", type=float, help="exponent of the magnitudes for Griffin-Lim (default: the model's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of pre-net dropout and Griffin-Lim phases")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if (args.text is None) == (args.text_file is None):
        parser.print_usage(sys.stderr)
        print(f"{prog}: error: give either TEXT or --text-file", file=sys.stderr)
        return 2
    if args.text is not None and not args.output:
        print(f"{prog}: error: TEXT needs -o/--output", file=sys.stderr)
        return 2
    if args.text_file and not args.out_dir:
        print(f"{prog}: error: --text-file needs --out-dir", file=sys.stderr)
        return 2
    set_threads(args.threads)
    try:
        jobs = (
            [(args.text, Path(args.output))]
            if args.text is not None
            else [
                (line, Path(args.out_dir) / f"{i:04d}.wav")
                for i, line in enumerate(_read_lines(args.text_file), 1)
            ]
        )
        if not jobs:
            raise ValueError(f"{args.text_file} has no text")
        for text, _ in jobs:
            normalize_text(text)  # check every input before loading anything
        synthesizer = Synthesizer(
            args.model, vocoder=args.vocoder, vocoder_model=args.vocoder_model, seed=args.seed,
            postfilter=args.postfilter, candidates=args.candidates,
        )
        synthesizer.override_griffin_lim(n_iter=args.gl_iters, power=args.gl_power)
    except (ValueError, VocoderUnavailable) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    except (FileNotFoundError, OSError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    for text, path in jobs:
        try:
            result = synthesizer.synthesize_to_file(text, path, plot=args.plot)
        except ValueError as err:
            print(f"{prog}: error: {err}", file=sys.stderr)
            return 2
        log.info("wrote %s (%.2f s)", path, result.duration)
        print(f"{path}\t{result.duration:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
