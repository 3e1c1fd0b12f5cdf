"""The project's C++ kernels (engine/kernels/*.cpp), compiled for this machine on first use.

torch's extension builder compiles them with -O3 -march=native into the mistralrs cache (about a
minute, once per machine and torch version). Without a compiler, ninja or on an unsupported CPU the
build fails once, is logged, and callers fall back to pure-torch paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import platform
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCES = sorted(Path(__file__).parent.glob("*.cpp"))
HEADERS = sorted(Path(__file__).parent.glob("*.h"))
# MISTRALRS_KERNEL_MARCH builds for another CPU than this one (the tests check the AVX2 code path so)
CFLAGS = ["-O3", f"-march={os.environ.get('MISTRALRS_KERNEL_MARCH', 'native')}", "-fno-math-errno", "-fopenmp"]
# GGML type ids the C++ kernels repack and multiply (quant_layout.h)
NATIVE_TYPES = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13,
                "Q6_K": 14}


def _build_dir() -> Path:
    digest = hashlib.sha256()
    for src in SOURCES + HEADERS:
        digest.update(src.read_bytes())
    digest.update(f"{torch.__version__} {platform.machine()} {torch.backends.cpu.get_cpu_capability()} {CFLAGS}".encode())
    root = os.environ.get("MISTRALRS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mistralrs"
    path = Path(root) / "kernels" / digest.hexdigest()[:16]
    path.mkdir(parents=True, exist_ok=True)
    return path


def fast_ops(*tensors: torch.Tensor):
    """The native ops when every tensor is a float32 CPU tensor they can take, else None."""
    for t in tensors:
        if t.dtype is not torch.float32 or t.is_cuda or t.device.type != "cpu":
            return None
    return native_ops()


@contextlib.contextmanager
def _exclusive_build(build_dir: Path):
    """torch's builder guards a build with a plain ``lock`` file and waits forever while it exists, so a
    build killed midway (Ctrl-C, a timeout) would hang every later process. An OS lock is released when
    its holder dies: whoever holds it is the only builder, and any ``lock`` file it finds is stale."""
    with open(build_dir / "build.flock", "w") as guard:
        fcntl.flock(guard, fcntl.LOCK_EX)
        try:
            (build_dir / "lock").unlink(missing_ok=True)
            yield
        finally:
            fcntl.flock(guard, fcntl.LOCK_UN)


@functools.cache
def native_ops():
    """``torch.ops.mistralrs_kernels`` once built and loaded, else None (reason logged)."""
    if os.environ.get("MISTRALRS_NO_NATIVE"):
        return None
    try:
        from torch.utils.cpp_extension import load

        build_dir = _build_dir()
        log.info("loading native kernels from %s (compiled on first use: about a minute)", build_dir)
        # -fopenmp: at::parallel_for is a header template, serial unless the extension itself is built
        # with OpenMP; it then binds to the libgomp.so.1 torch has already loaded (one thread pool).
        with _exclusive_build(build_dir):
            load(name="mistralrs_kernels", sources=[str(s) for s in SOURCES], extra_cflags=CFLAGS,
                 extra_ldflags=["-fopenmp"], build_directory=str(build_dir), is_python_module=False, verbose=False)
        return torch.ops.mistralrs_kernels
    except Exception as exc:  # no compiler / ninja / headers: the torch paths still work
        log.warning("native kernels unavailable (%s: %s); using torch kernels", type(exc).__name__, str(exc)[:300])
        return None
