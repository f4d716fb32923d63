"""Run the benchmarks: ``python -m bench.run [--only NAME] [--repeats N]`` (``make bench``).

Each module in ``BENCHMARKS`` exposes ``run(repeats: int) -> list[dict]``; a row is
``{"benchmark", "impl", "median_s", "ratio_vs_ours", ...extra}``, where ``ratio_vs_ours`` is the row's
median time divided by ours (above 1: ours is faster). A module whose optional peer library is missing
is skipped with a note. Results print as a markdown table and are written to ``bench/results/bench.json``.

Timings are single-threaded (torch and the BLAS libraries numpy uses), so they are comparable across
machines and runs and not disturbed by other work on the box.
"""

from __future__ import annotations

import os

# Before numpy/torch load: make the BLAS pools single-threaded too, so librosa is measured like torch.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import importlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from audio.atomic import write_json  # noqa: E402

__all__ = ["BENCHMARKS", "median_times", "make_rows", "markdown_table", "main"]

log = logging.getLogger("bench")

# Modules to run, in order. Append yours ("bench.decode", "bench.transcribe", ...).
BENCHMARKS: list[str] = ["bench.features", "bench.decode", "bench.transcribe", "bench.tts", "bench.vocoder"]

_OUR_PACKAGES = ("audio", "asr", "tts", "bench")

RESULTS = Path(__file__).resolve().parent / "results" / "bench.json"


def median_times(fns: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall-clock seconds of each ``fn()`` over ``repeats`` rounds, after ``warmup`` untimed rounds.

    The functions are timed round-robin (a, b, c, a, b, c, ...), so a burst of load from other work on
    the machine hits every implementation alike instead of skewing one of them.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(max(1, repeats)):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def make_rows(
    benchmark: str, timings: dict[str, float], *, ours: str = "ours", missing: tuple[str, ...] = (), **extra
) -> list[dict]:
    """Rows for one benchmark from ``{impl: median_s}``; ratios are relative to ``timings[ours]``.

    ``missing`` names peers that are not installed; they get a row with a note instead of a time.
    """
    base = timings[ours]
    rows = [
        {"benchmark": benchmark, "impl": impl, "median_s": t, "ratio_vs_ours": t / base, **extra}
        for impl, t in timings.items()
    ]
    for impl in missing:
        rows.append(
            {
                "benchmark": benchmark,
                "impl": impl,
                "median_s": None,
                "ratio_vs_ours": None,
                "note": "not installed",
            }
        )
    return rows


def markdown_table(rows: list[dict]) -> str:
    """Rows as a markdown table; extra keys go into a ``notes`` column."""
    lines = ["| benchmark | impl | median (ms) | ratio vs ours | notes |", "|---|---|---:|---:|---|"]
    for row in rows:
        notes = ", ".join(
            f"{k}={v}"
            for k, v in row.items()
            if k not in ("benchmark", "impl", "median_s", "ratio_vs_ours", "module")
        )
        median = "" if row.get("median_s") is None else f"{1000 * row['median_s']:.2f}"
        ratio = "" if row.get("ratio_vs_ours") is None else f"{row['ratio_vs_ours']:.2f}"
        lines.append(f"| {row['benchmark']} | {row['impl']} | {median} | {ratio} | {notes} |")
    return "\n".join(lines)


def _run_module(name: str, repeats: int) -> list[dict]:
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] in _OUR_PACKAGES:
            raise  # a typo in BENCHMARKS or a missing module of ours is a bug, not a missing peer
        log.warning("skipping %s: %s is not installed", name, err.name)
        return [
            {
                "benchmark": name,
                "impl": "skipped",
                "median_s": None,
                "ratio_vs_ours": None,
                "note": f"{err.name} not installed",
            }
        ]
    log.info("running %s", name)
    return module.run(repeats=repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help="run only this benchmark module ('features' or 'bench.features'); repeatable",
    )
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per measurement (median taken)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results file (default {RESULTS})")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    torch.set_num_threads(1)

    selected = BENCHMARKS
    if args.only:
        wanted = {n if n.startswith("bench.") else f"bench.{n}" for n in args.only}
        unknown = wanted - set(BENCHMARKS)
        if unknown:
            parser.error(f"unknown benchmark(s) {sorted(unknown)}; known: {BENCHMARKS}")
        selected = [n for n in BENCHMARKS if n in wanted]

    rows = []
    for name in selected:
        rows += [dict(row, module=name) for row in _run_module(name, args.repeats)]

    # Keep earlier results of modules not rerun now (e.g. after --only).
    previous = []
    if args.out.exists():
        try:
            previous = json.loads(args.out.read_text(encoding="utf-8")).get("rows", [])
        except (json.JSONDecodeError, AttributeError):
            previous = []
    kept = [r for r in previous if r.get("module") not in selected]
    write_json(args.out, {"threads": torch.get_num_threads(), "rows": kept + rows})
    print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
