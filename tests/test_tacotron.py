"""Tacotron blocks: shapes, backward pass, batch-size independence, inference guards, losses, alignment scores."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from tts.alignment import alignment_scores
from tts.tacotron import (
    _CBHG,
    Tacotron,
    TacotronConfig,
    _Attention,
    _BiGRU,
    _Highway,
    _Prenet,
    delta_loss,
    guided_attention_loss,
    guided_attention_weights,
    tacotron_loss,
)

TINY = TacotronConfig(
    n_symbols=40, n_mels=12, n_linear=33, embedding_dim=16, encoder_prenet=(24, 16), encoder_bank_size=4,
    encoder_channels=8, encoder_highways=2, encoder_gru=16, attention_rnn=24, attention_dim=16,
    location_filters=4, location_kernel=7, decoder_prenet=(24, 16), decoder_rnn=24, decoder_layers=2, r=3,
    postnet_bank_size=3, postnet_channels=8, postnet_highways=1, postnet_gru=12, max_decoder_steps=20,
)  # fmt: skip


def make_batch(cfg: TacotronConfig = TINY, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    text_lengths = torch.tensor([9, 5, 7])
    mel_lengths = torch.tensor([20, 11, 16])  # 20 is not a multiple of r = 3: the last step is part padding
    ids = torch.randint(3, cfg.n_symbols, (3, 9), generator=g)
    mels = torch.rand(3, 20, cfg.n_mels, generator=g)
    linears = torch.rand(3, 20, cfg.n_linear, generator=g)
    for b in range(3):  # padding holds junk on purpose: it must not matter
        ids[b, text_lengths[b] :] = 0
        mels[b, mel_lengths[b] :] = 5.0
        linears[b, mel_lengths[b] :] = 5.0
    return ids, text_lengths, mels, mel_lengths, linears


def model(cfg: TacotronConfig = TINY, seed: int = 0) -> Tacotron:
    torch.manual_seed(seed)
    return Tacotron(cfg)


# --- shapes ---------------------------------------------------------------------------------------


def test_block_shapes():
    x = torch.rand(2, 7, 10)
    lengths = torch.tensor([7, 4])
    assert _Prenet(10, (20, 6), 0.5)(x, dropout=True).shape == (2, 7, 6)
    assert _Highway(10)(x).shape == (2, 7, 10)
    assert _BiGRU(10, 5)(x, lengths).shape == (2, 7, 10)
    cbhg = _CBHG(10, bank_size=4, channels=3, projections=(6, 10), highways=2, gru_dim=5)
    out = cbhg(x, lengths)
    assert out.shape == (2, 7, 10)
    assert torch.all(out[1, 4:] == 0)  # padded steps are zero


def test_attention_shapes_and_mask():
    attention = _Attention(TINY, memory_dim=8)
    memory = torch.rand(2, 6, 8)
    mask = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    prepared = attention.prepare(memory, mask)
    previous = torch.softmax(torch.rand(2, 6), -1) * mask
    context, weights = attention(torch.rand(2, TINY.attention_rnn), prepared, memory, previous, previous)
    assert context.shape == (2, 8) and weights.shape == (2, 6)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    assert torch.all(weights[1, 4:] == 0)  # padded encoder steps get no attention


def test_location_features_equal_conv_then_dense():
    """The per-step GEMM on windows of the weights is the paper's conv + projection."""
    attention = _Attention(TINY, memory_dim=8)
    weights = torch.rand(3, 2, 11)
    expected = attention.location_dense(attention.location_conv(weights).transpose(1, 2))  # (B, N, A)
    prepared = attention.prepare(torch.rand(3, 11, 8), torch.ones(3, 11, dtype=torch.bool))
    k = TINY.location_kernel
    windows = F.pad(weights, (k // 2, k // 2)).unfold(2, k, 1).permute(0, 2, 1, 3).flatten(2)
    torch.testing.assert_close(windows @ prepared["location"], expected, atol=1e-6, rtol=1e-5)


def test_forward_shapes():
    ids, text_lengths, mels, mel_lengths, _ = make_batch()
    out = model()(ids, text_lengths, mels, mel_lengths)
    assert out.mel.shape == (3, 21, TINY.n_mels)  # 20 frames rounded up to 7 steps of 3
    assert out.linear.shape == (3, 21, TINY.n_linear)
    assert out.stop_logits.shape == (3, 7)
    assert out.alignments.shape == (3, 7, 9)
    torch.testing.assert_close(out.alignments.sum(-1), torch.ones(3, 7))


def test_content_attention_option():
    cfg = replace(TINY, attention="content")
    net = model(cfg)
    assert not any("location" in name for name, _ in net.named_parameters())
    ids, text_lengths, mels, mel_lengths, _ = make_batch(cfg)
    assert net(ids, text_lengths, mels, mel_lengths).alignments.shape == (3, 7, 9)
    with pytest.raises(ValueError):
        TacotronConfig(attention="gmm")


# --- backward -------------------------------------------------------------------------------------


def test_backward_reaches_every_parameter():
    net = model()
    ids, text_lengths, mels, mel_lengths, linears = make_batch()
    out = net(ids, text_lengths, mels, mel_lengths)
    losses = tacotron_loss(out, mels, linears, mel_lengths, text_lengths, r=TINY.r)
    losses["loss"].backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


# --- batch-size independence ----------------------------------------------------------------------


def test_bigru_equals_packed_bidirectional_gru():
    ours = _BiGRU(6, 5)
    ref = torch.nn.GRU(6, 5, batch_first=True, bidirectional=True)
    with torch.no_grad():
        for name in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"):
            getattr(ref, name).copy_(getattr(ours.forward_gru, name))
            getattr(ref, name + "_reverse").copy_(getattr(ours.backward_gru, name))
    x, lengths = torch.rand(3, 8, 6), torch.tensor([8, 3, 5])
    packed, _ = ref(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    expected, _ = pad_packed_sequence(packed, batch_first=True, total_length=8)
    torch.testing.assert_close(ours(x, lengths), expected, atol=1e-6, rtol=1e-5)


def test_encoder_is_batch_size_independent():
    net = model().eval()
    ids, text_lengths, *_ = make_batch()
    with torch.no_grad():
        batched = net.encode(ids, text_lengths)
        for b in range(3):
            n = int(text_lengths[b])
            alone = net.encode(ids[b : b + 1, :n], text_lengths[b : b + 1])
            torch.testing.assert_close(batched[b : b + 1, :n], alone, atol=1e-5, rtol=1e-5)


def test_teacher_forced_decoding_is_batch_size_independent():
    net = model().eval()
    ids, text_lengths, mels, mel_lengths, _ = make_batch()
    with torch.no_grad():
        batched = net(ids, text_lengths, mels, mel_lengths, prenet_dropout=False)
        for b in range(3):
            n, t = int(text_lengths[b]), int(mel_lengths[b])
            steps = -(-t // TINY.r)
            alone = net(
                ids[b : b + 1, :n],
                text_lengths[b : b + 1],
                mels[b : b + 1, :t],
                mel_lengths[b : b + 1],
                prenet_dropout=False,
            )
            torch.testing.assert_close(batched.mel[b, :t], alone.mel[0, :t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(batched.linear[b, :t], alone.linear[0, :t], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(
                batched.stop_logits[b, :steps], alone.stop_logits[0], atol=1e-5, rtol=1e-5
            )
            torch.testing.assert_close(
                batched.alignments[b, :steps, :n], alone.alignments[0], atol=1e-5, rtol=1e-5
            )
            assert torch.all(batched.alignments[b, :, n:] == 0)


def test_batched_inference_equals_single_items():
    net = model().eval()
    ids, text_lengths, *_ = make_batch()
    batched = net.inference(ids, text_lengths, stop_threshold=2.0, prenet_dropout=False)
    assert batched.mel.shape == (3, TINY.max_decoder_steps * TINY.r, TINY.n_mels)
    assert not batched.stopped.any()
    for b in range(3):
        n = int(text_lengths[b])
        alone = net.inference(ids[b, :n], stop_threshold=2.0, prenet_dropout=False)
        torch.testing.assert_close(batched.mel[b], alone.mel[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(batched.linear[b], alone.linear[0], atol=1e-5, rtol=1e-5)


def test_full_feedback_equals_free_running_inference():
    """Scheduled sampling at probability 1 feeds every step its own previous frame: free running."""
    net = model().eval()
    ids, text_lengths, mels, mel_lengths, _ = make_batch()
    steps = -(-int(mel_lengths.max()) // TINY.r)
    with torch.no_grad():
        fed = net(ids, text_lengths, mels, mel_lengths, prenet_dropout=False, feedback=1.0)
    free = net.inference(ids, text_lengths, stop_threshold=2.0, max_decoder_steps=steps, prenet_dropout=False)
    torch.testing.assert_close(fed.mel, free.mel, atol=1e-5, rtol=1e-5)


def test_negligible_feedback_equals_teacher_forcing_and_trains():
    net = model().eval()  # the encoder's pre-net dropout follows train/eval
    ids, text_lengths, mels, mel_lengths, linears = make_batch()
    with torch.no_grad():
        forced = net(ids, text_lengths, mels, mel_lengths, prenet_dropout=False)
        stepwise = net(ids, text_lengths, mels, mel_lengths, prenet_dropout=False, feedback=1e-12)
    torch.testing.assert_close(stepwise.mel, forced.mel, atol=1e-6, rtol=1e-6)
    out = net.train()(ids, text_lengths, mels, mel_lengths, feedback=0.5)
    tacotron_loss(out, mels, linears, mel_lengths, text_lengths, r=TINY.r)["loss"].backward()
    assert all(p.grad is not None for p in net.parameters())


# --- inference guards -----------------------------------------------------------------------------


def test_inference_stops_on_the_stop_token_and_at_the_step_guard():
    net = model().eval()
    ids = torch.randint(3, TINY.n_symbols, (6,))
    guarded = net.inference(ids, stop_threshold=2.0, max_decoder_steps=5)
    assert guarded.lengths.tolist() == [5 * TINY.r] and not guarded.stopped.any()
    with torch.no_grad():
        net.decoder.stop_proj.bias.fill_(50.0)  # sigmoid = 1 at once
    stopped = net.inference(ids)
    assert stopped.stopped.all() and stopped.lengths.tolist() == [TINY.r]
    assert stopped.mel.shape[1] == TINY.r and stopped.alignments.shape == (1, 1, 6)


def test_prenet_dropout_stays_on_at_inference_and_follows_the_generator():
    net = model().eval()
    ids = torch.randint(3, TINY.n_symbols, (6,))

    def run(seed: int) -> torch.Tensor:
        return net.inference(ids, stop_threshold=2.0, generator=torch.Generator().manual_seed(seed)).mel

    torch.testing.assert_close(run(1), run(1))
    assert not torch.allclose(run(1), run(2))  # dropout is active although the model is in eval mode


# --- losses ---------------------------------------------------------------------------------------


def test_guided_attention_weights():
    w = guided_attention_weights(torch.tensor([10, 5]), torch.tensor([10, 8]), sigma=0.2)
    assert w.shape == (2, 10, 10)
    diagonal = w[0, torch.arange(10), torch.arange(10)]
    assert torch.all(diagonal == 0)
    assert torch.all((w >= 0) & (w < 1))
    assert w[0, 0, 9] > w[0, 0, 5] > w[0, 0, 1] > 0  # grows away from the diagonal
    assert torch.all(w[1, 8:] == 0) and torch.all(w[1, :, 5:] == 0)  # nothing outside the valid region


def test_guided_attention_loss_prefers_the_diagonal():
    steps, n = 12, 8
    lengths_t, lengths_n = torch.tensor([steps]), torch.tensor([n])
    diagonal = torch.zeros(1, steps, n)
    diagonal[0, torch.arange(steps), (torch.arange(steps) * n) // steps] = 1
    anti = diagonal.flip(-1)
    uniform = torch.full((1, steps, n), 1.0 / n)
    losses = [guided_attention_loss(a, lengths_n, lengths_t).item() for a in (diagonal, uniform, anti)]
    assert losses[0] < 0.01 < losses[1] < losses[2]


def test_loss_ignores_padding():
    net = model().eval()
    ids, text_lengths, mels, mel_lengths, linears = make_batch()
    out = net(ids, text_lengths, mels, mel_lengths, prenet_dropout=False)
    first = tacotron_loss(out, mels, linears, mel_lengths, text_lengths, r=TINY.r)
    junk_mels, junk_linears = mels.clone(), linears.clone()
    for b in range(3):
        junk_mels[b, mel_lengths[b] :] = -7.0
        junk_linears[b, mel_lengths[b] :] = 9.0
    second = tacotron_loss(out, junk_mels, junk_linears, mel_lengths, text_lengths, r=TINY.r)
    for key in first:
        torch.testing.assert_close(first[key], second[key])


def test_priority_loss_weighs_the_low_bins_half():
    net = model().eval()
    ids, text_lengths, mels, mel_lengths, linears = make_batch()
    out = net(ids, text_lengths, mels, mel_lengths, prenet_dropout=False)

    def linear_loss(target, bins=0):
        return tacotron_loss(out, mels, target, mel_lengths, text_lengths, r=TINY.r, priority_bins=bins)[
            "linear"
        ]

    # The same error in the 23 top bins outweighs it in the 10 low ones, until the low ones count half.
    high, low = linears.clone(), linears.clone()
    high[..., 10:] += 1.0
    low[..., :10] += 1.0
    assert linear_loss(high) > linear_loss(low)
    assert linear_loss(low, bins=10) > linear_loss(high, bins=10)
    # Every bin in the priority band: the loss is the plain one.
    torch.testing.assert_close(linear_loss(linears, bins=TINY.n_linear), linear_loss(linears))


def test_delta_loss_penalises_blur_that_plain_l1_forgives():
    torch.manual_seed(0)
    target = torch.rand(2, 30, 16)
    valid = torch.ones(2, 30, 1)
    valid[1, 20:] = 0.0  # padding past the second item's end does not count

    def plain(x):
        return ((x - target).abs() * valid).sum() / (valid.sum() * 16)

    # A blurred copy (moving average over 5 frames and 3 bands), and a copy shifted by twice its plain L1:
    blurred = F.avg_pool2d(target.unsqueeze(1), (5, 3), stride=1, padding=(2, 1), count_include_pad=False)[
        :, 0
    ]
    shifted = target + 2 * plain(blurred)
    assert plain(blurred) < plain(shifted)
    assert delta_loss(blurred, target, valid) > 0.1
    torch.testing.assert_close(delta_loss(shifted, target, valid), torch.tensor(0.0))
    garbage = target.clone()
    garbage[1, 20:] = 5.0
    torch.testing.assert_close(delta_loss(garbage, target, valid), torch.tensor(0.0))


def test_tacotron_loss_adds_the_delta_term_only_when_weighted():
    net = model().eval()
    ids, text_lengths, mels, mel_lengths, linears = make_batch()
    out = net(ids, text_lengths, mels, mel_lengths, prenet_dropout=False)
    plain = tacotron_loss(out, mels, linears, mel_lengths, text_lengths, r=TINY.r)
    weighted = tacotron_loss(out, mels, linears, mel_lengths, text_lengths, r=TINY.r, delta_weight=2.0)
    assert "delta" not in plain and weighted["delta"] > 0
    torch.testing.assert_close(weighted["loss"], plain["loss"] + 2.0 * weighted["delta"])
    both = tacotron_loss(
        out, mels, linears, mel_lengths, text_lengths, r=TINY.r, delta_weight=2.0, linear_delta_weight=3.0
    )
    assert both["linear_delta"] > 0
    torch.testing.assert_close(both["loss"], weighted["loss"] + 3.0 * both["linear_delta"])
    # With priority bins the linear term looks at those bins only: a change above them leaves it alone.
    low = tacotron_loss(
        out, mels, linears, mel_lengths, text_lengths, r=TINY.r, priority_bins=5, linear_delta_weight=1.0
    )
    noisy = linears.clone()
    noisy[..., 5:] += torch.rand_like(noisy[..., 5:])
    moved = tacotron_loss(
        out, mels, noisy, mel_lengths, text_lengths, r=TINY.r, priority_bins=5, linear_delta_weight=1.0
    )
    torch.testing.assert_close(moved["linear_delta"], low["linear_delta"])
    assert moved["linear"] != low["linear"]


# --- alignment scores -----------------------------------------------------------------------------


def test_alignment_scores_tell_good_from_bad():
    steps, n = 40, 20
    diagonal = torch.zeros(steps, n)
    diagonal[torch.arange(steps), (torch.arange(steps) * n) // steps] = 1.0
    good = alignment_scores(diagonal)
    assert good == {"monotonic": 1.0, "focus_rate": 1.0, "diagonality": 1.0, "end_reached": 1.0}
    stuck = torch.zeros(steps, n)
    stuck[:, 2] = 1.0
    assert alignment_scores(stuck)["diagonality"] < 0.25 and alignment_scores(stuck)["end_reached"] == 0.0
    jumpy = diagonal[torch.randperm(steps, generator=torch.Generator().manual_seed(0))]
    assert alignment_scores(jumpy)["monotonic"] < 0.7
    uniform = alignment_scores(torch.full((steps, n), 1.0 / n))
    assert uniform["focus_rate"] == pytest.approx(1.0 / n)
    assert uniform["diagonality"] < 0.3
