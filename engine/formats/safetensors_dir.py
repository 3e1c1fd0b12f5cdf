"""HF-layout model directories: config.json + *.safetensors (memory-mapped), tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import torch

from mistralrs.engine.formats.checkpoint import ArchitectureHint, ModelFileError, RawTensor

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_DTYPE_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def refuse_pickle(path: Path) -> None:
    raise ModelFileError(
        path,
        "pickle checkpoints (.bin/.pt/.pth) are refused because unpickling runs arbitrary code; "
        "convert the model to safetensors (or GGUF) first",
    )


def detect(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON file that must hold an object; anything else is a ModelFileError naming the file."""
    try:
        value = json.loads(path.read_bytes())  # bytes: a BOM or UTF-16 is detected, bad UTF-8 refused
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON, UTF-8, the int-digits limit
        raise ModelFileError(path, f"unreadable JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelFileError(path, f"must hold a JSON object, got {type(value).__name__}")
    return value


class SafetensorsCheckpoint:
    format = "safetensors"

    def __init__(self, path: Path):
        from safetensors import safe_open

        self.path = Path(path)
        self.metadata: dict[str, Any] = read_json_object(self.path / "config.json")
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            if any(p.suffix in PICKLE_SUFFIXES for p in self.path.iterdir()):
                refuse_pickle(self.path)
            raise ModelFileError(self.path, "no *.safetensors weight files in the model directory")
        self._handles = []
        self._where: dict[str, Any] = {}
        for file in files:
            try:
                handle = safe_open(str(file), framework="pt")
            except Exception as exc:  # safetensors raises its own error types on bad headers
                raise ModelFileError(file, f"cannot read safetensors file: {exc}") from exc
            self._handles.append(handle)
            for name in handle.keys():
                self._where[name] = handle
        self.generation_config: dict[str, Any] = {}
        gen = self.path / "generation_config.json"
        if gen.is_file():
            self.generation_config = read_json_object(gen)

    def architecture(self) -> ArchitectureHint:
        archs = self.metadata.get("architectures") or []
        if not isinstance(archs, list):
            raise ModelFileError(self.path / "config.json", "'architectures' must be a list of class names")
        return ArchitectureHint(hf=[str(a) for a in archs])

    def tensor_names(self) -> list[str]:
        return list(self._where)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape from the file's header, without reading its data."""
        return tuple(self._where[name].get_slice(name).get_shape())

    def tensor(self, name: str) -> RawTensor:
        t = self._where[name].get_tensor(name)
        qtype = _DTYPE_NAMES.get(t.dtype)
        if qtype is None:
            raise ModelFileError(self.path, f"tensor {name!r} has unsupported dtype {t.dtype}")
        return RawTensor(name, qtype, tuple(t.shape), t)

    def tensors(self) -> Iterator[RawTensor]:
        for name in self._where:
            yield self.tensor(name)

    def file_tensor_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.path.glob("*.safetensors"))

    def configure(self, options: Any) -> None:
        """config.json says everything the model needs."""

    def release_pages(self, names: list[str] | None = None) -> None:
        """safetensors hands out tensors it read; there are no pages of ours to drop."""

    def recommended_sampling(self) -> dict[str, float | int]:
        from mistralrs.engine.formats.recommended_sampling import from_generation_config

        if not isinstance(self.generation_config, dict):
            return {}
        return from_generation_config(self.generation_config, str(self.path / "generation_config.json"))

    def tokenizer(self) -> Any:
        from mistralrs.engine.tokenizer.hf_vocab import tokenizer_from_hf_dir

        try:
            return tokenizer_from_hf_dir(self.path)
        except (ValueError, OSError) as exc:
            raise ModelFileError(self.path, f"tokenizer: {exc}") from exc


def open_safetensors(path: Path, known_types: set[str] | None = None) -> SafetensorsCheckpoint:
    return SafetensorsCheckpoint(path)
