"""The synthetic corpus builder, end to end on a tiny scale with the real Debian synthesisers."""

import json
import shutil
import subprocess
from collections import Counter
from dataclasses import asdict

import pytest

from audio import synth_corpus as sc
from audio.atomic import write_json
from audio.io import info
from audio.manifest import read_manifest, resolve_audio

pytestmark = pytest.mark.skipif(
    not all(shutil.which(t) for t in ("espeak-ng", "flite", "festival")), reason="synthesisers not installed"
)


def test_clean_sentence_keeps_speakable_text_only():
    assert sc.clean_sentence("`Don't you hate things to be out of order,' she said") is None  # quotes
    assert sc.clean_sentence("Don't you hate things out of order?") == (
        "Don't you hate things out of order?", "don't you hate things out of order")
    assert sc.clean_sentence("a well-known painter of the old school") == (
        "a well known painter of the old school", "a well known painter of the old school")
    assert sc.clean_sentence("the 1990s were a decade of change") is None  # digits
    assert sc.clean_sentence("the NATO alliance was formed later") is None  # spelled-out acronyms
    assert sc.clean_sentence("Mr. Smith went to the market today") is None  # abbreviations
    assert sc.clean_sentence("too short") is None


def test_sentence_split_is_stable_and_balanced():
    sentences = [f"sentence number {w} of the corpus" for w in "one two three four five six".split()]
    assert [sc.sentence_split(s) for s in sentences] == [sc.sentence_split(s) for s in sentences]
    many = [sc.sentence_split(f"word{i} and more words here") for i in range(4000)]
    assert 0.85 < many.count("train") / len(many) < 0.95


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    data = tmp_path_factory.mktemp("corpus")
    sc.build_text(data)
    wanted = {"espeak-en-us+m1", "espeak-en+f2", "espeak-en-us+m4", "espeak-en-us-nyc+f4"}
    voices = [v for v in sc.candidate_voices() if v.speaker in wanted]
    voices += [v for v in sc.candidate_voices() if v.name in ("festival-slt", "flite-awb")]
    probed = [sc.probe_voice(v)[0] for v in voices]
    write_json(data / "voices.json", [asdict(v) for v in probed])
    sc.build(data, hours=0.02, tts_hours=0.01, jobs=2)
    return data


def test_probe_measures_pitch(tiny_corpus):
    voices = {v.name: v for v in sc.read_voices(tiny_corpus)}
    female = next(v for n, v in voices.items() if "+f2" in n)
    male = next(v for n, v in voices.items() if "+m1" in n)
    assert female.median_f0 > male.median_f0 + 40  # a female variant really is higher


def test_manifests_are_complete_and_disjoint(tiny_corpus):
    manifests = tiny_corpus / "manifests"
    splits = {s: read_manifest(manifests / f"{s}.jsonl") for s in sc.SPLITS}
    for split, records in splits.items():
        assert records, split
        for r in records[:5]:
            meta = info(resolve_audio(manifests / f"{split}.jsonl", r))
            assert meta.sample_rate == sc.ASR_SAMPLE_RATE and meta.channels == 1
            assert abs(meta.duration - r.duration) < 1e-3
            assert r.text == r.text.lower() and r.text.strip()
    speakers = {s: {r.speaker for r in recs} for s, recs in splits.items()}
    texts = {s: {r.text for r in recs} for s, recs in splits.items()}
    assert not speakers["train"] & (speakers["dev"] | speakers["test"])
    assert not texts["train"] & (texts["dev"] | texts["test"])
    assert not texts["dev"] & texts["test"]
    stats = json.loads((tiny_corpus / "stats.json").read_text())
    assert stats["asr"]["total_hours"] > 0.01
    assert stats["asr"]["test"]["voices"] == len({r.voice for r in splits["test"]})


def test_tts_subset_is_single_voice_at_22k_and_sentence_disjoint(tiny_corpus):
    manifests = tiny_corpus / "manifests" / "tts"
    splits = {s: read_manifest(manifests / f"{s}.jsonl") for s in sc.SPLITS}
    assert {r.voice for recs in splits.values() for r in recs} == {sc.TTS_VOICE}
    assert all(r.sample_rate == sc.TTS_SAMPLE_RATE for recs in splits.values() for r in recs)
    train = {r.text.lower() for r in splits["train"]}
    assert not train & {r.text.lower() for r in splits["test"]}


def test_rebuild_is_a_no_op(tiny_corpus):
    jobs, _, _ = sc.plan_jobs(tiny_corpus, hours=0.02, tts_hours=0.01)
    assert all(job.done() for job in jobs)


def test_extra_voices_are_train_speakers_with_their_own_pitch():
    voices = sc.extra_voices()
    assert len({v.name for v in voices}) == len(voices)
    assert {v.speaker for v in voices} <= {"slt", "kal"} and {v.split for v in voices} == {"train"}
    low = next(v for v in voices if v.args[0] == "slt" and "int_f0_target_mean=95" in v.args)
    probed = sc.probe_voice(low)[0]
    plain = sc.probe_voice(next(v for v in sc.candidate_voices() if v.name == "flite-slt"))[0]
    assert plain.median_f0 > 150 and probed.median_f0 < 115  # flite really moved slt into male range


def test_extra_stage_appends_to_the_train_manifest(tiny_corpus):
    sc.build_extra(tiny_corpus, hours=0.005, jobs=2)
    manifests = tiny_corpus / "manifests"
    base, extra = read_manifest(manifests / "train.jsonl"), read_manifest(manifests / "train_extra.jsonl")
    assert extra and read_manifest(manifests / "train_plus.jsonl") == base + extra
    pools = sc.read_sentences(tiny_corpus)
    train_texts = {norm for norm, _ in pools["train"]}
    assert all(r.text in train_texts and r.speaker in {"slt", "kal"} for r in extra)
    assert len({r.voice for r in extra}) == min(len(extra), len(sc.EXTRA_VARIANTS))
    meta = info(resolve_audio(manifests / "train_extra.jsonl", extra[0]))
    assert meta.sample_rate == sc.ASR_SAMPLE_RATE and abs(meta.duration - extra[0].duration) < 1e-3
    jobs, _ = sc.plan_extra_jobs(tiny_corpus, hours=0.005)
    assert all(job.done() for job in jobs)  # a rerun synthesises nothing


def test_variant_voices_are_unused_variants_in_training_accents():
    voices = sc.variant_voices()
    assert len({v.name for v in voices}) == len(voices) == 2 * len(sc.ESPEAK_EXTRA_VARIANTS)
    used = {v for variants in sc.ESPEAK_VARIANTS.values() for v in variants}
    heldout = {v.speaker for v in sc.candidate_voices() if v.split != "train"}
    for voice in voices:
        accent, variant = voice.args[0].split("+")
        assert voice.split == "train" and voice.engine == "espeak-ng" and accent in sc.ESPEAK_ACCENTS
        assert variant not in used and "max" not in variant.lower() and voice.speaker not in heldout


def test_variants_stage_writes_its_own_manifest(tiny_corpus, monkeypatch):
    voices = sc.variant_voices()[:3]
    twin = sc.Voice(**{**asdict(voices[0]), "name": "espeak-twin"})  # sounds exactly like voices[0]
    variants = sc.ExtraSet(lambda _: [*voices, twin], 1.0, "trainv", seed=2, strict=False)
    monkeypatch.setitem(sc.EXTRA_SETS, "variants", variants)
    sc.build_extra(tiny_corpus, hours=0.004, jobs=2, name="variants")
    manifests = tiny_corpus / "manifests"
    recs = read_manifest(manifests / "train_variants.jsonl")
    train_texts = {norm for norm, _ in sc.read_sentences(tiny_corpus)["train"]}
    assert recs and all(r.text in train_texts and r.id.startswith("trainv_") for r in recs)
    assert {r.voice for r in recs} == {v.name for v in voices}  # the twin is left out
    stats = json.loads((tiny_corpus / "variants_stats.json").read_text())
    assert stats["variants"]["utterances"] == len(recs)


def test_accents_are_new_combinations_of_training_accent_parts(tmp_path):
    voices = sc.accent_voices(tmp_path)
    assert len({v.name for v in voices}) == len({v.speaker for v in voices}) == len(voices) == sc.ACCENT_VOICES
    heldout = {v.speaker for v in sc.candidate_voices() if v.split != "train"}
    assert all(v.split == "train" and v.speaker not in heldout for v in voices)
    folder = tmp_path / "espeak-ng" / "espeak-ng-data" / "lang" / "glottis"
    texts = {f.name: f.read_text() for f in folder.iterdir()}
    for text in texts.values():
        phonemes = next(line.split()[1] for line in text.splitlines() if line.startswith("phonemes "))
        assert phonemes in sc.ACCENT_PHONEMES and "h NULL" not in text and "en-wm" not in text
    sc.accent_voices(tmp_path)
    assert {f.name: f.read_text() for f in folder.iterdir()} == texts  # the same seed writes the same files
    # espeak-ng reads them: the assembled accents transcribe one sentence in different ways.
    sentence = "the farmer hurried through the water with three other men"
    spellings = set()
    for voice in voices[:12]:
        name, _, _, root = voice.args
        out = subprocess.run(["espeak-ng", "--path", root, "-v", name, "-q", "-x", sentence],
                             check=True, capture_output=True, text=True)
        assert "Error" not in out.stderr and out.stdout.strip()
        spellings.add(out.stdout.strip())
    assert len(spellings) >= 4
    probes = [sc.probe_voice(v) for v in voices[:3]]
    assert all(p is not None for p in probes) and len({digest for _, digest in probes}) == 3


def test_accents_stage_writes_its_own_manifest(tiny_corpus, monkeypatch):
    accents = sc.ExtraSet(lambda data_dir: sc.accent_voices(data_dir)[:3], 1.0, "traina", seed=3, strict=False)
    monkeypatch.setitem(sc.EXTRA_SETS, "accents", accents)
    sc.build_extra(tiny_corpus, hours=0.004, jobs=2, name="accents")
    recs = read_manifest(tiny_corpus / "manifests" / "train_accents.jsonl")
    assert recs and all(r.id.startswith("traina_") and r.speaker.startswith("espeak-glottis") for r in recs)
    meta = info(resolve_audio(tiny_corpus / "manifests" / "train_accents.jsonl", recs[0]))
    assert meta.sample_rate == sc.ASR_SAMPLE_RATE and abs(meta.duration - recs[0].duration) < 1e-3


def _festival_phones(function: str) -> set[str]:
    script = f'({function})\n(format t "%l\\n" (mapcar car (cadr (assoc (quote phones) (PhoneSet.description)))))\n'
    out = subprocess.run(["festival", "--pipe"], input=script, check=True, capture_output=True, text=True).stdout
    return set(out.strip().splitlines()[-1].strip("()").split())


@pytest.fixture(scope="module")
def foreign_installed():
    """Skips a test when festival's foreign voices are missing; checked once, only by the tests that need it."""
    script = "".join(f"({function})\n" for function, _, _ in sc.FOREIGN_VOICES)
    run = subprocess.run(["festival", "--pipe"], input=script, capture_output=True, text=True)
    if "unbound variable" in run.stdout + run.stderr:
        pytest.skip("festival's foreign voices are not installed (make setup does it)")


def _assert_phone_maps_reach_voice_phones(voices, maps, stressed_twins, lexical=None):
    """Every English phone has a target, and every target (a stressed twin too) is one of the voice's
    phones, or one its own lexicon writes (``lexical``, per language)."""
    english = set(sc._RADIO_VOWELS + sc._RADIO_CONSONANTS)
    for function, language, _ in voices:
        table = maps[language]
        assert set(table) == english
        stressed = {p + "1" for p in stressed_twins.get(language, ())}
        targets = {p for phones in table.values() for p in phones} | stressed
        allowed = _festival_phones(function) | (lexical or {}).get(language, set())
        assert targets <= allowed, (function, targets - allowed)


@pytest.mark.usefixtures("foreign_installed")
def test_foreign_phone_maps_reach_phones_each_voice_has():
    _assert_phone_maps_reach_voice_phones(sc.FOREIGN_VOICES, sc.FOREIGN_PHONE_MAPS, sc.FOREIGN_STRESSED)
    voices = sc.foreign_voices()
    heldout = {v.speaker for v in sc.candidate_voices() if v.split != "train"}
    assert len({v.name for v in voices}) == len(voices) == len(sc.FOREIGN_VOICES) * len(sc.FOREIGN_PROSODY)
    assert all(v.split == "train" and v.speaker not in heldout for v in voices)


def test_foreign_segments_keep_the_timing_and_place_f0_in_its_phone():
    # "how", with a pause: hh is dropped in Italian (its time goes to the pause), aw splits in two.
    segments = [("pau", 0.2, False, []), ("hh", 0.3, True, [(0.25, 100.0)]),
                ("aw", 0.5, True, [(0.32, 110.0), (0.45, 90.0)]), ("pau", 0.7, False, [])]
    out = sc.foreign_segments(segments, "italian", f0_factor=2.0, stretch=1.5)
    assert [p for p, _, _ in out] == ["#", "a1", "u1", "#"]
    assert sum(d for _, d, _ in out) == pytest.approx(0.7 * 1.5)
    assert out[0][1] == pytest.approx(0.3 * 1.5) and out[0][2] == [(pytest.approx(0.05 * 1.5 + 0.2 * 1.5), 200.0)]
    # each target is timed from the start of the sub-phone that holds it
    assert out[1][2] == [(pytest.approx(0.02 * 1.5), 220.0)] and out[2][2] == [(pytest.approx(0.05 * 1.5), 180.0)]
    assert all(0 <= t <= d + 1e-9 for _, d, pts in out for t, _ in pts)


@pytest.mark.usefixtures("foreign_installed")
def test_foreign_stage_speaks_english_at_the_front_end_length(tiny_corpus, monkeypatch):
    voices = [v for v in sc.foreign_voices() if v.name.endswith("f1.0-d1.0")][:2]
    foreign = sc.ExtraSet(lambda _: voices, 1.0, "trainf", seed=4, strict=True)
    monkeypatch.setitem(sc.EXTRA_SETS, "foreign", foreign)
    sc.build_extra(tiny_corpus, hours=0.004, jobs=2, name="foreign")
    manifest = tiny_corpus / "manifests" / "train_foreign.jsonl"
    recs = read_manifest(manifest)
    assert recs and {r.voice for r in recs} == {v.name for v in voices}
    assert all(r.id.startswith("trainf_") and r.engine == "festival" for r in recs)
    for rec, segments in zip(recs, sc.english_segments([r.text for r in recs]), strict=True):
        front_end = segments[-1][1]  # the English utterance's length
        meta = info(resolve_audio(manifest, rec))
        assert meta.sample_rate == sc.ASR_SAMPLE_RATE and 0.5 * front_end < meta.duration < 1.1 * front_end


def test_pico_voices_are_new_train_speakers():
    voices = sc.pico_voices()
    assert len({v.name for v in voices}) == len(voices) == len(sc.PICO_LANGUAGES) * len(sc.PICO_SETTINGS)
    assert {v.speaker for v in voices} == {"pico-lh", "pico-kh"}
    assert all(v.split == "train" and v.engine == "pico" for v in voices)
    corpus_speakers = {s for _, _, s, _, _ in sc.OTHER_VOICES}
    assert not {v.speaker for v in voices} & corpus_speakers


def test_pico_pitch_setting_moves_f0():
    low, high = (sc.Voice(name=f"pico-{p}", engine="pico", speaker="pico-lh", split="train",
                          args=("en-US", str(p), "100")) for p in (50, 100))
    (low, _), (high, _) = sc.probe_voice(low), sc.probe_voice(high)
    assert 1.6 < high.median_f0 / low.median_f0 < 2.4  # pitch 50% halves F0


@pytest.mark.parametrize(("name", "voices", "prefix"), [("pico", sc.pico_voices, "trainp"),
                                                       ("picoloan", sc.pico_loan_voices, "trainq")])
def test_pico_stages_write_their_own_manifests(tiny_corpus, monkeypatch, name, voices, prefix):
    voices = [v for v in voices() if v.args[1:] == ("100", "100")][:2]
    monkeypatch.setitem(sc.EXTRA_SETS, name, sc.ExtraSet(lambda _: voices, 1.0, prefix, seed=5, strict=True))
    sc.build_extra(tiny_corpus, hours=0.004, jobs=2, name=name)
    manifest = tiny_corpus / "manifests" / f"train_{name}.jsonl"
    recs = read_manifest(manifest)
    train_texts = {norm for norm, _ in sc.read_sentences(tiny_corpus)["train"]}
    assert recs and {r.voice for r in recs} == {v.name for v in voices}
    assert all(r.id.startswith(prefix + "_") and r.engine == "pico" and r.text in train_texts for r in recs)
    for rec in recs:
        meta = info(resolve_audio(manifest, rec))
        assert meta.sample_rate == sc.ASR_SAMPLE_RATE and meta.duration > 0.05 * len(rec.text)


def test_pico_reports_an_unknown_language():
    with pytest.raises(RuntimeError, match="xx-XX"):
        sc.pico_synthesize("xx-XX", 100, 100, [])


def test_loan_phone_maps_reach_phones_each_voice_has():
    # msu_ru's own lexicon writes /o/, which its post-lexical rules make oo (stressed) or a reduced vowel
    _assert_phone_maps_reach_voice_phones(sc.LOAN_VOICES, sc.LOAN_PHONE_MAPS, sc.LOAN_STRESSED,
                                          lexical={"russian": {"o"}})
    voices = sc.loan_voices()
    heldout = {v.speaker for v in sc.candidate_voices() if v.split != "train"}
    known = {v.speaker for v in sc.candidate_voices() + sc.foreign_voices() + sc.pico_voices()}
    assert len({v.name for v in voices}) == len(voices)
    assert len({v.speaker for v in voices}) == len(sc.LOAN_VOICES) + len(sc.LOAN_SEGMENT_VOICES)
    assert all(v.split == "train" and v.engine == "festival" and v.speaker not in heldout | known for v in voices)


def test_loan_entries_keep_syllables_and_stress():
    pron = sc.english_pronunciations(["hello", "brother", "animal's", "animals"])
    assert pron["hello"] == [(["hh", "ax"], False), (["l", "ow"], True)]
    assert pron["animal's"] == pron["animals"]  # no entry with the apostrophe: looked up without it
    # Catalan drops /h/ and has stressed vowels of its own; Russian keeps phonemes and stress marks.
    assert sc.loan_entry(pron["hello"], "catalan") == [(["ax"], False), (["l", "o1", "w"], True)]
    assert sc.loan_entry(pron["brother"], "russian") == [(["b", "r", "a"], True), (["z", "e", "r"], False)]
    assert sc.loan_key("animal's", "russian") == "анималъс" and sc.loan_key("we're", "catalan") == "weqre"
    assert len({sc.loan_key(w, "russian") for w in ("its", "it's", "ist")}) == 3


def test_loan_stage_gives_each_speaker_its_share(tiny_corpus, monkeypatch):
    voices = [v for v in sc.loan_voices() if v.name.endswith(("-r1.0", "-r1.2", "-f1.0-d1.0"))]
    assert len(voices) == 4 and len({v.speaker for v in voices}) == 3  # Catalan at two rates
    loan = sc.ExtraSet(lambda _: voices, 1.0, "trainl", seed=6, strict=True, by_speaker=True)
    monkeypatch.setitem(sc.EXTRA_SETS, "loan", loan)
    sc.build_extra(tiny_corpus, hours=0.006, jobs=2, name="loan")
    manifest = tiny_corpus / "manifests" / "train_loan.jsonl"
    recs = read_manifest(manifest)
    per_speaker = Counter(r.speaker for r in recs)
    assert len(per_speaker) == 3 and max(per_speaker.values()) - min(per_speaker.values()) <= 1
    assert {r.voice for r in recs} == {v.name for v in voices}
    assert all(r.id.startswith("trainl_") and r.engine == "festival" for r in recs)
    for rec in recs:  # English read at a speaking pace: neither silence nor a spelled-out word salad
        meta = info(resolve_audio(manifest, rec))
        assert meta.sample_rate == sc.ASR_SAMPLE_RATE and 0.03 * len(rec.text) < meta.duration < 0.15 * len(rec.text)


def _pico_seconds(engine, ph: str) -> float:
    return len(engine.speak(f"<phoneme alphabet=\"xsampa\" ph='{ph}'/>")) / 2 / sc.PICO_SAMPLE_RATE


def test_pico_xsampa_maps_use_only_symbols_each_voice_speaks():
    import ttspico

    english = set(sc._RADIO_VOWELS + sc._RADIO_CONSONANTS)
    for language, table in sc.PICO_XSAMPA_MAPS.items():
        assert set(table) == english
        engine = ttspico.TtsEngine(language)
        base = _pico_seconds(engine, 'ta"tata')
        for symbol in {q for phones in table.values() for q in phones}:
            assert 0.02 < _pico_seconds(engine, f'ta"ta{symbol}ta') - base < 0.5, (language, symbol)
        if language == "de-DE":  # the probe's premise: a symbol the voice lacks (English /th/) is skipped
            assert _pico_seconds(engine, 'ta"taTta') == base


def test_pico_loan_voices_read_english_as_marked_up_phonemes():
    voices = sc.pico_loan_voices()
    assert len({v.name for v in voices}) == len(voices) == len(sc.PICO_LOAN_LANGUAGES) * len(sc.PICO_SETTINGS)
    known = {v.speaker for v in sc.candidate_voices() + sc.pico_voices()}
    assert len({v.speaker for v in voices}) == 4 and not {v.speaker for v in voices} & known
    # "hello": German keeps the /h/, stress goes on the second syllable; Italian drops the /h/.
    pron = sc.english_pronunciations(["hello", "ecclesiastical"])
    assert sc.xsampa_word(pron["hello"], "de-DE") == 'h@"loU' and sc.xsampa_word(pron["hello"], "it-IT") == 'e"lou'
    assert sc.xsampa_word(pron["ecclesiastical"], "es-ES").count('"') == 1  # later stresses are secondary
    [markup] = sc.pico_markup(["hello hello"], "fr-FR")
    assert markup.count("<phoneme alphabet=\"xsampa\"") == 2
