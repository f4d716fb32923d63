import math
import random
from collections import Counter, defaultdict

import pytest

from asr.lm import (
    BOS,
    EOS,
    UNK,
    ArpaLM,
    estimate_kneser_ney,
    kneser_ney_discounts,
    main,
    token_sentences,
    write_arpa,
)
from asr.tokenizer import CharTokenizer

WORDS = "the a cat dog sat ran on to mat house big small red it is was".split() + [
    f"{a}{b}" for a in ("ka", "lo", "mi", "nu", "pe", "ro") for b in ("b", "d", "g", "sk", "t", "z", "m")
]


def _corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    # A skewed word distribution gives realistic count-of-counts (so the discounts are estimated).
    weights = [1.0 / (k + 1) for k in range(len(WORDS))]
    return [" ".join(rng.choices(WORDS, weights, k=rng.randint(1, 7))) for _ in range(n)]


def _assert_normalised(lm: ArpaLM, extra_contexts=()) -> int:
    """Every context's distribution over the vocabulary (with </s>, without <s>) sums to one."""
    vocab = [w for w in lm.vocab if w != BOS]
    contexts = [()] + [tuple(lm.vocab[i] for i in g) for table in lm.tables[:-1] for g in table]
    contexts = [c for c in contexts if EOS not in c and BOS not in c[1:]] + list(extra_contexts)
    for context in contexts:
        total = sum(10 ** lm.log10_prob(w, context) for w in vocab)
        assert total == pytest.approx(1.0, abs=2e-5), context
    return len(contexts)


@pytest.mark.parametrize("order,prune", [(2, False), (3, False), (3, True), (4, True)])
def test_written_arpa_is_normalised(tmp_path, order, prune):
    sentences = _corpus(400)
    lm = write_arpa(sentences, tmp_path / "lm.arpa", order=order, prune_singletons=prune)
    loaded = ArpaLM.load(tmp_path / "lm.arpa")
    assert loaded.counts() == lm.counts()
    n = _assert_normalised(loaded, extra_contexts=[("zebra",), (BOS, "zebra"), ("dog", "dog", "dog")])
    assert n > 40
    # The written file scores sentences like the in-memory model.
    for s in sentences[:20]:
        assert loaded.sentence_logprob(s) == pytest.approx(lm.sentence_logprob(s), abs=1e-5)


def test_pruning_drops_singletons_only(tmp_path):
    sentences = _corpus(400)
    full = estimate_kneser_ney(sentences, order=3)
    pruned = estimate_kneser_ney(sentences, order=3, prune_singletons=True)
    raw = Counter()
    for s in sentences:
        seq = [BOS, *s.split(), EOS]
        raw.update(zip(seq, seq[1:], seq[2:], strict=False))
    kept = {tuple(pruned.vocab[i] for i in g) for g in pruned.tables[2]}
    assert kept == {g for g, c in raw.items() if c > 1}
    assert pruned.counts()[:2] == full.counts()[:2]
    assert pruned.counts()[2] < full.counts()[2]


def test_hand_computed_bigram_example():
    d1, d2, d3 = 0.6, 1.1, 1.7
    lm = estimate_kneser_ney(["a b", "a b", "b a"], order=2, discounts=[(d1, d2, d3), (d1, d2, d3)])
    # Sentences: <s> a b </s> (x2), <s> b a </s>.
    # Unigram continuation counts: a <- {<s>, b}, b <- {a, <s>}, </s> <- {b, a}: 2 each, total 6.
    # Vocabulary for the uniform floor: a, b, </s>, <unk> (4 words).
    gamma0 = 3 * d2 / 6
    p_uni = (2 - d2) / 6 + gamma0 / 4
    p_unk = gamma0 / 4
    assert 3 * p_uni + p_unk == pytest.approx(1.0)
    assert lm.log10_prob("a") == pytest.approx(math.log10(p_uni), abs=1e-6)
    assert lm.log10_prob(UNK) == pytest.approx(math.log10(p_unk), abs=1e-6)
    # Context <s>: raw bigram counts (<s> a)=2, (<s> b)=1; same shape for contexts a and b.
    gamma = (d2 + d1) / 3
    p_twice = (2 - d2) / 3 + gamma * p_uni
    p_once = (1 - d1) / 3 + gamma * p_uni
    assert lm.log10_prob("a", [BOS]) == pytest.approx(math.log10(p_twice), abs=1e-6)
    assert lm.log10_prob("b", [BOS]) == pytest.approx(math.log10(p_once), abs=1e-6)
    assert lm.log10_prob(EOS, [BOS]) == pytest.approx(math.log10(gamma * p_uni), abs=1e-6)
    assert lm.log10_prob("b", ["a"]) == pytest.approx(math.log10(p_twice), abs=1e-6)
    assert lm.log10_prob(EOS, ["a"]) == pytest.approx(math.log10(p_once), abs=1e-6)
    assert lm.log10_prob("a", ["b"]) == pytest.approx(math.log10(p_once), abs=1e-6)
    assert lm.log10_prob("zebra", ["b"]) == pytest.approx(math.log10(gamma * p_unk), abs=1e-6)
    assert lm.sentence_logprob("a b") == pytest.approx(3 * math.log10(p_twice), abs=1e-6)
    # The ARPA backoff weight of a context is gamma.
    assert lm.tables[0][(lm.word_to_id["a"],)][1] == pytest.approx(math.log10(gamma), abs=1e-6)


def test_discounts_from_count_of_counts():
    d1, d2, d3 = kneser_ney_discounts([10, 4, 2, 1])
    y = 10 / 18
    assert (d1, d2, d3) == pytest.approx((1 - 2 * y * 4 / 10, 2 - 3 * y * 2 / 4, 3 - 4 * y * 1 / 2))
    assert kneser_ney_discounts([5, 0, 1, 1]) == (0.5, 1.0, 1.5)


def test_estimated_discounts_use_continuation_counts():
    sentences = _corpus(2000, seed=3)
    lm = estimate_kneser_ney(sentences, order=3)
    # Bigram adjusted counts: distinct left neighbours, raw counts for bigrams starting with <s>.
    left = defaultdict(set)
    raw = Counter()
    for s in sentences:
        seq = [BOS, *s.split(), EOS]
        raw.update(zip(seq, seq[1:], strict=False))
        for a, b, c in zip(seq, seq[1:], seq[2:], strict=False):
            left[(b, c)].add(a)
    adjusted = {g: (c if g[0] == BOS else len(left[g])) for g, c in raw.items()}
    coc = Counter(adjusted.values())
    expected = kneser_ney_discounts([coc[k] for k in range(1, 5)])
    assert expected != (0.5, 1.0, 1.5)
    assert lm.discounts[1] == pytest.approx(expected)


@pytest.mark.parametrize("order,prune", [(3, True), (4, False)])
def test_kenlm_agrees_with_our_scorer(tmp_path, order, prune):
    from flashlight.lib.text.decoder.kenlm import KenLM
    from flashlight.lib.text.dictionary import Dictionary

    path = tmp_path / "lm.arpa"
    write_arpa(_corpus(500, seed=4), path, order=order, prune_singletons=prune)
    ours = ArpaLM.load(path)
    words = [*ours.vocab, "zebra"]
    dictionary = Dictionary(words)
    kenlm = KenLM(str(path), dictionary)
    for sentence in [
        "the cat sat on the mat",
        "a red dog",
        "zebra is big",
        "it it it it",
        "mat",
        "mat mat",
        "a",
    ]:
        state = kenlm.start(False)
        total = 0.0
        for word in sentence.split():
            state, score = kenlm.score(state, dictionary.get_index(word))
            total += score
        state, score = kenlm.finish(state)
        total += score
        assert total == pytest.approx(ours.sentence_logprob(sentence), abs=1e-4)


def test_kenlm_python_module_agrees_if_installed(tmp_path):
    kenlm = pytest.importorskip("kenlm")
    path = tmp_path / "lm.arpa"
    write_arpa(_corpus(500, seed=4), path, order=4)
    ours = ArpaLM.load(path)
    model = kenlm.Model(str(path))
    for sentence in ["the cat sat on the mat", "zebra is big", "mat mat", "a"]:
        assert model.score(sentence, bos=True, eos=True) == pytest.approx(
            ours.sentence_logprob(sentence), abs=1e-4
        )


def test_token_lm_text_and_cli(tmp_path):
    assert list(token_sentences(["hi yo"], CharTokenizer())) == [["h", "i", "|", "y", "o"]]
    text = tmp_path / "train.txt"
    text.write_text("\n".join(_corpus(100)) + "\n\n", encoding="utf-8")
    out = tmp_path / "chars.arpa"
    assert main(["--text", str(text), "--out", str(out), "--order", "5", "--units", "chars"]) == 0
    lm = ArpaLM.load(out)
    assert lm.order == 5
    assert "|" in lm.words and "cat" not in lm.words
    assert lm.sentence_logprob("t h e | c a t") > lm.sentence_logprob("t e h | a c t")
    assert not (tmp_path / "chars.arpa.tmp").exists()


def test_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="no non-empty"):
        estimate_kneser_ney(["", "  "])
    with pytest.raises(ValueError, match="reserved"):
        estimate_kneser_ney(["a </s> b"])
    with pytest.raises(ValueError, match="order"):
        estimate_kneser_ney(["a"], order=9)
    bad = tmp_path / "empty.txt"
    bad.write_text("\n", encoding="utf-8")
    assert main(["--text", str(bad), "--out", str(tmp_path / "x.arpa")]) == 1
