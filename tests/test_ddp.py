"""Distributed data parallel on the CPU (gloo): two processes on half-batches give the gradients of
one process on the whole batch, and ``torchrun -m asr.train`` trains and checkpoints.

The gradient test runs the recogniser in eval mode. In training mode two things legitimately depend on
how a batch is split: BatchNorm normalises with the statistics of the (half-)batch, and the LSTM runs
padded rather than packed, so an utterance's backward direction starts in however much padding its
batch has. Neither is a DDP property; eval mode removes both and leaves the gradient averaging exact.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.multiprocessing as mp

from asr.model import ConvBiLSTM, ConvBiLSTMConfig
from asr.recognizer import Recognizer
from asr.train import ctc_loss
from audio.features import FeatureConfig
from audio.training import CheckpointManager
from tests.asr_fixtures import ROOT, train_args

WORLD = 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_recognizer() -> Recognizer:
    torch.manual_seed(0)
    cfg = ConvBiLSTMConfig(n_mels=20, vocab_size=29, conv_channels=(16,), conv_kernels=(5,), conv_strides=(2,),
                           lstm_hidden=16, lstm_layers=2, dropout=0.0)
    return Recognizer(ConvBiLSTM(cfg), FeatureConfig(n_mels=20)).eval()


def batch() -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Four waves of different lengths (zero-padded ``(4, samples)``), their lengths, CTC targets."""
    gen = torch.Generator().manual_seed(1)
    lengths = torch.tensor([8000, 5600, 7200, 4000])
    t = torch.arange(8000) / 16000
    waves = torch.stack([0.3 * torch.sin(2 * math.pi * (150 + 40 * i) * t) for i in range(4)])
    waves = waves + 0.05 * torch.randn(waves.shape, generator=gen)
    waves = waves * (torch.arange(8000)[None, :] < lengths[:, None])
    targets = [torch.randint(2, 29, (n,), generator=gen) for n in (9, 6, 8, 4)]
    return waves, lengths, targets


def gradients(model: torch.nn.Module, recognizer: Recognizer, rows: slice) -> dict[str, torch.Tensor]:
    waves, lengths, targets = batch()
    log_probs, out_lengths = model(waves[rows], lengths[rows])
    loss = ctc_loss(log_probs, out_lengths, targets[rows], blank=0)
    loss.backward()
    return {n: p.grad.detach().clone() for n, p in recognizer.named_parameters()}


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    from torch.nn.parallel import DistributedDataParallel

    from audio.training import init_distributed

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(WORLD), RANK=str(rank),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    got_rank, world = init_distributed(torch.device("cpu"))
    assert (got_rank, world) == (rank, WORLD)
    recognizer = build_recognizer()
    if rank == 1:
        # DDP broadcasts rank 0's parameters when it wraps the model, so this must not matter.
        with torch.no_grad():
            for p in recognizer.parameters():
                p.add_(1.0)
    model = DistributedDataParallel(recognizer)
    half = 4 // WORLD
    grads = gradients(model, recognizer, slice(rank * half, (rank + 1) * half))
    torch.save(grads, Path(out_dir) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_ddp_gradients_on_half_batches_equal_the_full_batch(tmp_path):
    # fork: the workers inherit the imported modules (spawn would spend ~4 s per process importing torch),
    # including torch._dynamo, which DistributedDataParallel imports (~2 s) when it wraps a model.
    import torch._dynamo  # noqa: F401

    mp.start_processes(_ddp_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True,
                       start_method="fork")
    recognizer = build_recognizer()
    full = gradients(recognizer, recognizer, slice(0, 4))
    lone = build_recognizer()
    first_half = gradients(lone, lone, slice(0, 2))
    assert not torch.allclose(first_half["model.head.weight"], full["model.head.weight"], atol=1e-4)
    for rank in range(WORLD):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert set(got) == set(full)
        for name, grad in full.items():
            torch.testing.assert_close(got[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_torchrun_smoke(asr_corpus, tmp_path):
    exp = tmp_path / "exp"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}", "--nnodes=1",
           "--master_addr=127.0.0.1", f"--master_port={free_port()}", "-m", "asr.train",
           *train_args(asr_corpus, exp, "train.total_steps=4", "train.checkpoint_every=2", "train.max_seconds=8")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [CheckpointManager.load(p)["step"] for p in CheckpointManager(exp).steps()] == [2, 4]
    final = CheckpointManager.load(exp / "final.pt")
    assert final["step"] == 4 and final["averaged"] == ["step-00000002.pt", "step-00000004.pt"]
    assert not list(exp.rglob("*.tmp"))
    assert proc.stderr.count("resumed from") == 0
    # Both ranks trained: each process logs the model line once.
    assert proc.stderr.count("model: conv_bilstm") == WORLD

