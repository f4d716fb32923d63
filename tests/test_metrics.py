import random

import jiwer
import pytest

from asr.metrics import ErrorCounts, align_counts, cer, edit_distance, error_counts, wer


def _random_sentence(rng: random.Random, max_words: int) -> str:
    words = ["a", "an", "the", "cat", "cap", "sat", "hat", "on", "it's"]
    return " ".join(rng.choice(words) for _ in range(rng.randint(0, max_words)))


def _reference_distance(a, b) -> int:
    """Textbook O(nm) Levenshtein."""
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, start=1):
        cur = [i]
        for j, y in enumerate(b, start=1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y)))
        prev = cur
    return prev[-1]


def test_edit_distance_known_and_random():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([], [1, 2]) == 2
    assert edit_distance(["a"], []) == 1
    assert edit_distance("", "") == 0
    rng = random.Random(0)
    for _ in range(300):
        a = [rng.randint(0, 3) for _ in range(rng.randint(0, 12))]
        b = [rng.randint(0, 3) for _ in range(rng.randint(0, 12))]
        assert edit_distance(a, b) == _reference_distance(a, b)


def test_counts_are_a_consistent_alignment():
    rng = random.Random(1)
    for _ in range(300):
        a = [rng.randint(0, 4) for _ in range(rng.randint(0, 10))]
        b = [rng.randint(0, 4) for _ in range(rng.randint(0, 10))]
        c = align_counts(a, b)
        assert c.errors == _reference_distance(a, b)
        assert c.ref_length == len(a)
        assert c.hits + c.substitutions + c.insertions == len(b)


def test_corpus_rates_match_jiwer_on_random_text():
    rng = random.Random(2)
    for _ in range(30):
        n = rng.randint(1, 8)
        refs = [_random_sentence(rng, 8) for _ in range(n)]
        if not any(refs):
            refs[0] = "the cat"
        hyps = [_random_sentence(rng, 8) for _ in range(n)]
        out = jiwer.process_words(refs, hyps)
        ours = error_counts(refs, hyps, unit="word")
        assert ours.errors == out.substitutions + out.deletions + out.insertions
        assert ours.ref_length == out.hits + out.substitutions + out.deletions
        assert wer(refs, hyps) == pytest.approx(out.wer, abs=1e-12)
        assert cer(refs, hyps) == pytest.approx(jiwer.cer(refs, hyps), abs=1e-12)


def test_operation_counts_on_unambiguous_cases():
    c = error_counts(["the cat sat on the mat"], ["the cap sat the mat today"])
    assert (c.substitutions, c.deletions, c.insertions, c.hits) == (1, 1, 1, 4)
    assert c.rate == pytest.approx(3 / 6)


def test_empty_hypotheses_and_references():
    assert wer(["the cat"], [""]) == 1.0
    c = error_counts(["the cat"], [""])
    assert (c.deletions, c.insertions) == (2, 0)
    # An empty reference adds insertions but no reference words (as jiwer does).
    assert wer(["", "a b"], ["x", "a b"]) == pytest.approx(jiwer.wer(["", "a b"], ["x", "a b"]))
    assert wer([""], [""]) == 0.0
    assert wer([""], ["oops"]) == float("inf")
    assert cer(["ab"], [""]) == 1.0


def test_argument_checks():
    with pytest.raises(ValueError, match="2 references but 1"):
        wer(["a", "b"], ["a"])
    with pytest.raises(TypeError):
        wer("a b", "a b")
    with pytest.raises(ValueError, match="unit"):
        error_counts(["a"], ["a"], unit="phone")


def test_error_counts_add():
    total = ErrorCounts(1, 2, 3, 4) + ErrorCounts(substitutions=1, hits=1)
    assert total == ErrorCounts(substitutions=2, deletions=2, insertions=3, hits=5)
    assert total.to_dict()["ref_length"] == 9
