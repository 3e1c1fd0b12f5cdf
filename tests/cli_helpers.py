"""Run the real ``mistralrs`` command line in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str, cwd: Path | None = None, extra_path: Path | None = None, timeout: float = 300,
            input: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    if extra_path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path), env.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "mistralrs.engine.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout, input=input)
