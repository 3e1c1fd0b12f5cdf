"""The out-of-tree plugin packages in tests/plugins, pip-installed into a private directory (put it on
sys.path, or hand it to run_cli's extra_path, for the plugins' entry points to be found)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PLUGINS = Path(__file__).parent / "plugins"


def install_plugins(target: Path, *packages: str) -> Path:
    for package in packages:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                        str(PLUGINS / package)], check=True, capture_output=True)
    return target
