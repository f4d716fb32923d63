import itertools
import math
import random

import pytest
import torch

from asr.decode import (
    DecoderConfig,
    Hypothesis,
    LMBeamSearchDecoder,
    greedy_decode,
    prefix_beam_search,
    read_arpa_words,
    tune_lm_weights,
)
from asr.lm import token_sentences, write_arpa
from asr.tokenizer import CharTokenizer, train_sentencepiece

TOK = CharTokenizer()
V = TOK.vocab_size

LM_TEXT = [
    "the cat sat on the mat",
    "the cat sat down",
    "a cat sat on a hat",
    "set the table",
    "they set the table for the cat",
    "the dog sat on the mat",
    "the mat was red",
] * 3


def frames_to_log_probs(frames: list[dict[int, float]], *, noise: float = 0.0, seed: int = 0) -> torch.Tensor:
    """``(T, V)`` log-probs: each frame gives the listed ids their probability, the rest share what is left."""
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for spec in frames:
        rest = (1.0 - sum(spec.values())) / (V - len(spec))
        p = torch.full((V,), rest)
        for i, q in spec.items():
            p[i] = q
        logits = p.log() + noise * torch.randn(V, generator=gen)
        rows.append(logits.log_softmax(-1))
    return torch.stack(rows)


def spelled_frames(
    text: str, *, confusions: dict[int, dict[int, float]] | None = None
) -> list[dict[int, float]]:
    """Token frame then blank frame for every token of ``text`` (peaky CTC); token k can be made ambiguous."""
    confusions = confusions or {}
    frames = [{0: 0.95}]
    for k, i in enumerate(TOK.encode(text)):
        frames.append(confusions.get(k, {i: 0.95}))
        frames.append({0: 0.95})
    return frames


def token_frames(text: str) -> tuple[int, ...]:
    return tuple(2 * k + 1 for k in range(len(TOK.encode(text))))


def char_index(text: str, word: int, letter: int) -> int:
    """Token index of ``letter`` in word number ``word`` (separators count as tokens)."""
    words = text.split()
    return sum(len(w) + 1 for w in words[:word]) + letter


def test_greedy_decode_batch_with_lengths():
    a = frames_to_log_probs(spelled_frames("hello world"), noise=0.3)
    b = frames_to_log_probs(spelled_frames("hi"), noise=0.3, seed=1)
    batch = torch.full((2, a.shape[0], V), -5.0)
    batch[0] = a
    batch[1, : b.shape[0]] = b
    batch[1, b.shape[0] :, TOK.encode("x")[0]] = 0.0  # garbage past the length must be ignored
    hyps = greedy_decode(batch, torch.tensor([a.shape[0], b.shape[0]]), TOK)
    assert [h.text for h in hyps] == ["hello world", "hi"]
    assert hyps[0].frames == token_frames("hello world")
    assert list(hyps[0].token_ids) == TOK.encode("hello world")
    assert hyps[1].score == pytest.approx(float(b.max(-1).values.sum()), abs=1e-4)


def test_greedy_collapses_repeats_but_not_across_blanks():
    a, b = TOK.encode("ab")
    frames = [{a: 0.9}, {a: 0.9}, {0: 0.9}, {a: 0.9}, {b: 0.9}, {b: 0.9}]
    hyp = greedy_decode(frames_to_log_probs(frames)[None], None, TOK)[0]
    assert hyp.text == "aab"
    assert hyp.frames == (0, 3, 4)


def test_prefix_beam_one_matches_greedy_on_peaky_outputs():
    rng = random.Random(0)
    words = "the cat sat on a mat with its hat".split()
    for seed in range(8):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(1, 5)))
        lp = frames_to_log_probs(spelled_frames(text), noise=0.5, seed=seed)[None]
        greedy = greedy_decode(lp, None, TOK)[0]
        beam = prefix_beam_search(lp, None, TOK, beam=1)[0]
        assert beam.text == greedy.text == text
        assert beam.token_ids == greedy.token_ids
        assert beam.frames == greedy.frames


def test_prefix_beam_finds_the_sum_over_alignments_that_greedy_misses():
    a = TOK.encode("a")[0]
    # p(a) = 0.45 then 0.35, the rest blank: the best path is blank-blank ("", 0.55 * 0.65 = 0.3575), but
    # "a" has three alignments: a _ (0.2925), _ a (0.1925) and a a (0.1575), together 0.6425.
    frames = [{0: 0.55 - 1e-6, a: 0.45 - 1e-6}, {0: 0.65 - 1e-6, a: 0.35 - 1e-6}]
    lp = frames_to_log_probs(frames)[None]
    assert greedy_decode(lp, None, TOK)[0].text == ""
    hyp = prefix_beam_search(lp, None, TOK, beam=4)[0]
    assert hyp.text == "a"
    assert hyp.score == pytest.approx(math.log(0.6425), abs=1e-4)
    assert hyp.frames == (0,)  # frames of the strongest alignment, a _


def _brute_force(lp: torch.Tensor) -> dict[tuple[int, ...], float]:
    """Probability of every label sequence by enumerating all CTC paths."""
    totals: dict[tuple[int, ...], float] = {}
    frames, vocab = lp.shape
    p = lp.exp().tolist()
    for path in itertools.product(range(vocab), repeat=frames):
        labels = tuple(k for k, _ in itertools.groupby(path) if k != 0)
        totals[labels] = totals.get(labels, 0.0) + math.prod(p[t][k] for t, k in enumerate(path))
    return totals


def test_prefix_beam_equals_brute_force_on_tiny_vocab():
    # A 3-token "tokenizer" view: restrict the char vocabulary to blank, space and apostrophe.
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        small = torch.randn(5, 3, generator=gen).mul(1.5).log_softmax(-1)
        lp = torch.full((1, 5, V), -1e9)
        lp[0, :, :3] = small
        totals = _brute_force(small)
        best_labels, best_p = max(totals.items(), key=lambda kv: kv[1])
        hyp = prefix_beam_search(lp, None, TOK, beam=64, token_prune=100.0)[0]
        assert hyp.token_ids == best_labels
        assert hyp.score == pytest.approx(math.log(best_p), abs=1e-5)


@pytest.fixture(scope="module")
def word_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "words.arpa"
    write_arpa(LM_TEXT, path, order=3)
    return path


@pytest.fixture(scope="module")
def char_lm(tmp_path_factory):
    path = tmp_path_factory.mktemp("lm") / "chars.arpa"
    write_arpa(token_sentences(LM_TEXT, TOK), path, order=6)
    return path


def _misspelled_cat():
    """'the cat sat on the mat' whose 'a' in 'cat' looks slightly more like 'e'."""
    text = "the cat sat on the mat"
    e, a = TOK.encode("e")[0], TOK.encode("a")[0]
    k = char_index(text, 1, 1)
    lp = frames_to_log_probs(spelled_frames(text, confusions={k: {e: 0.5, a: 0.4}}), noise=0.2)
    return text, lp


def test_read_arpa_words(word_lm):
    assert set(read_arpa_words(word_lm)) == {w for s in LM_TEXT for w in s.split()}


def test_lexicon_decoder_fixes_a_spelling_greedy_gets_wrong(word_lm):
    text, lp = _misspelled_cat()
    assert greedy_decode(lp[None], None, TOK)[0].text == "the cet sat on the mat"
    decoder = LMBeamSearchDecoder(TOK, lm_path=word_lm, config=DecoderConfig(beam=20, lm_weight=1.0))
    hyp = decoder(lp[None], torch.tensor([lp.shape[0]]))[0]
    assert isinstance(hyp, Hypothesis)
    assert hyp.text == text
    assert list(hyp.token_ids) == TOK.encode(text)
    assert hyp.frames == token_frames(text)


def test_lexicon_free_decoder_with_token_lm(char_lm):
    text, lp = _misspelled_cat()
    decoder = LMBeamSearchDecoder(
        TOK, lm_path=char_lm, config=DecoderConfig(beam=20, lm_weight=1.0, lexicon=False)
    )
    hyp = decoder(lp[None])[0]
    assert hyp.text == text
    assert hyp.frames == token_frames(text)
    # Without the LM the same decoder keeps the acoustically better spelling.
    plain = LMBeamSearchDecoder(TOK, lm_path=None, config=DecoderConfig(beam=20, lexicon=False))
    assert plain(lp[None])[0].text == "the cet sat on the mat"


def test_lm_decoder_batch_with_padding_and_empty_input(word_lm):
    text, lp = _misspelled_cat()
    short = frames_to_log_probs(spelled_frames("the mat"), noise=0.2, seed=5)
    silence = frames_to_log_probs([{0: 0.95}] * 6)
    batch = torch.full((3, lp.shape[0], V), math.log(1 / V))
    batch[0] = lp
    batch[1, : short.shape[0]] = short
    batch[2, :6] = silence
    decoder = LMBeamSearchDecoder(TOK, lm_path=word_lm, config=DecoderConfig(beam=20, lm_weight=1.0))
    hyps = decoder(batch, torch.tensor([lp.shape[0], short.shape[0], 6]))
    assert [h.text for h in hyps] == [text, "the mat", ""]
    assert hyps[1].frames == token_frames("the mat")


def test_lexicon_decoder_with_sentencepiece_tokenizer(tmp_path, word_lm):
    sp = train_sentencepiece(LM_TEXT, vocab_size=40)
    text = "the cat sat on the mat"
    ids = sp.encode(text)
    frames = [{0: 0.95}]
    for i in ids:
        frames += [{i: 0.95}, {0: 0.95}]
    rest = lambda spec: (1 - sum(spec.values())) / (sp.vocab_size - len(spec))  # noqa: E731
    lp = torch.stack(
        [torch.tensor([spec.get(k, rest(spec)) for k in range(sp.vocab_size)]).log() for spec in frames]
    )
    decoder = LMBeamSearchDecoder(sp, lm_path=word_lm, config=DecoderConfig(beam=10, lm_weight=1.0))
    hyp = decoder(lp[None])[0]
    assert hyp.text == text
    assert list(hyp.token_ids) == ids


def test_tune_lm_weights_prefers_the_lm_when_it_helps(word_lm):
    # "sat" vs "set": both are lexicon words, the acoustics favour "set", only the LM knows "cat sat".
    refs = ["the cat sat on the mat", "the cat sat down", "a cat sat on a hat"]
    e, a = TOK.encode("e")[0], TOK.encode("a")[0]
    dev = []
    for n, ref in enumerate(refs):
        k = char_index(ref, 2, 1)
        dev.append(
            frames_to_log_probs(spelled_frames(ref, confusions={k: {e: 0.5, a: 0.4}}), noise=0.2, seed=n)
        )
    decoder = LMBeamSearchDecoder(TOK, lm_path=word_lm, config=DecoderConfig(beam=20))
    best, table = tune_lm_weights(
        dev, refs, {"lm_weight": [0.0, 1.5], "word_score": [0.0, 0.5]}, decoder=decoder
    )
    assert [(r["lm_weight"], r["word_score"]) for r in table] == [
        (0.0, 0.0),
        (0.0, 0.5),
        (1.5, 0.0),
        (1.5, 0.5),
    ]
    assert table[0]["wer"] == pytest.approx(3 / 16)  # "set" in all three
    assert table[2]["wer"] == 0.0
    assert best == DecoderConfig(beam=20, lm_weight=1.5, word_score=0.0)
    with pytest.raises(ValueError, match="unknown grid keys"):
        tune_lm_weights(dev, refs, {"beam": [1]}, decoder=decoder)


def test_decoders_check_shapes():
    lp = torch.zeros(1, 4, V - 1)
    with pytest.raises(ValueError, match="classes"):
        greedy_decode(lp, None, TOK)
    with pytest.raises(ValueError, match="lengths"):
        prefix_beam_search(torch.zeros(2, 4, V), torch.tensor([4, 5]), TOK)


def test_lexicon_decoder_scores_the_last_word_with_the_lm(word_lm):
    # The final word has no "|" after it in CTC targets; the decoder must still complete it as a
    # lexicon word and give it an LM score ("on the mat" is known, "on the hat" is not).
    text = "the cat sat on the mat"
    h, m = TOK.encode("h")[0], TOK.encode("m")[0]
    k = char_index(text, 5, 0)
    frames = spelled_frames(text, confusions={k: {h: 0.5, m: 0.4}})[:-1]  # ends on the last letter
    lp = frames_to_log_probs(frames, noise=0.2)
    assert greedy_decode(lp[None], None, TOK)[0].text == "the cat sat on the hat"
    decoder = LMBeamSearchDecoder(TOK, lm_path=word_lm, config=DecoderConfig(beam=20, lm_weight=1.0))
    hyp = decoder(lp[None])[0]
    assert hyp.text == text
    assert hyp.frames == token_frames(text)


def test_with_config_shares_the_lm_and_configs_round_trip_through_json(word_lm):
    import dataclasses
    import json

    decoder = LMBeamSearchDecoder(TOK, lm_path=word_lm, config=DecoderConfig(beam=20))
    other = decoder.with_config(DecoderConfig(beam=5, lm_weight=0.5))
    assert other._resources is decoder._resources
    assert other.config.beam == 5
    with pytest.raises(ValueError, match="lexicon-free"):
        decoder.with_config(DecoderConfig(lexicon=False))
    config = DecoderConfig(beam=7, lm_weight=1.25, word_score=-0.5, unk_score=-10.0)
    assert DecoderConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config


def test_lexicon_decoder_never_returns_a_word_cut_off_at_the_end(word_lm):
    # The audio stops inside "table": flashlight may end on a hypothesis that is still inside a word.
    # Whatever it picks, the text holds only complete lexicon words.
    lexicon = set(read_arpa_words(word_lm))
    for cut in range(1, 5):
        text = "set the " + "table"[:cut]
        lp = frames_to_log_probs(spelled_frames(text), noise=0.1, seed=cut)
        for beam in (1, 5, 20):
            decoder = LMBeamSearchDecoder(TOK, lm_path=word_lm, config=DecoderConfig(beam=beam, lm_weight=1.0))
            hyp = decoder(lp[None], torch.tensor([lp.shape[0]]))[0]
            assert set(hyp.text.split()) <= lexicon, (text, beam, hyp.text)
            assert len(hyp.frames) == len(hyp.token_ids)
