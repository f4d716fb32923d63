"""Build and load the C twin of the WaveNet generation loop (``tts/_wavenet_kernel.c``) through ctypes.

The kernel is compiled on first use for the machine it runs on and for one model size (residual, skip and
class counts are compile-time constants), with ``$CC`` or ``cc``: ``-O3 -march=native -ffast-math``. The
library is cached in ``$GLOTTIS_CACHE_DIR`` (default ``$XDG_CACHE_HOME/glottis``, else ``~/.cache/glottis``)
under a name that hashes the source, the flags, the compiler's version and the CPU, so a cache shared by
other machines or compilers never serves the wrong binary. It is written to a temporary file and renamed,
so concurrent first uses cannot load a half-written library.

:func:`load` raises ``RuntimeError`` when there is no working C compiler; :class:`tts.wavenet.FastGenerator`
then falls back on the numba kernel (``GLOTTIS_WAVENET_KERNEL`` chooses: ``auto``, ``c`` or ``numba``).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["CKernel", "load", "cache_dir"]

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_wavenet_kernel.c")
FLAGS = ("-O3", "-march=native", "-ffast-math", "-std=c99", "-fPIC", "-shared")


def cache_dir() -> Path:
    if os.environ.get("GLOTTIS_CACHE_DIR"):
        return Path(os.environ["GLOTTIS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glottis"


def _cpu_fingerprint() -> str:
    """The CPU's model and feature flags (``-march=native`` code needs the same ones)."""
    lines = []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":")[0].strip() in ("model name", "flags", "Features", "CPU part"):
                    lines.append(line.strip())
                if line.strip() == "":  # the first processor is enough
                    break
    except OSError:
        pass
    return platform.machine() + "\n" + platform.processor() + "\n" + "\n".join(lines)


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


class CKernel:
    """The compiled loop for one ``(R, S, K)``; ``run`` has the numba kernel's arguments, with the four weight
    matrices transposed to ``[input][output]``."""

    def __init__(self, path: Path, sizes: tuple[int, int, int]):
        self.path, self.sizes = path, sizes
        self._fn = ctypes.CDLL(str(path)).glottis_wavenet_loop
        self._fn.restype = ctypes.c_int

    def run(self, embed, gate_wt, gate_b, rs_wt, rs_b, out1_wt, out1_b, out2_wt, out2_b, dilations, offsets,
            cond, hop, t0, n, teacher, uniforms, inv_temperature, queue, prev, classes, logits_out) -> None:
        f32 = [embed, gate_wt, gate_b, rs_wt, rs_b, out1_wt, out1_b, out2_wt, out2_b, cond, queue, logits_out]
        for a in f32:
            assert a.dtype == np.float32 and a.flags.c_contiguous, "float32 C-contiguous arrays expected"
        for a in (dilations, offsets, teacher, prev, classes):
            assert a.dtype == np.int64 and a.flags.c_contiguous, "int64 C-contiguous arrays expected"
        assert uniforms.dtype == np.float64 and uniforms.flags.c_contiguous
        n_layers, r = rs_wt.shape[0], rs_wt.shape[1]
        s, k = out1_wt.shape[0], out2_wt.shape[1]
        batch = cond.shape[0]
        assert queue.shape == (int(offsets[-1]), batch, r) and prev.shape == (batch,)

        def ptr(a):
            return a.ctypes.data_as(ctypes.c_void_p)

        def opt(a):
            return ptr(a) if a.shape[0] > 0 else None

        i64 = ctypes.c_int64
        status = self._fn(
            i64(n_layers), i64(r), i64(s), i64(k), i64(batch),
            ptr(embed), ptr(gate_wt), ptr(gate_b), ptr(rs_wt), ptr(rs_b),
            ptr(out1_wt), ptr(out1_b), ptr(out2_wt), ptr(out2_b), ptr(dilations), ptr(offsets),
            ptr(cond), i64(cond.shape[1]), i64(hop), i64(t0), i64(n), opt(teacher), i64(teacher.shape[0]),
            ptr(uniforms), ctypes.c_float(inv_temperature), ptr(queue), ptr(prev), ptr(classes), opt(logits_out),
        )
        if status != 0:
            raise ValueError(f"{self.path} was compiled for sizes {self.sizes}, not {(r, s, k)}")


def _build(sizes: tuple[int, int, int]) -> Path:
    """The cached library for ``sizes``, compiled if missing; without ``-march=native`` if the compiler
    refuses it (some compilers for some CPUs do)."""
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (set $CC, or install gcc)")
    r, s, k = sizes
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=60).stdout
    errors = []
    for flags in (FLAGS, tuple(f for f in FLAGS if f != "-march=native")):
        flags = [*flags, f"-DGLOTTIS_R={r}", f"-DGLOTTIS_S={s}", f"-DGLOTTIS_K={k}"]
        key = hashlib.sha256(
            b"\0".join(x.encode() for x in (SOURCE.read_text(), " ".join(flags), cc, version, _cpu_fingerprint()))
        ).hexdigest()[:20]
        out = cache_dir() / f"wavenet_kernel_{r}_{s}_{k}_{key}.so"
        if out.exists():
            return out
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=out.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            done = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True,
                                  timeout=300)
            if done.returncode == 0:
                os.replace(tmp, out)
                log.info("compiled the C WaveNet kernel for R=%d S=%d K=%d: %s", r, s, k, out)
                return out
            errors.append(f"{cc} {' '.join(flags)}: {done.stderr.strip()}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise RuntimeError(f"{cc} failed on {SOURCE}:\n" + "\n".join(errors))


_loaded: dict[tuple[int, int, int], CKernel | Exception] = {}


def load(sizes: tuple[int, int, int]) -> CKernel:
    """The C kernel for ``(residual, skip, classes)``, compiled if needed; ``RuntimeError`` when it cannot be
    (no compiler, or it failed). Both outcomes are remembered for the life of the process."""
    if sizes not in _loaded:
        try:
            _loaded[sizes] = CKernel(_build(sizes), sizes)
        except (OSError, RuntimeError, subprocess.SubprocessError) as e:
            _loaded[sizes] = e
    found = _loaded[sizes]
    if isinstance(found, Exception):
        raise RuntimeError(f"the C WaveNet kernel cannot be used: {found}") from found
    return found
