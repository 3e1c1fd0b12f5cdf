"""What every format reader yields: metadata, an architecture hint, and raw tensors by name (the
``Checkpoint`` contract itself is in registry/interfaces.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from mistralrs.engine.formats.errors import ModelFileError

__all__ = ["ArchitectureHint", "ModelFileError", "RawTensor"]


@dataclass
class RawTensor:
    """A tensor as stored: ``data`` is a uint8 byte view for block-quantized types, else typed."""

    name: str
    qtype: str  # GGML type name: F32, F16, BF16, Q4_K, ...
    shape: tuple[int, ...]  # element shape, torch order (last dim contiguous)
    data: torch.Tensor
    # memory-mapped data: release(start, end) drops the pages of data's bytes [start, end) from the
    # process once they have been copied (a reader converting a large tensor in parts calls it per part)
    release: Callable[[int, int], None] | None = None

    @property
    def is_float(self) -> bool:
        return self.qtype in ("F32", "F16", "BF16")


@dataclass
class ArchitectureHint:
    gguf: str | None = None  # general.architecture
    hf: list[str] = field(default_factory=list)  # config.json "architectures"
