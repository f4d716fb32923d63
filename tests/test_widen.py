"""Growing a trained Conv1D+BiLSTM (``asr.widen``): a wider LSTM that computes what the narrow one did."""

from __future__ import annotations

import pytest
import torch

from asr import widen
from asr.bundle import load_recognizer
from asr.model import ConvBiLSTM, ConvBiLSTMConfig
from audio.training import CheckpointManager
from tests.asr_fixtures import TRAIN_OVERRIDES, train_args


def _model(hidden: int, seed: int = 0) -> ConvBiLSTM:
    torch.manual_seed(seed)
    return ConvBiLSTM(ConvBiLSTMConfig(n_mels=20, vocab_size=7, conv_channels=(16,), conv_kernels=(3,),
                                       conv_strides=(2,), lstm_hidden=hidden, lstm_layers=3, dropout=0.1)).eval()


def test_widened_model_computes_what_the_narrow_one_did_and_can_learn():
    narrow = _model(8)
    wide = _model(13, seed=1)
    wide.load_state_dict(widen.widen_lstm_state(narrow.state_dict(), 13))
    feats = torch.randn(3, 40, 20)
    lengths = torch.tensor([40, 31, 17])  # packed at inference: padding must not leak either
    with torch.no_grad():
        ref, ref_len = narrow(feats, lengths)
        out, out_len = wide(feats, lengths)
    assert torch.equal(ref_len, out_len)
    assert torch.allclose(ref, out, atol=1e-5)

    # The new units are live: their fresh weights differ from a zero start, and the zero weights out
    # of them (into the old units' gates and the output layer) get gradients.
    wide.train()
    logp, lens = wide(feats, lengths)
    (-logp[..., 1].mean()).backward()
    assert wide.head.weight.grad[:, 8:13].abs().sum() > 0
    assert wide.lstm.weight_hh_l1.grad[:8, 8:13].abs().sum() > 0  # old input gates <- new units
    assert wide.lstm.weight_ih_l1.grad[:8, 13 + 8:].abs().sum() > 0  # <- the layer below's new backward units
    assert wide.lstm.weight_hh_l0[13:13 + 8].abs().sum() > 0  # an old gate block moved to its new place


def test_widen_refuses_what_it_cannot_grow():
    narrow = _model(8).state_dict()
    with pytest.raises(ValueError, match="smaller than the model's 8"):
        widen.widen_lstm_state(narrow, 6)
    with pytest.raises(ValueError, match="no LSTM"):
        widen.widen_lstm_state({"head.weight": torch.zeros(3, 4)}, 16)
    same = widen.widen_lstm_state(narrow, 8)  # no growth is the identity
    assert all(torch.equal(same[k], v) for k, v in narrow.items())


def test_widened_checkpoint_trains_with_a_wider_config(tiny_exp, asr_corpus, tmp_path):
    """The CLI's checkpoint is an ``asr.train --init`` for a config with the new width, and the
    recogniser trained from it keeps the narrow one's feature statistics."""
    from asr.train import main as train_main

    out = tmp_path / "wide" / "widened.pt"
    assert widen.main(["--model", str(tiny_exp / "final.pt"), "--lstm-hidden", "96", "--out", str(out)]) == 0
    state = CheckpointManager.load(out)
    narrow = CheckpointManager.load(tiny_exp / "final.pt")
    assert state["model"]["model.lstm.weight_hh_l0"].shape[1] == 96
    assert torch.equal(state["model"]["feat_mean"], narrow["model"]["feat_mean"])

    exp = tmp_path / "exp"
    args = train_args(asr_corpus, exp, *TRAIN_OVERRIDES, "model.lstm_hidden=96", "train.total_steps=2", "train.checkpoint_every=2",
                      "train.eval_every=2", "train.average_last=1")
    assert train_main([*args, "--init", str(out)]) == 0
    trained = load_recognizer(exp / "final.pt").recognizer
    assert trained.model.cfg.lstm_hidden == 96
    assert torch.equal(trained.feat_mean, narrow["model"]["feat_mean"])

    # A missing model or a narrowing is an error that names the file, and writes nothing.
    bad = tmp_path / "bad.pt"
    assert widen.main(["--model", str(tmp_path / "nope"), "--lstm-hidden", "96", "--out", str(bad)]) == 2
    assert widen.main(["--model", str(out), "--lstm-hidden", "32", "--out", str(bad)]) == 2
    assert not bad.exists()
