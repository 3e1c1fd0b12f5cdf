"""What plugins register: small frozen records naming lazily-imported implementations."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


def resolve(target: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"lazy target {target!r} must look like 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str
    family: str  # lazy path of the Family object
    gguf_architectures: tuple[str, ...] = ()
    hf_architectures: tuple[str, ...] = ()
    description: str = ""

    def load(self) -> Any:
        return resolve(self.family)


@dataclass(frozen=True)
class FormatSpec:
    name: str
    detect: str  # lazy path of detect(path: Path) -> bool
    open: str  # lazy path of open(path: Path, options) -> Checkpoint
    description: str = ""


@dataclass(frozen=True)
class QuantTypeSpec:
    name: str
    ggml_type: int | None
    block_size: int
    type_size: int
    dequantize: str  # lazy path of dequantize(raw: uint8 Tensor, shape) -> float32 Tensor
    description: str = ""


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    apply: str  # lazy path
    description: str = ""


@dataclass(frozen=True)
class Registered:
    """One registered thing and the plugin that registered it."""

    spec: Any
    plugin: str
    origin: str = field(default="")  # distribution name and version, for `task=plugins`
