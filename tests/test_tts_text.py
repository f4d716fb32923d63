"""The TTS text front end: normalisation, numbers, symbols, espeak-ng phonemes and sentence splitting."""

from __future__ import annotations

import shutil

import pytest

from tts.text import (
    EOS_ID,
    PAD_ID,
    SYMBOLS,
    TextConfig,
    ids_to_text,
    normalize_text,
    number_to_words,
    ordinal_to_words,
    phonemize,
    split_sentences,
    text_to_ids,
    texts_to_ids,
    year_to_words,
)

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("I read you loud and clear!", "i read you loud and clear!"),
        ("He has 3 cats and 21 dogs.", "he has three cats and twenty one dogs."),
        ("It was the 1st, 2nd, 3rd and 22nd try", "it was the first, second, third and twenty second try"),
        (
            "Born in 1999, moved in 1905, left in 2005, back in 2019.",
            "born in nineteen ninety nine, moved in nineteen oh five, left in two thousand five, back in twenty nineteen.",
        ),
        ("Pi is 3.14", "pi is three point one four"),
        ("It costs $5.", "it costs five dollars."),
        ("It costs $5.50 or $1 or $0.01", "it costs five dollars, fifty cents or one dollar or one cent"),
        ("A $2 million deal", "a two million dollars deal"),
        (
            "About 1,250 people, 50% of them",
            "about one thousand two hundred fifty people, fifty percent of them",
        ),
        ("Mr. and Mrs. Smith met Dr. Jones.", "mister and missus smith met doctor jones."),
        ("St. Louis is on Baker St. in town", "saint louis is on baker street in town"),
        (
            "Apples, pears, etc. are fruit; e.g. figs, i.e. sweet",
            "apples, pears, et cetera are fruit; for example figs, that is sweet",
        ),
        ("cats vs. dogs", "cats versus dogs"),
        ("Don't \u201cquote\u201d 'me' \u2014 now", "don't quote me, now"),
        ("Caf\u00e9 na\u00efve r\u00e9sum\u00e9", "cafe naive resume"),
        ("What?! Really...", "what? really."),
        ("well-known (famous) names: A & B", "well known, famous, names: a and b"),
        ("-5 degrees", "minus five degrees"),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize("text", ["", "   ", "?!...", "\u4e2d\u6587", "--- ()", "\n\t"])
def test_unpronounceable_text_raises(text):
    with pytest.raises(ValueError, match="nothing pronounceable"):
        normalize_text(text)
    with pytest.raises(ValueError):
        text_to_ids(text)


def test_number_words():
    assert number_to_words(0) == "zero"
    assert number_to_words(100) == "one hundred"
    assert number_to_words(1_000_001) == "one million one"
    assert number_to_words(-42) == "minus forty two"
    assert number_to_words(999_999) == "nine hundred ninety nine thousand nine hundred ninety nine"
    assert [ordinal_to_words(n) for n in (1, 2, 3, 5, 12, 20, 21, 100)] == [
        "first", "second", "third", "fifth", "twelfth", "twentieth", "twenty first", "one hundredth",
    ]  # fmt: skip
    assert year_to_words(1900) == "nineteen hundred"
    assert year_to_words(2000) == "two thousand"
    assert year_to_words(1066) == "ten sixty six"


def test_symbols_and_ids():
    assert len(set(SYMBOLS)) == len(SYMBOLS)
    assert SYMBOLS[PAD_ID] == "_" and PAD_ID == 0
    ids = text_to_ids("Hello, World!")
    assert ids[-1] == EOS_ID and PAD_ID not in ids
    assert ids_to_text(ids) == "hello, world!"
    assert texts_to_ids(["a b", "c."]) == [text_to_ids("a b"), text_to_ids("c.")]


def test_split_sentences():
    text = normalize_text("Hello there. How are you? I am fine! " + "this is a long clause, " * 12 + "end.")
    pieces = split_sentences(text, max_chars=60)
    assert pieces[:3] == ["hello there.", "how are you?", "i am fine!"]
    assert all(len(p) <= 60 for p in pieces)
    assert " ".join(pieces).split() == text.split()  # nothing lost or reordered
    assert split_sentences("a " * 100, max_chars=30)  # no punctuation at all: cut at spaces
    assert all(len(p) <= 30 for p in split_sentences("a " * 100, max_chars=30))


@needs_espeak
def test_phonemize_keeps_punctuation_and_batches():
    texts = ["hello, world. how are you?", "i read you loud and clear!", "don't stop"]
    batched = phonemize(texts)
    assert batched == [phonemize([t])[0] for t in texts]
    assert batched[0].count(",") == 1 and batched[0].endswith("?") and ". " in batched[0]
    assert batched[1].endswith("!") and "ˈ" in batched[1]  # stress marks survive


@needs_espeak
def test_symbol_table_covers_espeak_output():
    sentences = [
        "the quick brown fox jumps over the lazy dog.",
        "she sells sea shells by the sea shore; thoroughly, rhythm, measure, judge, church, sing!",
        "a wooded plateau in the champagne ardenne region of france",
    ]
    phones = phonemize(sentences)
    cfg = TextConfig(phonemes=True)
    for ph, ids in zip(phones, texts_to_ids(sentences, cfg, normalized=True), strict=True):
        assert ids_to_text(ids) == ph  # no IPA symbol was dropped
