"""The project's C++ kernels (engine/kernels/*.cpp), compiled for this machine on first use.

torch's extension builder compiles them with -O3 -march=native into the mistralrs cache (a few
minutes on 2 cores, once per build key; a line on stderr says so and how long it took). The build
folder's key covers everything that changes the binary: the sources, torch's version, location and
include paths, the compiler and its version, the flags and the CPU's features, so two environments
never rebuild each other's kernels. Without a compiler, ninja or on an unsupported CPU the build
fails once, is logged, and callers fall back to pure-torch paths.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import logging
import os
import platform
import sys
import time
from pathlib import Path

import torch

log = logging.getLogger(__name__)
SOURCES = sorted(Path(__file__).parent.glob("*.cpp"))
HEADERS = sorted(Path(__file__).parent.glob("*.h"))
# MISTRALRS_KERNEL_MARCH builds for another CPU than this one (the tests check the AVX2 code path so)
CFLAGS = ["-O3", f"-march={os.environ.get('MISTRALRS_KERNEL_MARCH', 'native')}", "-fno-math-errno", "-fopenmp"]
# The GGML types these kernels repack and multiply (quant_layout.h) are those the quant-type table marks
# ``native`` (engine/quant/plugin.py); callers pass the type's GGML id.


def build_key(sources: list[bytes], torch_version: str, torch_dir: str, include_paths: list[str], compiler: str,
              flags: list[str], cpu_features: str) -> str:
    """The build folder's name: a digest of everything that changes the compiled kernels."""
    digest = hashlib.sha256()
    for src in sources:
        digest.update(hashlib.sha256(src).digest())
    for part in (torch_version, torch_dir, *include_paths, compiler, *flags, platform.machine(), cpu_features):
        digest.update(part.encode() + b"\0")
    return digest.hexdigest()[:16]


def _compiler_identity() -> str:
    """The C++ compiler torch's builder will call (CXX, else c++) and its version line."""
    import shutil
    import subprocess

    cxx = os.environ.get("CXX", "c++")
    path = shutil.which(cxx) or cxx
    try:
        version = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[:1]
    except (OSError, subprocess.SubprocessError):
        version = []
    return f"{os.path.realpath(path)} {' '.join(version)}"


def _cpu_features() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith(("flags", "Features"))), "")
    except OSError:
        return platform.processor()


def _build_dir() -> Path:
    from torch.utils.cpp_extension import include_paths

    # The sources' folder is part of the key: torch's builder writes their paths into build.ninja, so
    # two installs sharing one folder would each rebuild the other's build on every start.
    key = build_key([src.read_bytes() for src in SOURCES + HEADERS], torch.__version__,
                    os.path.dirname(os.path.realpath(torch.__file__)),
                    [*include_paths(), str(Path(__file__).resolve().parent)], _compiler_identity(), CFLAGS,
                    f"{torch.backends.cpu.get_cpu_capability()} {_cpu_features()}")
    root = os.environ.get("MISTRALRS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mistralrs"
    path = Path(root) / "kernels" / key
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
        try:
            fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # say why nothing happens for minutes
            print(f"mistralrs: waiting for another process compiling the native kernels in {build_dir} ...",
                  file=sys.stderr, flush=True)
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
        built = (build_dir / "mistralrs_kernels.so").is_file()
        log.info("loading native kernels from %s", build_dir)
        # -fopenmp: at::parallel_for is a header template, serial unless the extension itself is built
        # with OpenMP; it then binds to the libgomp.so.1 torch has already loaded (one thread pool).
        with _exclusive_build(build_dir):
            if not built:  # seen at the default log level: minutes of silence look like a hang
                print(f"mistralrs: compiling the native kernels for this machine (once; about 3 minutes on 2 cores) "
                      f"into {build_dir} ...", file=sys.stderr, flush=True)
            start = time.perf_counter()
            load(name="mistralrs_kernels", sources=[str(s) for s in SOURCES], extra_cflags=CFLAGS,
                 extra_ldflags=["-fopenmp"], build_directory=str(build_dir), is_python_module=False, verbose=False)
            if not built:
                print(f"mistralrs: native kernels compiled in {time.perf_counter() - start:.0f} s", file=sys.stderr,
                      flush=True)
        return torch.ops.mistralrs_kernels
    except Exception as exc:  # no compiler / ninja / headers: the torch paths still work
        log.warning("native kernels unavailable (%s: %s); using torch kernels", type(exc).__name__, str(exc)[:300])
        return None
