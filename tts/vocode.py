"""Copy synthesis with the WaveNet vocoder: ``glottis vocode IN.wav|MEL.npy -o out.wav [--model DIR]``.

An audio file is analysed into the vocoder's mel (the Tacotron target: ``tts.spectrogram``, the features and
dB scale stored with the model) and re-synthesised by WaveNet; a ``.npy`` file is taken as that mel
already, ``(frames, n_mels)`` in the normalised [0, 1] scale (what Tacotron predicts).

Python API::

    from tts.vocode import Vocoder
    vocoder = Vocoder()                    # the bundled model, or Vocoder("exp/vocoder_wavenet/final.pt")
    wave = vocoder.vocode(mel)             # (frames, n_mels) -> (samples,) float32 at vocoder.sample_rate
    wave = vocoder.copy_synthesis(wave)    # analysis -> mel -> WaveNet

A model folder (``python -m tts.wavenet_bundle``) holds ``model.safetensors`` (fp16), ``config.yaml`` and
``MODEL_CARD.md``; :func:`load_vocoder` reads a folder or a training checkpoint.

Exit codes: 0 success, 1 missing model, 2 bad input (unreadable file, wrong mel shape, bad arguments).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

from audio.config import from_dict
from audio.features import FeatureConfig, mel_filterbank, spectrogram
from audio.io import AudioError, load, save
from audio.training import CheckpointManager, set_threads
from tts.spectrogram import SpectrogramScale, TargetExtractor, amplitude_to_norm, mel_gate
from tts.wavenet import FastGenerator, WaveNet, WaveNetConfig, decode_classes

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_VOCODER_DIR",
    "FORMAT",
    "LoadedVocoder",
    "load_vocoder",
    "is_vocoder_bundle",
    "Vocoder",
    "mel_guide",
    "EXCESS_WEIGHT",
    "GUIDED_TEMPERATURE",
    "GUIDED_BEAMS",
    "default_beams",
    "main",
]

FORMAT = "glottis-wavenet-1"
DEFAULT_VOCODER_DIR = Path(__file__).parent / "pretrained" / "wavenet_synth_en"


@dataclass
class LoadedVocoder:
    model: WaveNet  # in eval mode, fp32
    feature_config: FeatureConfig
    scale: SpectrogramScale
    source: Path
    step: int
    temperature: float  # the sampling temperature the model was scored with (a bundle's default)


def is_vocoder_bundle(path: str | os.PathLike) -> bool:
    config = Path(path) / "config.yaml"
    if not config.is_file():
        return False
    return (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("format") == FORMAT


def _build(config: dict, state: dict[str, torch.Tensor], where: Path) -> LoadedVocoder:
    model = WaveNet(from_dict(WaveNetConfig, config["model_config"], where=f"{where}:model_config"))
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    return LoadedVocoder(
        model=model.eval(),
        feature_config=from_dict(FeatureConfig, config["feature_config"], where=f"{where}:feature_config"),
        scale=from_dict(SpectrogramScale, config["scale"], where=f"{where}:scale"),
        source=where,
        step=int(config.get("step", 0)),
        temperature=float(config.get("sampling", {}).get("temperature", 1.0)),
    )


def load_vocoder(path: str | os.PathLike | None = None) -> LoadedVocoder:
    """Load a vocoder folder (default: the bundled one) or a training checkpoint (``.pt``), on the CPU.

    Raises:
        FileNotFoundError: saying how to get a model, when there is none at ``path``.
    """
    path = Path(path) if path is not None else DEFAULT_VOCODER_DIR
    if path.is_file():
        state = CheckpointManager.load(path)
        return _build(state, state["model"], path)
    if is_vocoder_bundle(path):
        config = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        return _build(config, load_file(str(path / "model.safetensors")), path)
    if path == DEFAULT_VOCODER_DIR:
        raise FileNotFoundError(
            f"the bundled WaveNet vocoder is missing from {path}; train one with `make vocoder` and export it "
            "with `make -C recipes/synth_en vocoder-bundle`, or pass a model folder or checkpoint"
        )
    raise FileNotFoundError(f"{path}: neither a Glottis WaveNet model folder nor a checkpoint file")


# How much a guided candidate's energy *above* its mel counts against it, relative to energy it lacks.
# The mel gate cuts the excess afterwards but cannot restore what is missing, so with the gate on a
# candidate is judged mostly by what it lacks. Chosen on 48 synth_en dev sentences, 4 candidates, sampling
# seeds 0 and 1, mean MCD: weight 1 (the plain L1) 6.09 dB, 0.3 5.96, 0.1 5.86, 0 5.89 (RESULTS.md,
# session 36).
EXCESS_WEIGHT = 0.1
# The default sampling temperature of guided sampling with the mel gate on. Since the gate cuts what is
# drawn above the mel, a flatter distribution gives the guide more useful candidates: on the same 48 dev
# sentences, 4 candidates, mean MCD / round-trip CER over seeds 0 and 1: temperature 1.0 5.84 dB / 4.95%,
# 1.2 5.67 dB / 4.32%, 1.5 5.63 dB / 4.70% (RESULTS.md, session 36).
GUIDED_TEMPERATURE = 1.2
# Guided sampling with N candidates in all (N even, at least 4) runs as a beam search of this many beams
# of N / 2 draws each, rather than one chain keeping the best of N (the same compute). On the same 48 dev
# sentences at temperature 1.2, 4 candidates, MCD seeds 0 / 1: one chain 5.76 / 5.67 dB, 2 beams of 2
# 5.61 / 5.65 dB (RESULTS.md, session 36).
GUIDED_BEAMS = 2


def default_beams(candidates: int) -> int:
    """The beams :class:`Vocoder` searches with ``candidates`` draws in all: :data:`GUIDED_BEAMS` when
    they divide into beams of at least 2 draws, else 1."""
    return GUIDED_BEAMS if candidates >= 2 * GUIDED_BEAMS and candidates % GUIDED_BEAMS == 0 else 1


def mel_guide(mels: torch.Tensor, cfg: FeatureConfig, scale: SpectrogramScale, model_cfg: WaveNetConfig,
              *, excess_weight: float = 1.0):
    """The guide of :meth:`FastGenerator.generate_guided` for ``mels (B, frames, n_mels)`` (normalised,
    framed by ``cfg``): each candidate's cost is the distance between its own normalised mel and ``mels``
    over the frames whose windows its new samples complete, summed over frames and bands: what it lacks
    counts fully, what it has above ``mels`` counts ``excess_weight`` times (1: the L1 distance; the
    :class:`Vocoder` uses :data:`EXCESS_WEIGHT` when its mel gate is on). Returns ``(cost, lookback)``."""
    if excess_weight < 0:
        raise ValueError(f"excess_weight must not be negative, not {excess_weight}")
    hop, half = cfg.hop_length, cfg.n_fft // 2
    lookback = cfg.n_fft + hop  # every frame a span completes, whole
    framing, fb = replace(cfg, center=False), mel_filterbank(cfg)  # frame k: samples k * hop .. k * hop + n_fft
    targets = mels.float().clamp(0.0, 1.0)

    def cost(classes: torch.Tensor, end: int) -> torch.Tensor:
        batch, count, length = classes.shape
        offset = end - length  # the utterance's sample index of classes[..., 0]
        start = offset + lookback  # the first new sample
        first = max(0, (start - half) // hop + 1)  # the frames whose windows end among the new samples
        last = min((end - half) // hop, targets.shape[1] - 1)
        if last < first:
            return torch.zeros(batch, count)
        segment = classes[..., first * hop - half - offset : last * hop + half - offset]
        magnitude, _ = spectrogram(decode_classes(segment, model_cfg).reshape(batch * count, -1), None, framing)
        own = amplitude_to_norm(magnitude @ fb, scale)  # (B * C, T, M), as TargetExtractor's mel
        target = targets[:, first : last + 1]  # (B, T, M)
        above = own.reshape(batch, count, *target.shape[1:]) - target[:, None]  # (B, C, T, M)
        return (excess_weight * above.clamp(min=0.0) - above.clamp(max=0.0)).sum((2, 3))

    return cost, lookback


CANDIDATES_HELP = (
    "mel-guided sampling: every 2 frames draw N continuations and keep those whose mel is closest to the "
    "input's, as a beam search of 2 beams for an even N >= 4 (about N times the compute). Default 1: plain "
    "sampling"
)


class Vocoder:
    """Mel -> waveform with the compiled WaveNet generator.

    Args:
        model: a vocoder folder or checkpoint (default: the bundled vocoder).
        seed: seeds the sampling, so output is reproducible.
        temperature: divides the logits before sampling (1.0: the model's distribution). ``None`` takes
            the bundle's own (the one it was tuned and scored with; 1.0 for a training checkpoint), or
            :data:`GUIDED_TEMPERATURE` for guided sampling with the mel gate.
        postfilter: pass each output through ``tts.spectrogram.mel_gate``, which cuts what the output has
            above its mel in any band and frame (the sampling noise), and adds nothing. On 30 synth_en dev
            sentences it took the bundle's MCD from 9.33 to 7.08 dB and its round-trip CER from 10.1% to
            7.4% (RESULTS.md, session 25).
        candidates: more than 1 samples with a guide (:meth:`FastGenerator.generate_guided`): every two
            frames that many continuations are drawn, and the ones whose own mel is closest to the given
            mel over the frames it completes are kept (see ``beams``, and :func:`mel_guide`: with the mel
            gate on, energy a candidate lacks counts ten times as much as energy above the mel, which the
            gate cuts). All samples are still the network's; it costs about ``candidates`` times the
            compute (RESULTS.md, sessions 35 and 36).
        beams: search the guided spans with this many beams, each drawing ``candidates / beams``
            continuations (``None``: :func:`default_beams`; 1: keep one chain).
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        *,
        seed: int = 0,
        temperature: float | None = None,
        postfilter: bool = True,
        candidates: int = 1,
        beams: int | None = None,
    ):
        self.loaded = load_vocoder(model)
        self.postfilter = postfilter
        if candidates < 1:
            raise ValueError(f"candidates must be at least 1, not {candidates}")
        self.candidates = candidates
        self.beams = default_beams(candidates) if beams is None else beams
        if self.beams < 1 or candidates % self.beams:
            raise ValueError(f"{candidates} candidates do not split into {self.beams} beams")
        self.generator = FastGenerator(self.loaded.model)
        self.extractor = TargetExtractor(self.loaded.feature_config, self.loaded.scale)
        self.seed = seed
        if temperature is None:
            guided = candidates > 1 and postfilter
            temperature = GUIDED_TEMPERATURE if guided else self.loaded.temperature
        self.temperature = float(temperature)
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, not {self.temperature}")

    @property
    def sample_rate(self) -> int:
        return self.loaded.feature_config.sample_rate

    @property
    def n_mels(self) -> int:
        return self.loaded.feature_config.n_mels

    def mel(self, wave: torch.Tensor) -> torch.Tensor:
        """``(samples,)`` at :attr:`sample_rate` -> ``(frames, n_mels)`` normalised mel (the Tacotron target)."""
        with torch.no_grad():
            mel, _, _ = self.extractor(wave.float().unsqueeze(0))
        return mel[0]

    def vocode_batch(self, mels: list[torch.Tensor], lengths: list[int] | None = None) -> list[torch.Tensor]:
        """Several mels generated together (one batch of the compiled loop; the shorter ones are zero-padded
        and cut). ``mels[i]`` is ``(frames_i, n_mels)``; ``lengths[i]`` samples to produce (default
        ``(frames_i - 1) * hop``). Returns float32 waves."""
        hop = self.loaded.feature_config.hop_length
        for mel in mels:
            if mel.dim() != 2 or mel.shape[1] != self.n_mels or mel.shape[0] < 2:
                raise ValueError(f"expected a (frames >= 2, {self.n_mels}) mel, got shape {tuple(mel.shape)}")
        lengths = lengths or [(m.shape[0] - 1) * hop for m in mels]
        for mel, n in zip(mels, lengths, strict=True):
            if not 0 < n <= mel.shape[0] * hop:
                raise ValueError(f"cannot generate {n} samples from {mel.shape[0]} mel frames")
        frames = max(m.shape[0] for m in mels)
        batch = torch.zeros(len(mels), frames, self.n_mels)
        for i, mel in enumerate(mels):
            batch[i, : mel.shape[0]] = mel.float().clamp(0.0, 1.0)
        if self.candidates > 1:
            cost, lookback = mel_guide(batch, self.loaded.feature_config, self.loaded.scale, self.loaded.model.cfg,
                                       excess_weight=EXCESS_WEIGHT if self.postfilter else 1.0)
            classes = self.generator.generate_guided(
                batch, cost, candidates=self.candidates, beams=self.beams, lookback=lookback,
                n_samples=max(lengths), seed=self.seed, temperature=self.temperature,
            )
        else:
            classes = self.generator.generate(
                batch, n_samples=max(lengths), seed=self.seed, temperature=self.temperature
            )
        waves = [decode_classes(classes[i, :n], self.loaded.model.cfg) for i, n in enumerate(lengths)]
        if self.postfilter:
            cfg, scale = self.loaded.feature_config, self.loaded.scale
            waves = [mel_gate(w, m, cfg, scale).clamp(-1.0, 1.0) for w, m in zip(waves, mels, strict=True)]
        return waves

    def vocode(self, mel: torch.Tensor, n_samples: int | None = None) -> torch.Tensor:
        """``(frames, n_mels)`` normalised mel -> ``(samples,)`` float32 wave."""
        return self.vocode_batch([mel], None if n_samples is None else [n_samples])[0]

    def copy_synthesis(self, wave: torch.Tensor) -> torch.Tensor:
        """``(samples,)`` -> the same length of audio re-synthesised from its mel."""
        return self.vocode(self.mel(wave), n_samples=wave.shape[0])


def _read_input(path: Path, vocoder: Vocoder) -> tuple[torch.Tensor, int | None]:
    """A mel ``(frames, n_mels)`` from a ``.npy`` file or from audio, and the sample count to produce."""
    if path.suffix.lower() == ".npy":
        if not path.is_file():
            raise ValueError(f"{path}: no such file")
        try:
            mel = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as err:
            raise ValueError(f"{path}: not a readable .npy array ({err})") from None
        if mel.ndim != 2 or mel.shape[1] != vocoder.n_mels or mel.shape[0] < 2:
            raise ValueError(
                f"{path}: expected a (frames, {vocoder.n_mels}) mel spectrogram, got shape {mel.shape}"
            )
        if not np.isfinite(mel).all():
            raise ValueError(f"{path}: the mel contains NaN or infinite values")
        return torch.from_numpy(mel.astype(np.float32)), None
    wave, _ = load(path, vocoder.sample_rate)
    if wave.shape[0] < 2 * vocoder.loaded.feature_config.hop_length:
        raise ValueError(f"{path}: too short to analyse ({wave.shape[0]} samples)")
    return vocoder.mel(wave), wave.shape[0]


def main(argv: list[str] | None = None, prog: str = "glottis vocode") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Copy synthesis with the WaveNet vocoder: an audio file is analysed into its mel "
        "spectrogram and re-synthesised; a .npy file is taken as a normalised (frames, n_mels) mel, "
        "e.g. a Tacotron prediction.",
    )
    parser.add_argument("input", help="audio file (wav, flac, ...) or mel spectrogram (.npy)")
    parser.add_argument("-o", "--output", required=True, help="wav file to write")
    parser.add_argument("--model", help=f"vocoder folder or checkpoint (default: {DEFAULT_VOCODER_DIR})")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    parser.add_argument(
        "--temperature",
        type=float,
        help="softmax temperature of the sampling (default: the model's own, 1.0 for a checkpoint; "
        f"{GUIDED_TEMPERATURE} with --candidates and the post-filter)",
    )
    parser.add_argument(
        "--no-postfilter",
        dest="postfilter",
        action="store_false",
        help="keep WaveNet's raw output (default: cut the sampling noise above the mel, tts.spectrogram.mel_gate)",
    )
    parser.add_argument("--candidates", type=int, default=1, help=CANDIDATES_HELP)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if args.temperature is not None and args.temperature <= 0:
        print(f"{prog}: error: --temperature must be positive", file=sys.stderr)
        return 2
    if args.candidates < 1:
        print(f"{prog}: error: --candidates must be at least 1", file=sys.stderr)
        return 2
    set_threads(args.threads)
    try:
        vocoder = Vocoder(args.model, seed=args.seed, temperature=args.temperature, postfilter=args.postfilter,
                          candidates=args.candidates)
    except (FileNotFoundError, OSError, KeyError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 1
    try:
        mel, n_samples = _read_input(Path(args.input), vocoder)
    except (ValueError, AudioError) as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    wave = vocoder.vocode(mel, n_samples)
    seconds = time.perf_counter() - start
    save(args.output, wave, vocoder.sample_rate)
    duration = wave.shape[0] / vocoder.sample_rate
    print(f"{args.output}\t{duration:.2f} s\tRTF {seconds / max(duration, 1e-9):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
