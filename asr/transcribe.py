"""Speech to text: ``glottis transcribe PATH... [--model DIR] [--lm/--no-lm] [--format text|jsonl|srt]``.

Files of any length, rate and channel count are read in overlapping windows (memory stays bounded: a
1-hour file works), the CTC log-probs of the windows are stitched, cut into segments at pauses, and
each segment is decoded (greedy or beam search with the n-gram LM) and force-aligned for word times.

Python API::

    from asr import Transcriber
    result = Transcriber().transcribe("speech.wav")   # .text, .words, .duration

``--adapt all`` (or ``file``) first adapts the recogniser, without transcripts, to all the inputs (or to
each file in turn): a few passes of entropy minimisation over the audio (``asr.adapt``). It pays off on
voices and channels unlike the training data and costs 10 training passes of the acoustic model over up to
5 minutes of the audio; give it one speaker or recording condition at a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tqdm import tqdm

from asr.adapt import AdaptConfig, adapt_recognizer, supports_adaptation
from asr.align import word_timestamps
from asr.bundle import LoadedModel, load_recognizer
from asr.decode import DecoderConfig, LMBeamSearchDecoder, greedy_decode, prefix_beam_search
from audio.io import AudioError, info, load, resample
from audio.training import choose_device, set_threads

log = logging.getLogger(__name__)

__all__ = ["Transcriber", "Transcript", "Word", "find_audio_files"]

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif", ".au", ".sph"}
WINDOW_S = 30.0  # audio per forward pass
CONTEXT_S = 2.0  # extra audio on each side of a window, whose output is discarded
MAX_SEGMENT_S = 25.0  # decoded and aligned as one piece
MIN_PAUSE_FRAMES = 8  # a run of blank frames this long is a place to cut


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds
    end: float  # seconds


@dataclass(frozen=True)
class Transcript:
    path: str
    text: str
    words: list[Word] = field(default_factory=list)
    duration: float = 0.0  # seconds

    def to_json(self) -> dict:
        return {"path": self.path, "text": self.text, "words": [asdict(w) for w in self.words],
                "duration": round(self.duration, 3)}


def find_audio_files(paths: list[str]) -> Iterator[Path]:
    """Files as given, directories walked recursively for audio suffixes, in sorted order."""
    for p in map(Path, paths):
        if p.is_dir():
            yield from sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in AUDIO_SUFFIXES)
        else:
            yield p


class Transcriber:
    """A loaded recogniser plus decoder. ``use_lm=None`` uses the LM when the model has one."""

    def __init__(self, model: str | os.PathLike | None = None, *, use_lm: bool | None = None,
                 beam: int | None = None, device: str = "cpu"):
        self.device = choose_device(device)
        self.model: LoadedModel = load_recognizer(model, device=self.device)
        self.tokenizer = self.model.tokenizer
        self.sample_rate = self.model.feature_config.sample_rate
        self.frame_shift = self.model.recognizer.frame_shift
        use_lm = self.model.lm_path is not None if use_lm is None else use_lm
        if use_lm and self.model.lm_path is None:
            raise ValueError(f"{self.model.source}: this model has no language model; use --no-lm")
        tuned = {k: v for k, v in self.model.decoder.items() if k in DecoderConfig.__dataclass_fields__}
        if beam is not None:
            tuned["beam"] = beam
        self.decoder_config = DecoderConfig(**tuned)
        self.beam = beam
        self.lm_decoder = (LMBeamSearchDecoder(self.tokenizer, lm_path=self.model.lm_path,
                                               config=self.decoder_config) if use_lm else None)
        self._unadapted = self.model.recognizer

    # ------------------------------------------------------------------------------- adaptation
    def adapt(self, audio: list[str | os.PathLike | torch.Tensor], config: AdaptConfig | None = None, *,
              progress: bool = False) -> dict:
        """Adapt to ``audio`` (file paths, or ``(samples,)`` tensors at the model's rate), one speaker or
        condition, without transcripts; later ``transcribe`` calls use the adapted recogniser. Long
        files contribute an even sample of pieces, at most ``config.max_seconds`` in all. Files that
        cannot be read are skipped here (``transcribe`` reports them). Returns the adaptation report."""
        config = config or AdaptConfig()
        self.reset_adaptation()
        waves = [a.float().reshape(-1) for a in audio if isinstance(a, torch.Tensor)]
        lengths = {}
        for a in audio:
            if not isinstance(a, torch.Tensor):
                try:
                    lengths[Path(a)] = info(a).duration
                except AudioError:
                    continue
        total = sum(lengths.values())
        share = min(1.0, config.max_seconds / total) if total else 1.0
        for path, duration in lengths.items():
            n = max(1, math.ceil(share * duration / config.piece_seconds))
            step = max(0.0, duration - config.piece_seconds) / max(1, n - 1)
            for k in range(n):
                try:
                    wave, _ = load(path, self.sample_rate, start=k * step, duration=config.piece_seconds)
                except AudioError:
                    break
                waves.append(wave)
        if not waves:
            raise ValueError("nothing to adapt to: no readable audio")
        adapted, report = adapt_recognizer(self._unadapted, waves, config, progress=progress)
        self.model = replace(self.model, recognizer=adapted)
        return report

    def reset_adaptation(self) -> None:
        """Back to the recogniser as loaded."""
        self.model = replace(self.model, recognizer=self._unadapted)

    # -------------------------------------------------------------------------------- acoustics
    @torch.inference_mode()
    def log_probs(self, wave: torch.Tensor) -> torch.Tensor:
        """``(samples,)`` at the model's rate -> CTC log-probs ``(frames, vocab)``.

        Long audio runs in windows of WINDOW_S with CONTEXT_S of context on each side; the context's
        output is dropped, so the result matches one pass over the whole file up to edge effects.
        """
        return torch.cat(list(self._windows_log_probs(iter([wave]))), dim=0)

    def _windows_log_probs(self, chunks: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Consume consecutive audio chunks of any size; yield log-probs for consecutive spans."""
        sr, sub_hop = self.sample_rate, self.model.feature_config.hop_length * self.model.recognizer.subsampling
        window, context = int(WINDOW_S * sr) // sub_hop * sub_hop, int(CONTEXT_S * sr) // sub_hop * sub_hop
        buffer, emitted = torch.zeros(0), 0  # emitted: samples whose output has been yielded
        offset = 0  # absolute sample index of buffer[0]
        exhausted = False
        while not exhausted or emitted < offset + buffer.numel():
            # "<=": with the buffer exactly full, one more read tells whether this is the last span.
            while not exhausted and buffer.numel() <= (emitted - offset) + window + context:
                try:
                    buffer = torch.cat([buffer, next(chunks)])
                except StopIteration:
                    exhausted = True
            end_all = offset + buffer.numel()
            if emitted >= end_all:
                break
            span_end = min(emitted + window, end_all)
            left = max(offset, emitted - context)
            right = min(end_all, span_end + context)
            piece = buffer[left - offset : right - offset]
            lp, lengths = self.model.recognizer(piece[None].to(self.device), torch.tensor([piece.numel()],
                                                                                            device=self.device))
            lp = lp[0, : int(lengths[0])].cpu()
            first = (emitted - left) // sub_hop
            if exhausted and span_end == end_all:
                # The last span keeps every remaining frame: the centred STFT has 1 + samples // hop
                # frames, one more than ceil(samples / sub_hop) when the length divides evenly.
                yield lp[first:]
            else:
                yield lp[first : first + math.ceil((span_end - emitted) / sub_hop)]
            emitted = span_end
            drop = max(0, emitted - context - offset)
            buffer, offset = buffer[drop:], offset + drop

    # --------------------------------------------------------------------------------- decoding
    def _segments(self, log_probs: torch.Tensor) -> list[tuple[int, int]]:
        """Cut ``(frames, vocab)`` into spans of at most MAX_SEGMENT_S, at the longest pauses."""
        total = log_probs.shape[0]
        max_frames = int(MAX_SEGMENT_S / self.frame_shift)
        if total <= max_frames:
            return [(0, total)]
        blank = (log_probs.argmax(-1) == self.tokenizer.blank_id).tolist()
        spans, start = [], 0
        while total - start > max_frames:
            best, best_len, run = start + max_frames, 0, 0
            for t in range(start + max_frames // 3, start + max_frames):
                run = run + 1 if blank[t] else 0
                if run >= best_len:
                    best, best_len = t - run // 2, run
            if best_len < MIN_PAUSE_FRAMES:
                best = start + max_frames  # no pause: cut anyway (rare in speech)
            spans.append((start, best))
            start = best
        spans.append((start, total))
        return spans

    def decode(self, log_probs: torch.Tensor, duration: float | None = None) -> tuple[str, list[Word]]:
        """Text and word timings for ``(frames, vocab)`` log-probs; times are capped at ``duration``
        (seconds), as the last frame reaches up to a frame shift past the end of the audio."""
        limit = math.inf if duration is None else math.floor(duration * 1000) / 1000  # whole ms, not past the end
        texts, words = [], []
        for start, end in self._segments(log_probs):
            seg = log_probs[start:end]
            lengths = torch.tensor([seg.shape[0]])
            if self.lm_decoder is not None:
                text = self.lm_decoder(seg[None], lengths)[0].text
            elif self.beam and self.beam > 1:
                text = prefix_beam_search(seg[None], lengths, self.tokenizer, beam=self.beam)[0].text
            else:
                text = greedy_decode(seg[None], lengths, self.tokenizer)[0].text
            if not text:
                continue
            texts.append(text)
            offset = start * self.frame_shift
            for w in word_timestamps(seg, text, self.tokenizer, self.frame_shift):
                word_start, word_end = (round(min(offset + w[k], limit), 3) for k in ("start", "end"))
                words.append(Word(w["word"], word_start, word_end))
        return " ".join(texts), words

    # ----------------------------------------------------------------------------------- inputs
    def transcribe(self, audio: str | os.PathLike | torch.Tensor, sample_rate: int | None = None) -> Transcript:
        """Transcribe a file path, or a ``(samples,)`` tensor at ``sample_rate`` Hz."""
        if isinstance(audio, torch.Tensor):
            if sample_rate is None:
                raise ValueError("a waveform needs its sample_rate")
            wave = resample(audio.float().reshape(-1), sample_rate, self.sample_rate)
            if wave.numel() == 0:
                raise ValueError("cannot transcribe an empty waveform")
            duration = wave.numel() / self.sample_rate
            text, words = self.decode(self.log_probs(wave), duration)
            return Transcript("<tensor>", text, words, duration)
        path = Path(audio)
        meta = info(path)
        if meta.frames == 0:
            raise AudioError(path, "audio has zero length")
        chunks = self._read_chunks(path, meta.sample_rate, meta.duration)
        log_probs = torch.cat(list(self._windows_log_probs(chunks)), dim=0)
        text, words = self.decode(log_probs, meta.duration)
        return Transcript(str(path), text, words, meta.duration)

    def _read_chunks(self, path: Path, file_rate: int, duration: float, chunk_s: float = 60.0):
        """The file resampled to the model rate in ``chunk_s`` pieces (bounded memory)."""
        # Resampling chunk by chunk would click at the seams; read with a margin and trim it.
        margin = 0.05
        start = 0.0
        while start < duration:
            read_from = max(0.0, start - margin)
            wave, _ = load(path, self.sample_rate, start=read_from, duration=chunk_s + 2 * margin)
            skip = int(round((start - read_from) * self.sample_rate))
            keep = int(round(min(chunk_s, duration - start) * self.sample_rate))
            piece = wave[skip : skip + keep]
            if piece.numel() == 0:
                break
            yield piece
            start += chunk_s


# ------------------------------------------------------------------------------------------ output


def srt_time(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d},{ms:03d}"


def to_srt(words: list[Word], max_chars: int = 42, max_seconds: float = 6.0) -> str:
    """Subtitle cues of consecutive words, each at most ``max_chars`` long and ``max_seconds`` long."""
    cues, current = [], []
    for w in words:
        if current and (len(" ".join(x.word for x in current + [w])) > max_chars
                        or w.end - current[0].start > max_seconds):
            cues.append(current)
            current = []
        current.append(w)
    if current:
        cues.append(current)
    blocks = [f"{i}\n{srt_time(c[0].start)} --> {srt_time(c[-1].end)}\n{' '.join(w.word for w in c)}\n"
              for i, c in enumerate(cues, 1)]
    return "\n".join(blocks)


def main(argv: list[str] | None = None, prog: str = "glottis transcribe") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="Transcribe audio files with a CTC recogniser.")
    parser.add_argument("paths", nargs="+", metavar="PATH", help="audio files or folders (walked recursively)")
    parser.add_argument("--model", help="model folder or checkpoint (default: the bundled model)")
    parser.add_argument("--lm", dest="lm", action="store_true", default=None, help="beam search with the LM")
    parser.add_argument("--no-lm", dest="lm", action="store_false", help="no LM (greedy, or --beam N)")
    parser.add_argument("--beam", type=int, help="beam size (default: the model's tuned value)")
    parser.add_argument("--format", choices=["text", "jsonl", "srt"], default="text")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: one per core)")
    parser.add_argument("--adapt", choices=["none", "all", "file"], default="none",
                        help="unsupervised adaptation before decoding: to all the inputs together (one speaker or "
                             "condition), or to each file on its own (slower; see asr.adapt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    set_threads(args.threads)
    try:
        transcriber = Transcriber(args.model, use_lm=args.lm, beam=args.beam, device=args.device)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    if args.adapt != "none" and not supports_adaptation(transcriber.model.recognizer):
        print(f"{prog}: --adapt: {transcriber.model.source} is not a Conv1D+BiLSTM recogniser, the only kind "
              "that can be adapted", file=sys.stderr)
        return 2
    files = list(find_audio_files(args.paths))
    failed = []
    if args.adapt == "all" and files:
        try:
            transcriber.adapt(files, progress=True)
        except ValueError as err:  # no readable input: each file's error is reported below
            log.warning("no adaptation: %s", err)
    for path in tqdm(files, desc="transcribing", unit="file", file=sys.stderr, disable=len(files) < 2):
        try:
            if args.adapt == "file":
                try:
                    transcriber.adapt([path])
                except ValueError:  # unreadable or too short: transcribe() says which, or copes
                    pass
            result = transcriber.transcribe(path)
        except AudioError as err:
            failed.append((str(path), err.reason))
            if args.format == "jsonl":
                print(json.dumps({"path": str(path), "error": err.reason}), flush=True)
            continue
        if args.format == "jsonl":
            print(json.dumps(result.to_json(), ensure_ascii=False), flush=True)
        elif args.format == "srt":
            if len(files) > 1:
                print(f"# {path}")
            print(to_srt(result.words), flush=True)
        else:
            print(result.text if len(files) == 1 else f"{path}\t{result.text}", flush=True)
    for path, reason in failed:
        print(f"{prog}: {path}: {reason}", file=sys.stderr)
    if failed:
        print(f"{prog}: {len(failed)} of {len(files)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
