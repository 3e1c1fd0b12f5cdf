"""Model-file errors (torch-free, so the CLI can catch them without importing torch)."""

from __future__ import annotations

from pathlib import Path


class ModelFileError(ValueError):
    """A model file we cannot use; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = str(path), problem
