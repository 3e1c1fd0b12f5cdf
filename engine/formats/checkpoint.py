"""What every format reader yields: metadata, an architecture hint, and raw tensors by name."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol

import torch

from mistralrs.engine.formats.errors import ModelFileError

__all__ = ["ArchitectureHint", "Checkpoint", "ModelFileError", "RawTensor"]


@dataclass
class RawTensor:
    """A tensor as stored: ``data`` is a uint8 byte view for block-quantized types, else typed."""

    name: str
    qtype: str  # GGML type name: F32, F16, BF16, Q4_K, ...
    shape: tuple[int, ...]  # element shape, torch order (last dim contiguous)
    data: torch.Tensor

    @property
    def is_float(self) -> bool:
        return self.qtype in ("F32", "F16", "BF16")


@dataclass
class ArchitectureHint:
    gguf: str | None = None  # general.architecture
    hf: list[str] = field(default_factory=list)  # config.json "architectures"


class Checkpoint(Protocol):
    path: Path
    format: str
    metadata: dict[str, Any]  # GGUF key/values, or HF config.json

    def architecture(self) -> ArchitectureHint: ...

    def tensor_names(self) -> list[str]: ...

    def tensor(self, name: str) -> RawTensor: ...

    def tensors(self) -> Iterator[RawTensor]: ...

    def tokenizer(self) -> Any: ...  # engine.tokenizer.TextTokenizer

    def recommended_sampling(self) -> dict[str, float | int]: ...  # formats/recommended_sampling.py

    def file_tensor_bytes(self) -> int: ...
