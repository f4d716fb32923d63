import json

import pytest

from asr.tokenizer import (
    ALPHABET,
    BLANK_TOKEN,
    CharTokenizer,
    SentencePieceTokenizer,
    load_tokenizer,
    spell,
    train_sentencepiece,
)

TEXTS = [
    "the cat sat on the mat",
    "the dog didn't like the cat",
    "a quick brown fox jumps over the lazy dog",
    "she sells sea shells by the sea shore",
] * 20


def test_char_vocabulary_layout():
    tok = CharTokenizer()
    assert tok.vocab_size == 29
    assert tok.blank_id == 0 and tok.word_separator_id == 1
    assert tok.tokens[:3] == [BLANK_TOKEN, "|", "'"]
    assert tok.tokens[3:] == list("abcdefghijklmnopqrstuvwxyz")
    assert len(set(tok.tokens)) == tok.vocab_size


def test_char_round_trip_and_ids():
    tok = CharTokenizer()
    ids = tok.encode("don't  stop ")
    assert ids[:5] == [3 + 3, 3 + 14, 3 + 13, 2, 3 + 19]  # d o n ' t
    assert ids[5] == tok.word_separator_id
    assert tok.blank_id not in ids
    assert tok.decode(ids) == "don't stop"
    # Blanks and doubled separators do not leak into the text.
    assert tok.decode([0, *tok.encode("ab"), 0, 1, 1, *tok.encode("c")]) == "ab c"


@pytest.mark.parametrize("bad", ["room 101", "Hello", "what?", "caf\u00e9"])
def test_unknown_character_is_named(bad):
    tok = CharTokenizer()
    odd = next(c for c in bad if c not in ALPHABET + " ")
    with pytest.raises(ValueError, match=repr(odd)):
        tok.encode(bad)


def test_decode_rejects_out_of_range_ids():
    with pytest.raises(ValueError, match="outside"):
        CharTokenizer().decode([29])


def test_sentencepiece_round_trip_and_layout(tmp_path):
    tok = train_sentencepiece(TEXTS, vocab_size=60, model_prefix=tmp_path / "bpe")
    assert (tmp_path / "bpe.model").read_bytes() == tok.model_proto
    assert 31 <= tok.vocab_size <= 60
    assert tok.tokens[0] == BLANK_TOKEN and tok.tokens[1] == "|"
    assert len(tok.tokens) == tok.vocab_size
    assert not any("\u2581" in t for t in tok.tokens)  # no SentencePiece word-boundary marker
    for text in TEXTS[:4] + ["zzz quiz", "jumps'"]:
        ids = tok.encode(text)
        assert tok.blank_id not in ids
        assert tok.decode(ids) == text
        # Words are separated by exactly one separator id.
        assert ids.count(tok.word_separator_id) == len(text.split()) - 1
    # BPE merges frequent words into few pieces.
    assert len(tok.encode("the")) < 3


def test_sentencepiece_rejects_unknown_characters():
    tok = train_sentencepiece(TEXTS, vocab_size=40)
    with pytest.raises(ValueError, match="'7'"):
        tok.encode("route 7")
    with pytest.raises(ValueError, match="at least"):
        train_sentencepiece(TEXTS, vocab_size=20)


@pytest.mark.parametrize("make", [CharTokenizer, lambda: train_sentencepiece(TEXTS, vocab_size=50)])
def test_dict_round_trip_is_json_safe(make):
    tok = make()
    d = json.loads(json.dumps(tok.to_dict()))
    again = load_tokenizer(d)
    assert type(again) is type(tok)
    assert again.tokens == tok.tokens
    text = "the lazy fox didn't sell shells"
    assert again.encode(text) == tok.encode(text)


def test_load_tokenizer_rejects_unknown_type():
    with pytest.raises(ValueError, match="unknown tokenizer"):
        load_tokenizer({"type": "phones"})
    with pytest.raises(ValueError):
        SentencePieceTokenizer.from_dict({"type": "char"})


def test_spell():
    assert spell(["hi", "it's"], CharTokenizer()) == [["h", "i"], ["i", "t", "'", "s"]]


def test_cli_writes_loadable_json(tmp_path):
    from asr.tokenizer import main

    assert main(["--kind", "char", "--out", str(tmp_path / "char.json")]) == 0
    assert isinstance(load_tokenizer(json.loads((tmp_path / "char.json").read_text())), CharTokenizer)
    text = tmp_path / "train.txt"
    text.write_text("\n".join(TEXTS + ["route 66 is long"]) + "\n", encoding="utf-8")
    out = tmp_path / "bpe.json"
    assert (
        main(["--kind", "sentencepiece", "--text", str(text), "--vocab-size", "50", "--out", str(out)]) == 0
    )
    tok = load_tokenizer(json.loads(out.read_text()))
    assert isinstance(tok, SentencePieceTokenizer)
    assert tok.decode(tok.encode("the lazy dog")) == "the lazy dog"
