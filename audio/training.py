"""Training pieces shared by every model: device and threads, distributed set-up, the learning-rate
schedule, atomic checkpoints with resume and averaging, and logging (TensorBoard, JSON lines, PNG curves).

A checkpoint is a plain dict of tensors and JSON-safe values, written with ``torch.save`` to ``x.tmp``
then renamed, and read back with ``weights_only=True``, so no pickled code is ever executed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from audio.atomic import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "choose_device",
    "set_threads",
    "init_distributed",
    "is_main_process",
    "warmup_decay",
    "CheckpointManager",
    "average_state_dicts",
    "mean_state_dicts",
    "TrainLogger",
    "load_init_weights",
    "read_weights",
    "init_label",
]


def add_trainer_arguments(parser, *, config_help: str, exp_help: str, train_help: str, dev_help: str,
                          device_default: str = "auto", init: bool = False, threads_default: int | None = 0,
                          threads_help: str = "torch threads (0: one per core left free by the data-loader "
                                              "workers)", stoppable: bool = False) -> None:
    """The options every trainer shares: --config, --exp-dir, --train, --dev, --set, --device and --threads;
    with ``init``, also --init (start from trained weights, see :func:`load_init_weights`); with
    ``stoppable``, also --stop-after-steps and --no-progress."""
    parser.add_argument("--config", required=True, help=config_help)
    parser.add_argument("--exp-dir", required=True, help=exp_help)
    parser.add_argument("--train", required=True, help=train_help)
    parser.add_argument("--dev", help=dev_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set train.total_steps=100")
    parser.add_argument("--device", default=device_default, help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=threads_default, help=threads_help)
    if init:
        parser.add_argument("--init", metavar="PATH",
                            help="start from these weights: a bundled model folder, its model.safetensors, "
                                 "or a checkpoint .pt (the optimizer starts afresh). Ignored when --exp-dir "
                                 "already has checkpoints: resuming wins")
    if stoppable:
        parser.add_argument("--stop-after-steps", type=int, default=0,
                            help="end this run after N steps (with a checkpoint); rerun to continue")
        parser.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def choose_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was asked for but no CUDA device is available")
    return torch.device(name)


def set_threads(n: int | None = None) -> int:
    """Set intra-op threads to ``n`` (default: the cores this process may use, divided among the
    processes of a distributed run) and inter-op threads to 1. On a 2-core machine oversubscription
    makes PyTorch 10-30x slower, so every entry point calls this once."""
    if n is None or n <= 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        n = max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set once in this process
    return n


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the process group when launched by ``torchrun``. Returns ``(rank, world_size)``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size()


def is_main_process() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def warmup_decay(step: int, *, warmup: int, total: int, final_ratio: float = 0.05) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup`` steps, then cosine decay to
    ``final_ratio`` at ``total`` steps (and flat after)."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class CheckpointManager:
    """``exp_dir/checkpoints/step-00001234.pt`` files, the newest ``keep`` of them kept, plus
    ``best.pt`` chosen by a metric (lower is better)."""

    PATTERN = re.compile(r"step-(\d+)\.pt$")

    def __init__(self, exp_dir: str | os.PathLike, keep: int = 5):
        self.dir = Path(exp_dir) / "checkpoints"
        self.keep = keep

    def steps(self) -> list[Path]:
        """Saved step checkpoints, oldest first."""
        if not self.dir.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.dir.iterdir() if (m := self.PATTERN.search(p.name))]
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        steps = self.steps()
        return steps[-1] if steps else None

    def save(self, state: dict[str, Any], step: int) -> Path:
        path = self.dir / f"step-{step:08d}.pt"
        _atomic_save(state, path)
        for old in self.steps()[: -self.keep]:
            old.unlink()
        return path

    def save_best(self, state: dict[str, Any]) -> Path:
        path = self.dir / "best.pt"
        _atomic_save(state, path)
        return path

    @staticmethod
    def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
        return torch.load(path, map_location=map_location, weights_only=True)


def read_weights(path: str | os.PathLike, *, label: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """The trained weights in ``path``: a bundle folder holding ``model.safetensors``, a ``.safetensors``
    file, or a checkpoint ``.pt`` with a ``model`` entry. Returns the file read and its tensors as stored
    (bundles may be fp16). Errors name the file, after ``label`` (the option that gave it)."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.exists():
        raise FileNotFoundError(f"{label}: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return path, load_file(str(path))
    state = CheckpointManager.load(path)
    if "model" not in state:
        raise ValueError(f"{label}: {path} is not a checkpoint (no 'model' entry)")
    return path, state["model"]


def load_init_weights(module: torch.nn.Module, path: str | os.PathLike, skip: tuple[str, ...] = ()) -> Path:
    """Load trained weights into ``module`` to continue training from them (a longer run carried over
    sessions, or fine-tuning). ``path`` is a bundle folder holding ``model.safetensors``, a
    ``.safetensors`` file, or a checkpoint ``.pt`` with a ``model`` entry. Floating tensors are cast to
    the module's dtypes (bundles may be fp16). The architecture must match exactly, except for the
    submodules named in ``skip`` (e.g. ``("postnet",)``), which keep their fresh initialisation whatever
    the file holds for them; a mismatch raises a ``ValueError`` naming the file. Returns the file read."""
    path, weights = read_weights(path, label="--init")

    def skipped(key: str) -> bool:
        return any(key == name or key.startswith(name + ".") for name in skip)

    own = {k: v for k, v in module.state_dict().items() if not skipped(k)}
    weights = {k: v for k, v in weights.items() if not skipped(k)}
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [k for k in own if k in weights and own[k].shape != weights[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f"--init: {path} does not fit this model (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {shapes[:5]}); are the config's model sizes the same?"
        )
    module.load_state_dict({k: v.to(own[k].dtype) if v.is_floating_point() else v for k, v in weights.items()},
                           strict=not skip)
    log.info("initialised %d tensors from %s%s", len(weights), path, f" (not {', '.join(skip)})" if skip else "")
    return path


def init_label(path: str | os.PathLike | None) -> str | None:
    """How a checkpoint records its ``--init`` weights: relative to the repository when inside it, so
    a model card reads ``asr/pretrained/...`` rather than one machine's absolute path."""
    if not path:
        return None
    root = Path(__file__).resolve().parents[1]
    resolved = Path(path).resolve()
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def grow_checkpoint(model: str | os.PathLike, out: Path, grow, **meta: Any) -> tuple[int, int]:
    """Read ``model``'s weights (a bundle folder or a checkpoint) as fp32, ``grow(state) -> state``, and write
    ``{"model": grown, "widened_from": ..., **meta}`` to ``out`` atomically (what ``--init`` reads).
    Returns the numbers of floating-point values before and after. Raises what ``grow`` or the reading
    raises (``FileNotFoundError``, ``ValueError``)."""
    _, stored = read_weights(model, label="--model")
    state = {k: v.float() if v.is_floating_point() else v for k, v in stored.items()}
    grown = grow(state)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_save({"model": grown, "widened_from": init_label(model), **meta}, out)

    def count(weights: dict[str, torch.Tensor]) -> int:
        return sum(v.numel() for v in weights.values() if v.is_floating_point())

    return count(state), count(grown)


def _atomic_save(obj: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def start_run(cfg: Any, args, *, num_workers: int, seed: int) -> tuple[torch.device, int, int, Path, bool]:
    """A trainer's first steps: pick the device, join the distributed group, set the threads, seed,
    and (main process) create ``args.exp_dir`` with the config saved in it.

    Threads: one intra-op thread per core not taken by a data-loader worker (``args.threads`` wins):
    with 2 cores, 2 OpenMP threads plus a busy worker run ~15x slower than 1 thread (measured), as the
    threads spin-wait for a core. Returns ``(device, rank, world, exp_dir, is_main_process)``.
    """
    import random

    from audio.config import save_config

    device = choose_device(args.device)
    rank, world = init_distributed(device)
    cores = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    set_threads(args.threads or max(1, cores - num_workers))
    torch.manual_seed(seed + rank)
    random.seed(seed + rank)
    exp_dir = Path(args.exp_dir)
    main_proc = is_main_process()
    if main_proc:
        exp_dir.mkdir(parents=True, exist_ok=True)
        save_config(exp_dir / "config.yaml", cfg)
    return device, rank, world, exp_dir, main_proc


def write_final(exp_dir: str | os.PathLike, checkpoints: CheckpointManager, average_last: int,
                drop: tuple[str, ...] = ("optimizer", "scheduler", "sampler", "rng")) -> Path:
    """Write ``exp_dir/final.pt``: the newest checkpoint with its model replaced by the average of the
    last ``average_last`` step checkpoints and the training-only entries ``drop`` removed; and
    ``final.txt`` naming the averaged files. Returns the path of ``final.pt``."""
    exp_dir = Path(exp_dir)
    last = checkpoints.steps()[-average_last:]
    state = CheckpointManager.load(last[-1])
    state["model"] = average_state_dicts(last)
    state["averaged"] = [p.name for p in last]
    for key in drop:
        state.pop(key, None)
    _atomic_save(state, exp_dir / "final.pt")
    with atomic_path(exp_dir / "final.txt") as tmp:
        Path(tmp).write_text(f"average of {', '.join(p.name for p in last)}\n")
    log.info("wrote %s (average of %s)", exp_dir / "final.pt", [p.name for p in last])
    return exp_dir / "final.pt"


def average_state_dicts(paths: list[str | os.PathLike], key: str = "model") -> dict[str, torch.Tensor]:
    """Element-wise mean of the ``key`` state dicts of several checkpoints (integer buffers taken from
    the last), read one at a time."""
    if not paths:
        raise ValueError("no checkpoints to average")
    return mean_state_dicts(CheckpointManager.load(path)[key] for path in paths)


def mean_state_dicts(states: Iterable[dict[str, torch.Tensor]],
                     weights: list[float] | None = None) -> dict[str, torch.Tensor]:
    """Element-wise weighted mean, ``sum(w * x) / sum(w)`` in float64, of state dicts with the same
    names (equal weights by default; else one per state), as float32; integer buffers are taken from the
    last. ``states`` may be a generator, so checkpoints are read one at a time."""
    total: dict[str, torch.Tensor] = {}
    weight_sum, count = 0.0, 0
    for count, state in enumerate(states, 1):
        weight = 1.0 if weights is None else weights[count - 1]
        weight_sum += weight
        for name, value in state.items():
            if value.is_floating_point():
                total[name] = total.get(name, 0) + weight * value.double()
            else:
                total[name] = value
    if weights is not None and count != len(weights):
        raise ValueError(f"{len(weights)} weights for {count} state dicts")
    return {k: (v / weight_sum).float() if v.is_floating_point() else v for k, v in total.items()}


class TrainLogger:
    """Scalars go to TensorBoard (``exp_dir/tb``), to ``exp_dir/metrics.jsonl`` (readable without
    TensorBoard, and kept across resumes), and to ``exp_dir/curves.png``."""

    def __init__(self, exp_dir: str | os.PathLike, enabled: bool = True):
        self.exp_dir = Path(exp_dir)
        self.enabled = enabled
        self.history: dict[str, list[tuple[int, float]]] = {}
        self.writer = None
        if not enabled:
            return
        self.exp_dir.mkdir(parents=True, exist_ok=True)
        metrics = self.exp_dir / "metrics.jsonl"
        if metrics.exists():
            for line in metrics.read_text().splitlines():
                row = json.loads(line)
                self.history.setdefault(row["name"], []).append((row["step"], row["value"]))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.exp_dir / "tb"))
        except ImportError:  # tensorboard is optional at run time
            log.info("tensorboard is not installed; logging to metrics.jsonl only")

    def scalar(self, name: str, value: float, step: int) -> None:
        if not self.enabled:
            return
        value = float(value)
        self.history.setdefault(name, []).append((step, value))
        if self.writer is not None:
            self.writer.add_scalar(name, value, step)
        with open(self.exp_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"name": name, "step": step, "value": value}) + "\n")

    def plot(self, names: list[str] | None = None) -> None:
        """Write ``curves.png`` with the named series (default: all)."""
        if not self.enabled or not self.history:
            return
        from audio.plot import plot_curves

        series = {k: v for k, v in self.history.items() if names is None or k in names}
        plot_curves(series, self.exp_dir / "curves.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
