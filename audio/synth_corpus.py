"""Build the multi-voice English corpus locally with Debian's synthesisers (espeak-ng, flite, festival).

Stages, each a real file so ``make`` resumes an interrupted build:

1. ``text``: clean English sentences from WordNet's glosses and example sentences (``wordnet-base``),
   normalised and split into disjoint train/dev/test sentence pools.
2. ``voices``: the voice table. Each voice is probed: its median pitch and a hash of its audio are stored,
   and a voice whose probe is identical to another's (a variant the engine silently ignores) is dropped.
   Train, dev and test voices are disjoint by *underlying speaker*: flite kal16 and festival kal are one
   speaker, flite slt and festival slt (HTS) are one speaker.
3. ``build``: synthesise, resample to 16 kHz mono, write manifests and ``stats.json``; plus a
   single-voice 22.05 kHz subset (festival slt) with its own sentence-disjoint train/dev/test for TTS.
4. ``extra`` (optional, after ``build``): pitch and rate variants of the training speakers' natural voices
   (flite slt, kal16 and the 8 kHz kal), reading train-pool sentences. It writes
   ``manifests/train_extra.jsonl`` and ``manifests/train_plus.jsonl`` (train + extra) and leaves the base
   corpus untouched. Only two natural speakers are in training against nearly 70 espeak ones, and the
   unseen natural voices (flite awb and rms, festival ked) are where the recogniser fails most.
5. ``variants`` (optional, after ``build``): the espeak-ng voice variants no split uses (about 60 of
   espeak's ~100: robotic, whisper and test-like ones left out), each read in two of the training accents,
   as ``manifests/train_variants.jsonl``. The base corpus has 12 training variants against 4 unseen test
   ones, and the unseen espeak test voices still err 2-3x as often as the dev ones.
6. ``accents`` (optional, after ``build``): new espeak-ng accents, each assembled from the training
   accents' parts (a phoneme table, a set of spelling rules, some phoneme replacements, a stress timing)
   with a training variant's voice quality and its formants scaled, as ``manifests/train_accents.jsonl``.
   The voice files go to ``DATA/espeak-ng/``. Training has six accents and the test split two unseen ones
   (en-us-nyc, en-gb-x-gbcwmd), whose voices err twice as often as the dev voices in the seen accents;
   neither held-out accent's parts (phoneme tables en-us-nyc and en-wm, h-dropping) are used.
7. ``foreign`` (optional, after ``build``): festival's Italian, Finnish, Czech and Hindi diphone voices
   reading English, as ``manifests/train_foreign.jsonl``. Festival's English front end (kal) gives the
   phones, durations and F0, each phone is mapped to the voice's nearest one (:data:`FOREIGN_PHONE_MAPS`),
   and the voice's diphones speak them: eight new human speakers, accented, at three pitch/rate settings.
8. ``pico`` (optional, after ``build``): SVOX Pico's two English voices (en-US and en-GB, both female, HMM
   voices trained on recordings; Apache-2.0, from the ``ttspico`` sdist on PyPI, which bundles the engine
   and its language files), each at :data:`PICO_SETTINGS` pitch/rate settings, as
   ``manifests/train_pico.jsonl``. Two more human speakers that no split has.
9. ``loan`` (optional, after ``build``): festival's Russian unit-selection voice (a man's recordings) and
   Catalan HTS voice (a woman's) reading English words put into their lexicons as loanwords, so their own
   front ends speak them, and the Czech child diphone voice read as in ``foreign``; as
   ``manifests/train_loan.jsonl``, each speaker an equal share. Three more human speakers.
10. ``picoloan`` (optional, after ``build``): Pico's German, Spanish, French and Italian voices reading English
   as X-SAMPA phoneme markup (each word's English pronunciation in the language's phones, its stress
   marked), at the ``pico`` stage's settings, as ``manifests/train_picoloan.jsonl``. Four more women.

Usage: ``python -m audio.synth_corpus {text,voices,build,extra,variants,accents,foreign,pico,loan,picoloan} --data-dir DIR [--hours 10] [--jobs 2]``
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from audio.atomic import write_json, write_lines
from audio.manifest import Utterance, read_manifest, write_manifest

log = logging.getLogger(__name__)

ASR_SAMPLE_RATE = 16000
TTS_SAMPLE_RATE = 22050
WORDNET_DIR = Path("/usr/share/wordnet")
SPLITS = ("train", "dev", "test")
# Share of the sentence pool and of the hours given to each split.
SENTENCE_SHARE = {"train": 0.90, "dev": 0.05, "test": 0.05}
HOUR_SHARE = {"train": 0.90, "dev": 0.05, "test": 0.05}
# Planned hours: durations are estimated from each voice's probe, and silence trimming makes the real
# corpus about 7% shorter than planned (10.5 planned gave 9.8 h).
ASR_HOURS = 11.2
TTS_HOURS = 2.35  # single-voice subset, all splits together
TTS_VOICE = "festival-slt"
PROBE_TEXT = "the quick brown fox jumps over the lazy dog and runs into the forest"

# --------------------------------------------------------------------------------------------- text

_ALLOWED = re.compile(r"^[A-Za-z ,;:'?!.\-]+$")
_CAPS_WORD = re.compile(r"\b[A-Z]{2,}\b")


def clean_sentence(raw: str) -> tuple[str, str] | None:
    """``(display, normalised)`` for a usable sentence, or None.

    display keeps case and the punctuation that shapes prosody (for TTS); normalised is lowercase
    a-z, apostrophe and single spaces: exactly the words every engine speaks.
    """
    s = raw.strip().strip("`'\" ").replace("`", "'").replace("''", "'")
    s = re.sub(r"\([^)]*\)", " ", s)  # parenthetical asides are often symbols or abbreviations
    s = re.sub(r"\s+", " ", s).strip(" ;:,")
    if not s or not _ALLOWED.match(s) or _CAPS_WORD.search(s):
        return None
    if "." in s.rstrip(".!?"):  # abbreviations ("Mr.", "U.S.") are read differently by each engine
        return None
    if re.search(r"(^|\s)'|'(\s|$)|--", s):  # quotation marks and dashes, not apostrophes
        return None
    words = re.sub(r"[^a-z' ]", " ", s.lower().replace("-", " ")).split()
    if not 4 <= len(words) <= 24 or any(w.strip("'") != w or len(w) > 18 for w in words):
        return None
    return s.replace("-", " "), " ".join(words)


def wordnet_sentences(wordnet_dir: Path = WORDNET_DIR) -> list[tuple[str, str]]:
    """Unique cleaned sentences from WordNet glosses and their quoted examples, in a stable order."""
    seen: dict[str, str] = {}
    for path in sorted(wordnet_dir.glob("data.*")):
        with open(path, encoding="latin-1") as f:
            for line in f:
                if line.startswith("  ") or "|" not in line:
                    continue  # licence header
                gloss = line.split("|", 1)[1]
                parts = [p.strip() for p in gloss.split(";")]
                for part in parts:
                    if part.startswith('"'):
                        for example in re.findall(r'"([^"]+)"', part):
                            cleaned = clean_sentence(example)
                            if cleaned:
                                seen.setdefault(cleaned[1], cleaned[0])
                    else:
                        cleaned = clean_sentence(part)
                        if cleaned:
                            seen.setdefault(cleaned[1], cleaned[0])
    return [(display, norm) for norm, display in seen.items()]


def sentence_split(normalised: str) -> str:
    """Assign a sentence to a split by a hash of its normalised text: stable and order-free."""
    h = int(hashlib.sha1(normalised.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    if h < SENTENCE_SHARE["train"]:
        return "train"
    return "dev" if h < SENTENCE_SHARE["train"] + SENTENCE_SHARE["dev"] else "test"


def build_text(data_dir: Path, min_word_count: int = 10) -> None:
    """Write ``text/sentences.tsv`` (split, normalised, display) of sentences made of common words.

    WordNet glosses are full of rare technical terms; keeping sentences whose every word occurs in at
    least ``min_word_count`` sentences leaves ~75k everyday sentences and a vocabulary an n-gram LM covers.
    """
    sentences = wordnet_sentences()
    if not sentences:
        raise RuntimeError(f"no sentences found under {WORDNET_DIR}: is wordnet-base installed?")
    counts = Counter(w for _, norm in sentences for w in set(norm.split()))
    sentences = [(d, n) for d, n in sentences if all(counts[w] >= min_word_count for w in n.split())]
    rows = [f"{sentence_split(norm)}\t{norm}\t{display}" for display, norm in sentences]
    write_lines(data_dir / "text" / "sentences.tsv", rows)
    counts = Counter(r.split("\t", 1)[0] for r in rows)
    log.info("wrote %d sentences (%s)", len(rows), dict(counts))


def build_lm_text(data_dir: Path) -> None:
    """``text/lm_train.txt``: every normalised sentence of the train pool, one per line.

    These are training sentences only (dev/test pools are excluded), so the LM never saw a test sentence.
    """
    pools = read_sentences(data_dir)
    write_lines(data_dir / "text" / "lm_train.txt", (norm for norm, _ in pools["train"]))
    log.info("wrote %d LM training sentences", len(pools["train"]))


def read_sentences(data_dir: Path) -> dict[str, list[tuple[str, str]]]:
    pools: dict[str, list[tuple[str, str]]] = defaultdict(list)
    with open(data_dir / "text" / "sentences.tsv", encoding="utf-8") as f:
        for line in f:
            split, norm, display = line.rstrip("\n").split("\t")
            pools[split].append((norm, display))
    return pools


# ------------------------------------------------------------------------------------------- voices


@dataclass(frozen=True)
class Voice:
    name: str  # unique, file-name safe
    engine: str  # espeak-ng | flite | festival | pico
    speaker: str  # the underlying speaker: splits are disjoint on this
    split: str
    args: tuple[str, ...] = ()  # engine-specific settings
    median_f0: float = 0.0  # Hz, from the probe
    sec_per_char: float = 0.07  # from the probe, to plan durations


ESPEAK_ACCENTS = ["en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan"]
ESPEAK_HELDOUT_ACCENTS = ["en-us-nyc", "en-gb-x-gbcwmd"]
ESPEAK_VARIANTS = {
    "train": ["m1", "m2", "m3", "m5", "m6", "f1", "f2", "f5", "klatt", "klatt2", "croak", "Andy"],
    "dev": ["m4", "f3", "klatt3"],
    "test": ["m7", "f4", "klatt4", "max"],
}
OTHER_VOICES = [
    # name, engine, speaker, split, args
    ("flite-kal16", "flite", "kal", "train", ("kal16",)),
    ("festival-kal", "festival", "kal", "train", ("voice_kal_diphone",)),
    ("flite-slt", "flite", "slt", "train", ("slt",)),
    ("festival-slt", "festival", "slt", "train", ("voice_cmu_us_slt_arctic_hts",)),
    ("flite-rms", "flite", "rms", "dev", ("rms",)),
    ("flite-awb", "flite", "awb", "test", ("awb",)),
    ("festival-ked", "festival", "ked", "test", ("voice_ked_diphone",)),
]
# The ``extra`` stage: flite's own prosody controls on the two natural training speakers. The target
# pitch moves the whole F0 contour (checked with pyin: slt 170 Hz -> 101 Hz at a target of 100), and
# duration_stretch the speaking rate. Pitch down to male range and the recogniser's VTLP on top give
# "new" speakers close to the unseen male flite voices; flite kal is the 8 kHz build of kal16.
# (festival's HTS engine ignores its -fm/-a settings, so festival voices get no variants.)
EXTRA_VARIANTS = [
    # flite voice, target F0 (Hz), duration stretch
    ("slt", 95, 1.0), ("slt", 110, 0.9), ("slt", 125, 1.1), ("slt", 140, 1.0), ("slt", 210, 0.9),
    ("slt", 240, 1.1), ("kal16", 75, 1.1), ("kal16", 110, 0.9), ("kal16", 130, 1.0), ("kal16", 150, 1.1),
    ("kal", 90, 1.0), ("kal", 120, 0.9),
]
EXTRA_HOURS = 1.5
# The ``variants`` stage: espeak-ng variant files (``espeak-ng --voices=variant``, last column) that no
# split uses. Left out: the dev/test variants and anything named like one (max, RicishayMax*), the robotic
# and effect voices (robosoft*, UniRobot, anikaRobot, announcer, Demonic), whisper, and `fast`.
ESPEAK_EXTRA_VARIANTS = [
    "adam", "Alex", "Alicia", "Andrea", "Annie", "antonio", "aunty", "belinda", "benjamin", "boris", "caleb",
    "david", "Denis", "Diogo", "ed", "edward", "edward2", "Gene", "Gene2", "gustave", "Henrique", "Hugo",
    "iven", "iven2", "iven3", "iven4", "Jacky", "john", "kaukovalta", "Lee", "linda", "marcelo", "Marco",
    "Mario", "Michael", "michel", "miguel", "Mike", "Mr", "Nguyen", "pablo", "paul", "pedro", "quincy", "rob",
    "robert", "steph", "steph2", "steph3", "Storm", "Tweaky", "zac", "anika", "AnxiousAndy", "grandpa",
    "grandma", "klatt5", "klatt6", "m8", "norbert", "sandro", "shelby", "travis", "victor",
]
VARIANTS_HOURS = 2.0


def extra_voices() -> list[Voice]:
    """The ``extra`` stage's voices: train-split variants of the flite slt and kal speakers."""
    voices = []
    for flite_voice, f0, stretch in EXTRA_VARIANTS:
        speaker = "slt" if flite_voice == "slt" else "kal"
        args = (flite_voice, "--setf", f"int_f0_target_mean={f0}", "--setf", f"duration_stretch={stretch}")
        voices.append(Voice(name=f"flite-{flite_voice}-f{f0}-d{stretch}", engine="flite", speaker=speaker,
                            split="train", args=args))
    return voices


def espeak_pitch_speed(rng: random.Random) -> tuple[int, int]:
    """An espeak-ng pitch (-p) and speed (-s) drawn from ``rng``, pitch first."""
    return rng.choice([35, 45, 50, 55, 65]), rng.choice([140, 160, 175, 190])


def espeak_voice(rng: random.Random, accent: str, variant: str, split: str) -> Voice:
    """An espeak-ng accent+variant at a pitch and speed drawn from ``rng`` (:func:`espeak_pitch_speed`)."""
    pitch, speed = espeak_pitch_speed(rng)
    return Voice(name=f"espeak-{accent}+{variant}-p{pitch}-s{speed}", engine="espeak-ng",
                 speaker=f"espeak-{accent}+{variant}", split=split,
                 args=(f"{accent}+{variant}", str(pitch), str(speed)))


def variant_voices(seed: int = 2) -> list[Voice]:
    """The ``variants`` stage's voices: each unused espeak variant in two training accents, each voice with
    its own pitch and speed."""
    rng = random.Random(seed)
    return [espeak_voice(rng, accent, variant, "train")
            for i, variant in enumerate(ESPEAK_EXTRA_VARIANTS)
            for accent in (ESPEAK_ACCENTS[i % len(ESPEAK_ACCENTS)], ESPEAK_ACCENTS[(i + 3) % len(ESPEAK_ACCENTS)])]


# The ``accents`` stage: espeak-ng accents that no espeak-ng voice file defines, assembled at random from
# the parts of the training accents' files (espeak-ng-data/lang/gmw/en*): a phoneme table, spelling-rule
# groups, 1-4 phoneme replacements and a stress timing, plus a training variant's voice quality with its
# formant frequencies scaled (one vocal-tract factor in 0.88-1.12 and a 3% jitter per formant). The held-out
# accents' own parts are not in the pools: phoneme tables en-us-nyc and en-wm, en-wm's h-dropping.
ACCENT_PHONEMES = ["en", "en-us", "en-rp", "en-sc", "en-n", "en-wi"]
ACCENT_DICTRULES = ["", "3 6", "2 5 6 7", "8", "2 5", "3"]
ACCENT_REPLACE = [
    "00 D d", "00 T t[", "00 U@ o@", "03 @ a#", "03 3 a#", "03 N n", "03 @ V", "03 I i", "03 I2 i",
    "01 aI aI2", "02 a a/", "02 u: U", "03 i I2", "00 o@ O@",
]
ACCENT_STRESS = [
    "", "175 175 175 175 220 220 250 290", "180 130 200 200 0 0 250 270",
    "160 150 180 180 220 220 290 290", "140 120 190 170 0 0 255 300",
]
ACCENT_VOICES = 96
ACCENTS_HOURS = 2.0


# The ``foreign`` stage: festival's non-English diphone voices (Debian main: Italian, Finnish, Czech and
# Hindi) reading English. Festival's English front end (the kal voice: a training speaker) gives each
# sentence's phones, durations and F0 targets; every phone is mapped to the voice's nearest one, and the
# voice's own diphones speak the result (a festival ``Segments`` utterance). The speech is accented, but
# each voice is a new human vocal tract recorded as a diphone set, the same kind of voice as the unseen
# festival ked. Phones a voice lacks map to the nearest one it has: English th/dh to t/d, for example.
_RADIO_VOWELS = "aa ae ah ao aw ax axr ay eh er ey ih iy ow oy uh uw".split()
_RADIO_CONSONANTS = "b ch d dh f g hh jh k l el m em n en nx ng p r s sh t th v w y z zh pau".split()


def _phone_map(vowels: str, consonants: str) -> dict[str, tuple[str, ...]]:
    """``vowels``/``consonants``: the target phones of :data:`_RADIO_VOWELS`/``_CONSONANTS`` in order,
    separated by commas; a target of several phones splits the duration, and an empty one drops the phone
    (its duration goes to the phone before)."""
    targets = [t.split() for t in vowels.split(",")] + [t.split() for t in consonants.split(",")]
    names = _RADIO_VOWELS + _RADIO_CONSONANTS
    assert len(targets) == len(names), (len(targets), len(names))
    return {name: tuple(t) for name, t in zip(names, targets, strict=True)}


FOREIGN_PHONE_MAPS = {
    # Italian has no /h/ (dropped) and its stressed vowels are their own phones (``a1``).
    "italian": _phone_map("a,E,a,O,a u,e,e r,a i,E,e r,e i,i,i,o u,O i,u,u",
                          "b,tS,d,d,f,g,,dZ,k,l,l,m,m,n,n,n,n,p,r,s,S,t,t,v,w,j,z,Z,#"),
    "finnish": _phone_map("a:,@,a,o:,a u,e,e r,a i,e,e r,e i,i,i:,o u,o i,u,u:",
                          "b,t S,d,d,f,g,h,d S,k,l,l,m,m,n,n,n,N,p,r,s,S,t,t,v,w,j,s,S,#"),
    "czech": _phone_map("a:,e,a,o,a u,e,e r,a j,e,e r,e j,i,i:,o u,o j,u,u:",
                        "b,c~,d,d,f,g,h,dz~,k,l,l,m,m,n,n,n,n,p,r,s,s~,t,t,v,u,j,z,z~,_"),
    # Indian English: retroflex t/d, dental th/dh.
    "hindi": _phone_map("aa,eh,a,aw,aa uh,a,a r,aa ih,ee,a r,ee,ih,iy,oo,oo ih,uh,uw",
                        "b,ch,D,dh,f,g,h,j,k,l,l,m,m,n,n,n,n,p,r,s,sh,T,th,v,w,y,j,zh,pau"),
}
FOREIGN_STRESSED = {"italian": ("i", "e", "E", "a", "o", "O", "u")}  # vowels with a stressed twin ``V1``
FOREIGN_VOICES = [
    # festival voice function, phone map, F0 factor on the kal front end's contour (~110 Hz)
    ("voice_pc_diphone", "italian", 1.0), ("voice_lp_diphone", "italian", 1.9),
    ("voice_hy_fi_mv_diphone", "finnish", 1.0), ("voice_suo_fi_lj_diphone", "finnish", 1.9),
    ("voice_czech_ph", "czech", 1.0), ("voice_czech_machac", "czech", 1.0), ("voice_czech_dita", "czech", 1.9),
    ("voice_hindi_NSK_diphone", "hindi", 1.1),
]
FOREIGN_PROSODY = [(1.0, 1.0), (0.85, 1.1), (1.2, 0.9)]  # (pitch factor, duration stretch) per voice
FOREIGN_HOURS = 2.0
FOREIGN_FRONT_END = "voice_kal_diphone"


def foreign_voices(table: list[tuple[str, str, float]] = FOREIGN_VOICES) -> list[Voice]:
    """The ``foreign`` stage's voices: each diphone voice of ``table`` (function, phone map, F0 factor)
    at each :data:`FOREIGN_PROSODY`."""
    voices = []
    for function, language, base in table:
        speaker = "festival-" + function.removeprefix("voice_")
        for pitch, stretch in FOREIGN_PROSODY:
            voices.append(Voice(name=f"{speaker}-f{pitch}-d{stretch}", engine="festival", speaker=speaker,
                                split="train", args=(function, language, f"{base * pitch:.3f}", f"{stretch}")))
    return voices


# The ``pico`` stage: (pitch %, rate %) for each of Pico's English voices. Pitch moves F0 alone (checked
# with pyin: en-US 167 Hz at 100, 83 Hz at 50); the formants stay, and the recogniser's VTLP moves those.
PICO_LANGUAGES = {"en-US": "lh", "en-GB": "kh"}  # language -> speaker (the ``*_lh0_sg.bin`` file's name)
PICO_SETTINGS = [(50, 100), (55, 90), (60, 110), (65, 100), (70, 120), (80, 95), (90, 105), (100, 100),
                 (110, 90), (125, 110), (140, 100)]
PICO_HOURS = 2.0
PICO_SAMPLE_RATE = 16000  # the engine's only output rate


def pico_voices(languages: dict[str, str] = PICO_LANGUAGES) -> list[Voice]:
    """The ``pico`` stage's voices: each Pico voice of ``languages`` (language -> speaker; the English
    ones by default) at each :data:`PICO_SETTINGS`."""
    return [Voice(name=f"pico-{language}-p{pitch}-r{rate}", engine="pico", speaker=f"pico-{speaker}",
                  split="train", args=(language, str(pitch), str(rate)))
            for language, speaker in languages.items() for pitch, rate in PICO_SETTINGS]


@functools.cache
def _pico_engine(language: str):
    """One ``ttspico.TtsEngine`` per language and process (building one loads ~1.4 MB of language files)."""
    try:
        import ttspico
    except ImportError as err:
        raise RuntimeError("the pico voices need the ttspico package: run `make setup`") from err
    return ttspico.TtsEngine(language)


def pico_synthesize(language: str, pitch: int, rate: int, items: list[tuple[str, Path]]) -> None:
    """Pico's 16 kHz 16-bit PCM for each ``(text, wav_path)``; a voice of another language reads the
    English as X-SAMPA (:func:`pico_markup`). Raises RuntimeError without ``ttspico``."""
    import soundfile as sf

    engine = _pico_engine(language)
    engine.pitch, engine.rate = pitch, rate
    texts = [text for text, _ in items]
    if language in PICO_XSAMPA_MAPS:
        texts = pico_markup(texts, language)
    for text, (_, path) in zip(texts, items, strict=True):
        pcm = engine.speak(text)
        if not pcm:
            raise RuntimeError(f"pico {language} produced no audio for {text[:40]!r}")
        sf.write(str(path), np.frombuffer(pcm, dtype=np.int16), PICO_SAMPLE_RATE, subtype="PCM_16")


# The ``loan`` stage: festival voices of other languages reading English through their own front ends.
# Each English word (festival's English lexicon, kal's) goes into the voice's lexicon as a loanword, its
# syllables and stress kept and its phones mapped to the voice's (:data:`LOAN_PHONE_MAPS`); a ``Words``
# utterance of those entries is then synthesised as the language's own text is: its own phrasing,
# durations and intonation, and the voice's own kind of synthesis. That is what lets unit selection and
# HTS voices read English, which need the full utterance structure the ``foreign`` stage's phone lists
# lack. Festival's Russian voice is unit selection over a real man's recordings, the Catalan one an HTS
# voice trained on a real woman's; the Czech child voice (krb, a diphone set) reads as the ``foreign``
# voices do.
LOAN_PHONE_MAPS = {
    # msu_ru takes phonemes (a o e i u y, consonants hard or soft) and reduces unstressed vowels itself.
    "russian": _phone_map("a,e,a,o,a u,a,a r,a j,e,e r,e j,y,i,o u,o j,u,u",
                          "b,ch,d,z,f,g,h,d zh,k,l,l,m,m,n,n,n,n g,p,r,s,sh,t,s,v,v,j,z,zh,pau"),
    # Central Catalan has no /h/ (dropped) and no /v/; its stressed vowels are their own phones (``a1``).
    "catalan": _phone_map("a,E,a,O,a w,ax,ax r,a j,E,E r,e j,i,i,o w,O j,u,u",
                          "b,t S,d,d,f,g,,d Z,k,l,l,m,m,n,n,n,n g,p,r,s,S,t,t,b,w,j,z,Z,pau"),
}
LOAN_STRESSED = {"catalan": ("a", "e", "E", "i", "o", "O", "u")}  # vowels with a stressed twin ``V1``
# msu_ru spells every word in Cyrillic before its lexicon lookup, so its entries are keyed in Cyrillic.
_CYRILLIC = dict(zip("abcdefghijklmnopqrstuvwxyz'", "абцдефгхийклмнопярстужвьызъ", strict=True))
LOAN_VOICES = [
    # (festival voice function, phone map, HTS speaking rates: clunits and diphone voices ignore rate)
    ("voice_msu_ru_nsh_clunits", "russian", (1.0,)),
    ("voice_upc_ca_ona_hts", "catalan", (1.0, 0.85, 1.2)),
]
LOAN_SEGMENT_VOICES = [("voice_czech_krb", "czech", 2.2)]  # read as the ``foreign`` stage's (F0 factor)
LOAN_HOURS = 2.0


def loan_voices() -> list[Voice]:
    """The ``loan`` stage's voices: three speakers, Russian, Catalan and a Czech child."""
    voices = []
    for function, language, rates in LOAN_VOICES:
        speaker = "festival-" + function.removeprefix("voice_")
        voices += [Voice(name=f"{speaker}-r{rate}", engine="festival", speaker=speaker, split="train",
                         args=("lexicon", function, language, f"{rate}")) for rate in rates]
    return voices + foreign_voices(LOAN_SEGMENT_VOICES)


_SYLLABLE = re.compile(r"\(\(([^()]*)\) (\d)\)")


def english_pronunciations(words: list[str]) -> dict[str, list[tuple[list[str], bool]]]:
    """Festival's English lexicon (and letter-to-sound rules) on each word: ``[(phones, stressed)]`` per
    syllable. A word it gives nothing for (``animal's``) is looked up without its apostrophes."""
    def lookup(batch: list[str]) -> list[list[tuple[list[str], bool]]]:
        script = f"({FOREIGN_FRONT_END})\n" + "".join(f"(print (lex.lookup {_scheme_string(w)}))\n" for w in batch)
        out = subprocess.run(["festival", "--pipe"], input=script, check=True, capture_output=True, text=True,
                             timeout=3600).stdout
        lines = [line for line in out.splitlines() if line.startswith("(")]
        if len(lines) != len(batch):
            raise RuntimeError(f"festival's lexicon returned {len(lines)} entries for {len(batch)} words")
        return [[(phones.split(), stress != "0") for phones, stress in _SYLLABLE.findall(line)] for line in lines]

    words = sorted(set(words))
    found = dict(zip(words, lookup(words), strict=True))
    missing = [w for w, syllables in found.items() if not syllables]
    if missing:
        found.update(zip(missing, lookup([w.replace("'", "") for w in missing]), strict=True))
    for word, syllables in found.items():
        if not syllables:
            raise RuntimeError(f"festival's English lexicon has no pronunciation for {word!r}")
    return found


def loan_entry(syllables: list[tuple[list[str], bool]], language: str) -> list[tuple[list[str], bool]]:
    """An English pronunciation in ``language``'s phones: each phone mapped, each syllable kept."""
    table, stressed = LOAN_PHONE_MAPS[language], LOAN_STRESSED.get(language, ())
    out = []
    for phones, is_stressed in syllables:
        mapped = [q for p in phones for q in table[p]]
        if is_stressed:
            mapped = [q + "1" if q in stressed else q for q in mapped]
        if mapped:
            out.append((mapped, is_stressed))
    return out


def loan_key(word: str, language: str) -> str:
    """The voice's lexicon key for an English word: letters only (Cyrillic for Russian)."""
    if language == "russian":
        return "".join(_CYRILLIC[c] for c in word)
    return word.replace("'", "q")


def _festival_loan_script(voice: Voice, items: list[tuple[str, Path]]) -> str:
    _, function, language, rate = voice.args
    texts = [text.split() for text, _ in items]
    pronunciations = english_pronunciations([w for words in texts for w in words])
    lines = [f"({function})"]
    if float(rate) != 1.0:
        lines.append(f'(set! hts_engine_params (append hts_engine_params (list (list "-r" {rate}))))')
    keys = {}
    for word, syllables in pronunciations.items():
        key = keys[word] = loan_key(word, language)
        body = " ".join(f"(({' '.join(phones)}) {int(s)})" for phones, s in loan_entry(syllables, language))
        lines.append(f"(lex.add.entry '({_scheme_string(key)} nil ({body})))")
    for words, (_, path) in zip(texts, items, strict=True):
        names = " ".join(_scheme_string(keys[w]) for w in words)
        lines.append(f"(utt.save.wave (utt.synth (eval (list 'Utterance 'Words '({names})))) "
                     f"{_scheme_string(str(path))} 'riff)")
    return "\n".join(lines) + "\n"


# The ``picoloan`` stage: Pico's German, Spanish, French and Italian voices (four more women) reading
# English through X-SAMPA phoneme markup: festival's English pronunciation of each word, its phones mapped
# to the language's (:data:`PICO_XSAMPA_MAPS`: only symbols the voice speaks, checked by a test) and its
# stressed syllables marked, so Pico's own prosody speaks it. Pico skips a symbol it lacks without a word.
PICO_LOAN_LANGUAGES = {"de-DE": "gl", "es-ES": "zl", "fr-FR": "nk", "it-IT": "cm"}
PICO_XSAMPA_MAPS = {
    # German: no /th/ or /w/ (s, v), English r as the uvular R, the vocalic r of "-er" as 6.
    "de-DE": _phone_map("a:,E,a,O,aU,@,6,aI,E,9 6,eI,I,i:,oU,OY,U,u:",
                        "b,tS,d,d,f,g,h,dZ,k,l,l,m,m,n,n,n,N,p,R,s,S,t,s,v,v,j,z,Z,"),
    # Spanish: five vowels, no /v z sh zh/ (b s tS jj), /w/ as u; its own T and D serve th and dh.
    "es-ES": _phone_map("a,e,a,o,a u,a,e r,a i,e,e r,e i,i,i,o u,o i,u,u",
                        "b,tS,d,D,f,g,x,dZ,k,l,l,m,m,n,n,n,N,p,r,s,tS,t,T,b,u,j,s,jj,"),
    # French: no /h/ (dropped) or schwa symbol the voice speaks (2), th and dh as s and z.
    "fr-FR": _phone_map("a,E,9,O,a u,2,9 R,a j,E,9 R,e j,i,i,o u,O j,u,u",
                        "b,tS,d,z,f,g,,dZ,k,l,l,m,m,n,n,n,N,p,R,s,S,t,s,v,w,j,z,Z,"),
    # Italian: no /h/ (dropped), schwa as e, /w/ and /j/ as u and i, zh as dZ.
    "it-IT": _phone_map("a,E,a,o,a u,e,e r,a i,E,e r,e i,i,i,o u,o i,u,u",
                        "b,tS,d,d,f,g,,dZ,k,l,l,m,m,n,n,n,N,p,r,s,S,t,t,v,u,i,z,dZ,"),
}
PICO_LOAN_HOURS = 2.0


def pico_loan_voices() -> list[Voice]:
    """The ``picoloan`` stage's voices: each other-language Pico voice at each :data:`PICO_SETTINGS`."""
    return pico_voices(PICO_LOAN_LANGUAGES)


def xsampa_word(syllables: list[tuple[list[str], bool]], language: str) -> str:
    """One English word in ``language``'s X-SAMPA: the first stressed syllable marked primary (``"``),
    later ones secondary (``%``)."""
    table, out, stressed_yet = PICO_XSAMPA_MAPS[language], [], False
    for phones, stressed in syllables:
        mapped = "".join(q for p in phones for q in table[p])
        if mapped:
            out.append(("%" if stressed_yet else '"') * stressed + mapped)
            stressed_yet |= stressed
    return "".join(out)


def pico_markup(texts: list[str], language: str) -> list[str]:
    """Each English text as Pico phoneme markup, word by word, in ``language``'s X-SAMPA."""
    pronunciations = english_pronunciations([w for text in texts for w in text.split()])
    return [" ".join(f"<phoneme alphabet=\"xsampa\" ph='{xsampa_word(pronunciations[w], language)}'/>"
                     for w in text.split()) for text in texts]


_FRONT_END_SCHEME = """(define (glottis-segments text)
  (let ((utt (eval (list 'Utterance 'Text text))))
    (Initialize utt) (Text utt) (Token_POS utt) (Token utt) (POS utt) (Phrasify utt) (Word utt)
    (Pauses utt) (Intonation utt) (PostLex utt) (Duration utt) (Int_Targets utt)
    (mapcar (lambda (seg)
              (format t "%s %f %s" (item.name seg) (item.feat seg 'end)
                      (item.feat seg "R:SylStructure.parent.stress"))
              (mapcar (lambda (tg) (format t " %f:%f" (item.feat tg 'pos) (item.feat tg 'f0)))
                      (item.relation.daughters seg 'Target))
              (format t "\\n"))
            (utt.relation.items utt 'Segment))
    (format t "EOU\\n")))
"""


def english_segments(texts: list[str]) -> list[list[tuple[str, float, bool, list[tuple[float, float]]]]]:
    """Festival's English front end on each text: ``(phone, end s, stressed, [(time s, F0 Hz)])`` lists."""
    script = f"({FOREIGN_FRONT_END})\n{_FRONT_END_SCHEME}" + "".join(
        f"(glottis-segments {_scheme_string(t)})\n" for t in texts)
    out = subprocess.run(["festival", "--pipe"], input=script, check=True, capture_output=True, text=True,
                         timeout=3600).stdout
    utts, cur = [], []
    for line in out.splitlines():
        parts = line.split()
        if parts == ["EOU"]:
            utts.append(cur)
            cur = []
        elif len(parts) >= 3 and re.fullmatch(r"[0-9.]+", parts[1]):
            targets = [tuple(float(x) for x in p.split(":")) for p in parts[3:]]
            cur.append((parts[0], float(parts[1]), parts[2] == "1", targets))
    if len(utts) != len(texts):
        raise RuntimeError(f"festival's front end returned {len(utts)} utterances for {len(texts)} texts")
    return utts


def foreign_segments(segments, language: str, f0_factor: float, stretch: float) -> list:
    """Map one utterance's English segments onto a foreign voice: ``[phone, duration, [(time, F0)]]``.

    A ``Segments`` utterance times each F0 target from the start of its segment, so the front end's
    absolute times are made relative to the (sub-)phone that holds them."""
    table, stressed = FOREIGN_PHONE_MAPS[language], FOREIGN_STRESSED.get(language, ())
    out, start = [], 0.0
    for name, end, is_stressed, targets in segments:
        duration = (end - start) * stretch
        offsets = [((t - start) * stretch, f0 * f0_factor) for t, f0 in targets]
        start = end
        phones = table[name]
        if not phones:
            if out:
                out[-1][2] += [(out[-1][1] + t, f0) for t, f0 in offsets]
                out[-1][1] += duration
            continue
        if is_stressed:
            phones = tuple(p + "1" if p in stressed else p for p in phones)
        part = duration / len(phones)
        for i, phone in enumerate(phones):
            last = i == len(phones) - 1
            points = [(max(0.0, t - i * part), f0) for t, f0 in offsets
                      if t >= i * part and (last or t < (i + 1) * part)]
            out.append([phone, part, points])
    return out


def _scheme_string(text: str) -> str:
    return '"' + text.replace("\\", "").replace('"', "") + '"'


def _festival_foreign_script(voice: Voice, items: list[tuple[str, Path]]) -> str:
    function, language, f0_factor, stretch = voice.args
    lines = [f"({function})"]
    for (_, path), segments in zip(items, english_segments([t for t, _ in items]), strict=True):
        body = " ".join(f"({p} {d:.4f}" + "".join(f" ({t:.4f} {f:.1f})" for t, f in pts) + ")"
                        for p, d, pts in foreign_segments(segments, language, float(f0_factor), float(stretch)))
        lines.append(f"(utt.save.wave (utt.synth (eval (list 'Utterance 'Segments '({body})))) "
                     f"{_scheme_string(str(path))} 'riff)")
    return "\n".join(lines) + "\n"


def espeak_data_dir() -> Path:
    """espeak-ng's data folder, as ``espeak-ng --version`` reports it."""
    out = subprocess.run(["espeak-ng", "--version"], check=True, capture_output=True, text=True).stdout
    match = re.search(r"Data at:\s*(\S+)", out)
    if match is None:
        raise RuntimeError(f"cannot find espeak-ng's data folder in {out!r}")
    return Path(match.group(1))


def accent_file(rng: random.Random, index: int, variant_lines: list[str]) -> str:
    """The text of one assembled espeak-ng voice file (see :data:`ACCENT_PHONEMES`)."""
    lines = [f"name glottis accent {index}", f"language en-x-glottis{index:03d}", "language en 20",
             f"phonemes {rng.choice(ACCENT_PHONEMES)}"]
    rules = rng.choice(ACCENT_DICTRULES)
    if rules:
        lines.append(f"dictrules {rules}")
    stress = rng.choice(ACCENT_STRESS)
    if stress:
        lines.append(f"stressLength {stress}")
    lines += [f"replace {r}" for r in rng.sample(ACCENT_REPLACE, rng.randint(1, 4))]
    tract = rng.uniform(0.88, 1.12)
    formants = {}
    for line in variant_lines:
        parts = line.split()
        if parts and parts[0] == "formant" and len(parts) == 5:
            formants[int(parts[1])] = [int(p) for p in parts[2:]]
        elif parts and parts[0] not in ("language", "name", "gender"):
            lines.append(" ".join(parts))
    for k in range(1, 6):
        freq, height, width = formants.get(k, [100, 100, 100])
        freq = round(freq * tract * rng.uniform(0.97, 1.03))
        lines.append(f"formant {k} {freq} {height} {width}")
    lines += [f"formant {k} {' '.join(map(str, v))}" for k, v in sorted(formants.items()) if not 1 <= k <= 5]
    return "\n".join(lines) + "\n"


def write_accent_root(root: Path, count: int = ACCENT_VOICES, seed: int = 3) -> list[tuple[str, str]]:
    """An espeak-ng data folder at ``root/espeak-ng-data`` (links to the system one) with ``count``
    assembled accents in ``lang/glottis``. Returns ``(voice name, variant)`` pairs; the same ``seed`` always
    writes the same files."""
    system = espeak_data_dir()
    data = root / "espeak-ng-data"
    (data / "lang").mkdir(parents=True, exist_ok=True)
    for entry in system.iterdir():
        if entry.name != "lang" and not (data / entry.name).exists():
            (data / entry.name).symlink_to(entry)
    # Only the English (West Germanic) voices: espeak-ng lists at most 349 voices, all languages come to 250.
    if not (data / "lang" / "gmw").exists():
        (data / "lang" / "gmw").symlink_to(system / "lang" / "gmw")
    rng = random.Random(seed)
    pool = [v for v in ESPEAK_VARIANTS["train"] + ESPEAK_EXTRA_VARIANTS if (system / "voices" / "!v" / v).is_file()]
    accents = []
    for i in range(count):
        variant = pool[i % len(pool)]
        variant_path = system / "voices" / "!v" / variant
        variant_lines = variant_path.read_text(encoding="utf-8", errors="replace").splitlines()
        write_lines(data / "lang" / "glottis" / f"en-x-glottis{i:03d}",
                    accent_file(rng, i, variant_lines).splitlines())
        accents.append((f"en-x-glottis{i:03d}", variant))
    return accents


def accent_voices(data_dir: Path, seed: int = 3) -> list[Voice]:
    """The ``accents`` stage's voices, one per assembled accent, each at its own pitch and speed."""
    root = data_dir / "espeak-ng"
    rng = random.Random(seed)
    voices = []
    for name, variant in write_accent_root(root, seed=seed):
        pitch, speed = espeak_pitch_speed(rng)
        accent = name.removeprefix("en-x-")
        voices.append(Voice(name=f"espeak-{accent}-{variant}-p{pitch}-s{speed}", engine="espeak-ng",
                            speaker=f"espeak-{accent}", split="train",
                            args=(name, str(pitch), str(speed), str(root))))
    return voices


def candidate_voices(seed: int = 0) -> list[Voice]:
    """Every espeak accent x variant (with a pitch/speed setting each) plus the flite and festival voices."""
    rng = random.Random(seed)
    voices = []
    combos = {
        "train": [(a, v) for a in ESPEAK_ACCENTS for v in ESPEAK_VARIANTS["train"]],
        "dev": [(a, v) for a in ESPEAK_ACCENTS[:2] for v in ESPEAK_VARIANTS["dev"]],
        "test": [(a, v) for a in ESPEAK_HELDOUT_ACCENTS for v in ESPEAK_VARIANTS["test"]],
    }
    for split, pairs in combos.items():
        voices += [espeak_voice(rng, accent, variant, split) for accent, variant in pairs]
    voices += [Voice(name=n, engine=e, speaker=s, split=sp, args=a) for n, e, s, sp, a in OTHER_VOICES]
    return voices


def _festival_script(voice: Voice, items: list[tuple[str, Path]]) -> str:
    if voice.args[0] == "lexicon":  # a voice reading English as loanwords (the ``loan`` stage)
        return _festival_loan_script(voice, items)
    if len(voice.args) > 1:  # a foreign voice (the ``foreign`` stage)
        return _festival_foreign_script(voice, items)
    lines = [
        f"({voice.args[0]})",
        "(define (synth_to text file)"
        " (utt.save.wave (utt.synth (eval (list 'Utterance 'Text text))) file 'riff))",
    ]
    lines += [f"(synth_to {_scheme_string(text)} {_scheme_string(str(path))})" for text, path in items]
    return "\n".join(lines) + "\n"


def synthesize_raw(voice: Voice, items: list[tuple[str, Path]]) -> None:
    """Synthesise each ``(text, wav_path)`` at the engine's native rate. Raises on engine failure."""
    if voice.engine == "espeak-ng":
        name, pitch, speed, *data_root = voice.args  # data_root: an espeak-ng --path (the accents stage)
        path_args = ["--path", data_root[0]] if data_root else []
        for text, path in items:
            cmd = ["espeak-ng", *path_args, "-v", name, "-p", pitch, "-s", speed, "-w", str(path), text]
            subprocess.run(cmd, check=True, capture_output=True)
    elif voice.engine == "flite":
        for text, path in items:
            cmd = ["flite", "-voice", voice.args[0], *voice.args[1:], "-t", text, "-o", str(path)]
            subprocess.run(cmd, check=True, capture_output=True)
    elif voice.engine == "festival":
        with tempfile.NamedTemporaryFile("w", suffix=".scm", delete=False) as f:
            f.write(_festival_script(voice, items))
        try:
            subprocess.run(["festival", "-b", f.name], check=True, capture_output=True, timeout=3600)
        finally:
            os.unlink(f.name)
    elif voice.engine == "pico":
        language, pitch, rate = voice.args
        pico_synthesize(language, int(pitch), int(rate), items)
    else:
        raise ValueError(f"unknown engine {voice.engine!r}")


def probe_voice(voice: Voice) -> tuple[Voice, str] | None:
    """Synthesise the probe sentence; return the voice with pitch and rate filled in, and an audio hash."""
    import librosa
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.wav"
        try:
            synthesize_raw(voice, [(PROBE_TEXT, path)])
            wave, sr = sf.read(str(path), dtype="float32")
        except (subprocess.CalledProcessError, RuntimeError, OSError) as err:
            log.warning("voice %s failed its probe: %s", voice.name, err)
            return None
    if wave.ndim > 1:
        wave = wave.mean(axis=1)
    if len(wave) < sr * 0.5 or np.abs(wave).max() < 1e-3:
        log.warning("voice %s produced no usable audio", voice.name)
        return None
    frame = 2048 if sr > 24000 else 1024
    f0 = librosa.yin(wave, fmin=60, fmax=500, sr=sr, frame_length=frame, hop_length=frame // 4)
    rms = librosa.feature.rms(y=wave, frame_length=frame, hop_length=frame // 4)[0][: len(f0)]
    voiced = rms > 0.1 * rms.max()  # yin reports a pitch everywhere; count the loud frames only
    median_f0 = float(np.median(f0[voiced])) if voiced.any() else 0.0
    digest = hashlib.sha1(np.round(wave, 4).tobytes()).hexdigest()
    probed = Voice(**{**asdict(voice), "args": voice.args, "median_f0": round(median_f0, 1),
                      "sec_per_char": len(wave) / sr / len(PROBE_TEXT)})
    return probed, digest


def compile_pitch_tracker() -> None:
    """Run ``librosa.yin`` once in this process, on the dtype ``probe_voice`` gives it. librosa's numba
    kernels compile on first use and write numba's on-disk cache; worker processes that all compile at
    once can leave that cache corrupt, and a later process that loads it crashes (a segfault in the yin
    kernel, seen in ``make test`` after ``make data JOBS=2``). Compiled here first, the forked workers
    inherit the kernels and write nothing."""
    import librosa

    noise = np.random.default_rng(0).standard_normal(4096).astype(np.float32)
    librosa.yin(noise, fmin=60, fmax=500, sr=16000, frame_length=1024, hop_length=256)


def build_voices(data_dir: Path, jobs: int) -> None:
    candidates = candidate_voices()
    kept, seen = [], {}
    if jobs > 1:
        compile_pitch_tracker()
    with ProcessPoolExecutor(jobs) as pool:
        for voice, result in zip(candidates, pool.map(probe_voice, candidates), strict=True):
            if result is None:
                continue
            probed, digest = result
            if digest in seen:
                log.warning("dropping %s: identical to %s (variant ignored by the engine)", voice.name,
                            seen[digest])
                continue
            seen[digest] = voice.name
            kept.append(probed)
    by_split = defaultdict(set)
    for v in kept:
        by_split[v.split].add(v.speaker)
    assert not (by_split["train"] & (by_split["dev"] | by_split["test"])), "speaker leak across splits"
    write_json(data_dir / "voices.json", [asdict(v) for v in kept])
    log.info("kept %d of %d voices: %s", len(kept), len(candidates),
             {s: len([v for v in kept if v.split == s]) for s in SPLITS})


def read_voices(data_dir: Path) -> list[Voice]:
    with open(data_dir / "voices.json", encoding="utf-8") as f:
        return [Voice(**{**v, "args": tuple(v["args"])}) for v in json.load(f)]


# -------------------------------------------------------------------------------------------- build


def wav_name(uid: str, voice: Voice, text: str) -> str:
    """The digest ties a file to what it says, so a changed plan never reuses a stale file."""
    return f"{uid}_{hashlib.sha1(f'{voice.name}|{text}'.encode()).hexdigest()[:8]}.wav"


@dataclass
class Job:
    """One voice synthesising a chunk of sentences; done when every output file exists."""

    voice: Voice
    # (utt_id, text to speak, output path, sample rate) for each output; an item may have two outputs
    items: list[tuple[str, str, list[tuple[Path, int]]]] = field(default_factory=list)

    def done(self) -> bool:
        return all(p.exists() for _, _, outs in self.items for p, _ in outs)


class JobPlanner:
    """Groups planned items into jobs of one voice and at most ``chunk`` items each, in planning order."""

    def __init__(self, chunk: int):
        self.chunk = chunk
        self.jobs: list[Job] = []
        self._open: dict[str, Job] = {}  # voice name -> the job still taking items

    def add(self, voice: Voice, uid: str, text: str, outs: list[tuple[Path, int]]) -> None:
        job = self._open.get(voice.name)
        if job is None or len(job.items) >= self.chunk:
            job = self._open[voice.name] = Job(voice)
            self.jobs.append(job)
        job.items.append((uid, text, outs))


def run_job(job: Job) -> list[str]:
    """Synthesise a job's missing items, resample and write them atomically. Returns failed utt ids."""
    import soundfile as sf
    import torch

    from audio.io import resample, save

    torch.set_num_threads(1)
    todo = [it for it in job.items if not all(p.exists() for p, _ in it[2])]
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        raw = [(text, Path(tmp) / f"{uid}.wav") for uid, text, _ in todo]
        try:
            synthesize_raw(job.voice, raw)
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, RuntimeError) as err:
            log.warning("%s: engine failed on a chunk (%s); retrying one by one", job.voice.name, err)
            for pair in raw:
                try:
                    synthesize_raw(job.voice, [pair])
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired, RuntimeError):
                    pass
        for (uid, _, outs), (_, raw_path) in zip(todo, raw, strict=True):
            try:
                data, sr = sf.read(str(raw_path), dtype="float32", always_2d=True)
            except (RuntimeError, OSError):
                failed.append(uid)
                continue
            wave = torch.from_numpy(data.mean(axis=1))
            wave = trim_silence(wave, sr)
            if wave.numel() < sr // 4:
                failed.append(uid)
                continue
            peak = wave.abs().max().clamp_min(1e-4)
            wave = wave * (0.9 / peak)  # the engines' levels differ by 20 dB; training adds random gain
            for path, rate in outs:
                save(path, resample(wave, sr, rate), rate)
    return failed


def trim_silence(wave, sample_rate: int, *, threshold_db: float = -45.0, keep_s: float = 0.1):
    """Trim leading/trailing silence below ``threshold_db`` of the peak, keeping ``keep_s`` of margin."""
    import torch

    frame = max(1, sample_rate // 100)
    n = wave.numel() // frame
    if n == 0:
        return wave
    energy = wave[: n * frame].reshape(n, frame).pow(2).mean(dim=1)
    level = 10 * torch.log10(energy / energy.max().clamp_min(1e-12) + 1e-12)
    voiced = torch.nonzero(level > threshold_db).flatten()
    if voiced.numel() == 0:
        return wave[:0]
    keep = int(keep_s * sample_rate)
    start = max(0, int(voiced[0]) * frame - keep)
    end = min(wave.numel(), (int(voiced[-1]) + 1) * frame + keep)
    return wave[start:end]


def plan_jobs(data_dir: Path, hours: float, tts_hours: float, chunk: int = 40, seed: int = 0):
    """Assign sentences to voices until each split reaches its share of ``hours``.

    Returns ``(jobs, asr_records, tts_records)`` where the records are planned manifests (durations are
    filled in after synthesis). Every sentence is spoken once per corpus (ASR or TTS), and the single
    TTS voice reads train sentences for TTS-train and dev/test sentences for TTS-dev/test, so no TTS test
    sentence is in any training set.
    """
    rng = random.Random(seed)
    pools = {}
    for split, sentences in read_sentences(data_dir).items():
        rng.shuffle(sentences)
        # TTS takes sentences from the right end and ASR from the left, so asking for more hours of
        # either only appends to the plan: a larger build reuses every file of a smaller one.
        pools[split] = deque(sentences)
    voices = read_voices(data_dir)
    tts_voice = next(v for v in voices if v.name == TTS_VOICE)
    out = data_dir / "wav"
    planner = JobPlanner(chunk)
    asr, tts = defaultdict(list), defaultdict(list)

    # The TTS subset first: it takes sentences from each pool in proportion.
    tts_share = {"train": 0.90, "dev": 0.05, "test": 0.05}
    for split in SPLITS:
        budget = tts_hours * 3600 * tts_share[split]
        while budget > 0 and pools[split]:
            norm, display = pools[split].pop()
            uid = f"tts_{split}_{len(tts[split]):05d}"
            wav22 = out / "tts" / split / wav_name(uid, tts_voice, display)
            outs = [(wav22, TTS_SAMPLE_RATE)]
            # A slice of TTS-train also serves ASR training, as any train voice would.
            if split == "train" and len(tts[split]) % 6 == 0:
                outs.append((out / "asr" / "train" / tts_voice.name / wav_name(uid, tts_voice, display),
                             ASR_SAMPLE_RATE))
                asr["train"].append((uid, norm, tts_voice, outs[1][0]))
            planner.add(tts_voice, uid, display, outs)
            tts[split].append((uid, norm, display, tts_voice, wav22))
            budget -= len(norm) * tts_voice.sec_per_char

    for split in SPLITS:
        split_voices = [v for v in voices if v.split == split]
        budget = hours * 3600 * HOUR_SHARE[split]
        budget -= sum(len(n) * v.sec_per_char for _, n, v, _ in asr[split])
        i = 0
        while budget > 0:
            if not pools[split]:
                log.warning("%s: ran out of sentences with %.2f h still to plan", split, budget / 3600)
                break
            norm, display = pools[split].popleft()
            voice = split_voices[i % len(split_voices)]
            i += 1
            uid = f"{split}_{len(asr[split]):06d}"
            path = out / "asr" / split / voice.name / wav_name(uid, voice, norm)
            planner.add(voice, uid, norm, [(path, ASR_SAMPLE_RATE)])
            asr[split].append((uid, norm, voice, path))
            budget -= len(norm) * voice.sec_per_char
    return planner.jobs, asr, tts


def run_jobs(job_list: list[Job], jobs: int) -> set[str]:
    """Run the jobs not done yet on ``jobs`` processes; return the ids of utterances that failed."""
    from tqdm import tqdm

    todo = [j for j in job_list if not j.done()]
    log.info("%d synthesis jobs, %d still to run (%d workers)", len(job_list), len(todo), jobs)
    failed: list[str] = []
    # Slow engines first, so the pool does not end on one long festival job.
    todo.sort(key=lambda j: (j.voice.engine != "festival", -len(j.items)))
    with ProcessPoolExecutor(jobs) as pool:
        futures = [pool.submit(run_job, j) for j in todo]
        for fut in tqdm(as_completed(futures), total=len(futures), desc="synthesising", unit="job"):
            failed += fut.result()
    if failed:
        log.warning("%d utterances failed to synthesise and are left out: %s", len(failed), failed[:20])
    return set(failed)


def _record(uid: str, text: str, voice: Voice, path: Path, manifest_dir: Path,
            failed: set[str]) -> Utterance | None:
    import soundfile as sf

    if uid in failed or not path.exists():
        return None
    meta = sf.info(str(path))
    return Utterance(id=uid, audio=os.path.relpath(path, manifest_dir), text=text, speaker=voice.speaker,
                     duration=round(meta.frames / meta.samplerate, 3), sample_rate=meta.samplerate,
                     engine=voice.engine, voice=voice.name)


def build(data_dir: Path, hours: float, tts_hours: float, jobs: int) -> None:
    start = time.time()
    job_list, asr, tts = plan_jobs(data_dir, hours, tts_hours)
    failed_set = run_jobs(job_list, jobs)
    manifests = data_dir / "manifests"
    stats: dict = {"asr": {}, "tts": {}, "build_seconds": None}
    for split in SPLITS:
        recs = [r for r in (_record(u, n, v, p, manifests, failed_set) for u, n, v, p in asr[split]) if r]
        write_manifest(manifests / f"{split}.jsonl", recs)
        stats["asr"][split] = split_stats(recs)
        trecs = [r for r in (_record(u, d, v, p, manifests / "tts", failed_set) for u, _, d, v, p in tts[split])
                 if r]
        write_manifest(manifests / "tts" / f"{split}.jsonl", trecs)
        stats["tts"][split] = split_stats(trecs)
    stats["asr"]["total_hours"] = round(sum(stats["asr"][s]["hours"] for s in SPLITS), 3)
    stats["asr"]["total_voices"] = sum(stats["asr"][s]["voices"] for s in SPLITS)
    stats["tts"]["voice"] = TTS_VOICE
    stats["tts"]["total_hours"] = round(sum(stats["tts"][s]["hours"] for s in SPLITS), 3)
    stats["failed"] = sorted(failed_set)
    stats["build_seconds"] = round(time.time() - start, 1)
    write_json(data_dir / "stats.json", stats)
    log.info("corpus: %.2f h ASR over %d voices, %.2f h TTS, in %.0f s", stats["asr"]["total_hours"],
             stats["asr"]["total_voices"], stats["tts"]["total_hours"], stats["build_seconds"])


@dataclass(frozen=True)
class ExtraSet:
    """An optional stage of training voices added after ``build``, with its own manifest."""

    voices: Callable[[Path], list[Voice]]  # from the corpus folder
    hours: float  # default planned hours
    prefix: str  # utterance ids: f"{prefix}_{index:06d}"
    seed: int  # shuffles the train-pool sentences
    strict: bool  # a voice failing its probe is an error (else it is left out, with a warning)
    by_speaker: bool = False  # sentences go round the speakers, then each speaker's voices (else the voices)


EXTRA_SETS = {
    "extra": ExtraSet(lambda _: extra_voices(), EXTRA_HOURS, "trainx", seed=1, strict=True),
    "variants": ExtraSet(lambda _: variant_voices(), VARIANTS_HOURS, "trainv", seed=2, strict=False),
    "accents": ExtraSet(accent_voices, ACCENTS_HOURS, "traina", seed=3, strict=False),
    "foreign": ExtraSet(lambda _: foreign_voices(), FOREIGN_HOURS, "trainf", seed=4, strict=False),
    "pico": ExtraSet(lambda _: pico_voices(), PICO_HOURS, "trainp", seed=5, strict=True),
    "loan": ExtraSet(lambda _: loan_voices(), LOAN_HOURS, "trainl", seed=6, strict=True, by_speaker=True),
    "picoloan": ExtraSet(lambda _: pico_loan_voices(), PICO_LOAN_HOURS, "trainq", seed=7, strict=True),
}


def plan_extra_jobs(data_dir: Path, hours: float, chunk: int = 40, name: str = "extra"):
    """Jobs and planned records for an optional stage (:data:`EXTRA_SETS`): train-pool sentences,
    round-robin over its voices, until ``hours`` (estimated from each voice's probe) are planned.
    A voice whose probe sounds exactly like another's (a variant the engine ignores) is left out."""
    extra = EXTRA_SETS[name]
    rng = random.Random(extra.seed)
    sentences = read_sentences(data_dir)["train"]
    rng.shuffle(sentences)
    voices, digests = [], set()
    for voice in extra.voices(data_dir):
        result = probe_voice(voice)
        if result is None:
            if extra.strict:
                raise RuntimeError(f"{name} voice {voice.name} produced no audio: is {voice.engine} installed?")
            continue
        if result[1] in digests:
            log.warning("%s voice %s sounds like another one: left out", name, voice.name)
            continue
        digests.add(result[1])
        voices.append(result[0])
    if not voices:
        raise RuntimeError(f"no {name} voice produced audio")
    out = data_dir / "wav" / "asr" / f"train_{name}"
    planner = JobPlanner(chunk)
    records = []
    budget = hours * 3600
    turns = voices
    if extra.by_speaker:  # every speaker its share, however many voices it has
        per_speaker = defaultdict(list)
        for voice in voices:
            per_speaker[voice.speaker].append(voice)
        groups = list(per_speaker.values())
        turns = [group[(i // len(groups)) % len(group)] for i in range(len(groups) * math.lcm(*map(len, groups)))
                 for group in [groups[i % len(groups)]]]
    for i, (norm, _) in enumerate(sentences):
        if budget <= 0:
            break
        voice = turns[i % len(turns)]
        uid = f"{extra.prefix}_{i:06d}"
        path = out / voice.name / wav_name(uid, voice, norm)
        planner.add(voice, uid, norm, [(path, ASR_SAMPLE_RATE)])
        records.append((uid, norm, voice, path))
        budget -= len(norm) * voice.sec_per_char
    return planner.jobs, records


def build_extra(data_dir: Path, hours: float | None, jobs: int, name: str = "extra") -> None:
    """An optional stage: synthesise, then write ``train_<name>.jsonl`` and ``<name>_stats.json`` (written
    last: the stage is done). The ``extra`` stage also writes ``train_plus.jsonl``: the base train manifest
    followed by its own."""
    start = time.time()
    manifests = data_dir / "manifests"
    base = manifests / "train.jsonl"
    if not base.exists():
        raise FileNotFoundError(f"{base}: build the base corpus first (`synth_corpus build`)")
    job_list, planned = plan_extra_jobs(data_dir, EXTRA_SETS[name].hours if hours is None else hours, name=name)
    failed = run_jobs(job_list, jobs)
    recs = [r for r in (_record(u, n, v, p, manifests, failed) for u, n, v, p in planned) if r]
    write_manifest(manifests / f"train_{name}.jsonl", recs)
    if name == "extra":
        write_manifest(manifests / "train_plus.jsonl", read_manifest(base) + recs)
    stats = {name: split_stats(recs), "failed": sorted(failed), "build_seconds": round(time.time() - start, 1)}
    write_json(data_dir / f"{name}_stats.json", stats)
    log.info("%s voices: %.2f h over %d voices in %.0f s", name, stats[name]["hours"], stats[name]["voices"],
             stats["build_seconds"])


def split_stats(records: list[Utterance]) -> dict:
    return {
        "utterances": len(records),
        "hours": round(sum(r.duration for r in records) / 3600, 3),
        "voices": len({r.voice for r in records}),
        "speakers": len({r.speaker for r in records}),
        "per_voice": dict(Counter(r.voice for r in records)),
    }


# ---------------------------------------------------------------------------------------------- cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m audio.synth_corpus", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stage", choices=["text", "voices", "build", *EXTRA_SETS, "lm-text"])
    parser.add_argument("--data-dir", type=Path, required=True, help="output folder of the corpus")
    parser.add_argument("--hours", type=float, default=ASR_HOURS,
                        help="planned hours of ASR audio, train+dev+test (the result is ~7%% less)")
    parser.add_argument("--tts-hours", type=float, default=TTS_HOURS, help="hours of the single-voice subset")
    parser.add_argument("--extra-hours", type=float, default=None,
                        help="planned hours of an optional stage (default: "
                             + ", ".join(f"{name} {extra.hours}" for name, extra in EXTRA_SETS.items()) + ")")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel synthesis processes")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    for tool in ("espeak-ng", "flite", "festival"):
        if shutil.which(tool) is None:
            log.error("%s is not installed: run `make setup`", tool)
            return 1
    args.data_dir.mkdir(parents=True, exist_ok=True)
    if args.stage == "text":
        build_text(args.data_dir)
    elif args.stage == "lm-text":
        build_lm_text(args.data_dir)
    elif args.stage == "voices":
        build_voices(args.data_dir, args.jobs)
    elif args.stage in EXTRA_SETS:
        build_extra(args.data_dir, args.extra_hours, args.jobs, name=args.stage)
    else:
        build(args.data_dir, args.hours, args.tts_hours, args.jobs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
