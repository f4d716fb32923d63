import pytest
import torch

from asr.align import token_spans, word_timestamps
from asr.tokenizer import CharTokenizer, train_sentencepiece

TOK = CharTokenizer()


def log_probs_from_runs(
    runs: list[tuple[int, int]], vocab: int, *, noise: float = 0.3, seed: int = 0
) -> torch.Tensor:
    """``(T, V)`` peaky log-probs: ``(token_id, n_frames)`` runs, 0.9 on the token, noise on the logits."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for token, n in runs:
        for _ in range(n):
            p = torch.full((vocab,), 0.1 / (vocab - 1))
            p[token] = 0.9
            rows.append((p.log() + noise * torch.randn(vocab, generator=gen)).log_softmax(-1))
    return torch.stack(rows)


def ids(text: str) -> list[int]:
    return TOK.encode(text)


def test_word_times_match_the_constructed_positions():
    h, i, sep, y, o = ids("hi yo")
    # frames: 0-9 silence, 10-11 h, 12-13 i, 14-16 blank, 17 |, 18-20 blank, 21 y, 22-24 o, 25-29 blank
    runs = [(0, 10), (h, 2), (i, 2), (0, 3), (sep, 1), (0, 3), (y, 1), (o, 3), (0, 5)]
    lp = log_probs_from_runs(runs, TOK.vocab_size)
    words = word_timestamps(lp, "hi yo", TOK, 0.02)
    assert [w["word"] for w in words] == ["hi", "yo"]
    assert words[0]["start"] == pytest.approx(10 * 0.02)
    assert words[0]["end"] == pytest.approx(14 * 0.02)
    assert words[1]["start"] == pytest.approx(21 * 0.02)
    assert words[1]["end"] == pytest.approx(25 * 0.02)


def test_double_letters_and_no_separator_frame():
    # "all" needs a blank between its two l's; the model emitted no "|" between the words.
    a, l1, l2, sep, b = ids("all b")
    runs = [(a, 2), (l1, 1), (0, 1), (l2, 2), (0, 4), (b, 1), (0, 1)]
    spans = token_spans(log_probs_from_runs(runs, TOK.vocab_size), ids("all b"))
    assert [s[0] for s in spans] == ids("all b")
    assert spans[:3] == [(a, 0, 2), (l1, 2, 3), (l2, 4, 6)]
    # The separator is forced somewhere in the gap even though no frame favours it.
    assert 6 <= spans[3][1] < spans[3][2] <= 10
    words = word_timestamps(log_probs_from_runs(runs, TOK.vocab_size), "all b", TOK, 0.04)
    assert [(w["word"], round(w["start"], 6), round(w["end"], 6)) for w in words] == [
        ("all", 0.0, 0.24),
        ("b", 0.4, 0.44),
    ]


def test_sentencepiece_words():
    sp = train_sentencepiece(["the cat sat on the mat"] * 20, vocab_size=40)
    pieces = sp.encode("the cat")
    runs = [(0, 3)]
    for p in pieces:
        runs += [(p, 2), (0, 1)]
    lp = log_probs_from_runs(runs, sp.vocab_size)
    words = word_timestamps(lp, "the cat", sp, 0.01)
    assert [w["word"] for w in words] == ["the", "cat"]
    # Each piece (the separator too) takes frames [3 + 3k, 3 + 3k + 2).
    n_the = len(sp.encode("the"))
    assert words[0]["start"] == pytest.approx(0.03)
    assert words[0]["end"] == pytest.approx((3 + 3 * (n_the - 1) + 2) * 0.01)
    assert words[1]["start"] == pytest.approx((3 + 3 * (n_the + 1)) * 0.01)
    assert words[1]["end"] == pytest.approx((3 + 3 * (len(pieces) - 1) + 2) * 0.01)


def test_empty_and_impossible_alignments():
    lp = log_probs_from_runs([(0, 5)], TOK.vocab_size)
    assert word_timestamps(lp, "", TOK, 0.02) == []
    with pytest.raises(ValueError, match="frames cannot hold"):
        word_timestamps(lp, "aaa a", TOK, 0.02)  # 5 tokens + 2 repeats > 5 frames
    with pytest.raises(ValueError, match="'7'"):
        word_timestamps(lp, "7", TOK, 0.02)
