"""What plugins register: small frozen records naming lazily-imported implementations."""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass, field
from typing import Any

from mistralrs.registry.interfaces import Family, check


def resolve(target: str) -> Any:
    """Import ``"package.module:attribute"`` and return the attribute."""
    module_name, _, attribute = target.partition(":")
    if not attribute:
        raise ValueError(f"lazy target {target!r} must look like 'package.module:attribute'")
    obj: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    return obj


_resolved = functools.cache(resolve)  # quant types resolve their functions on every tensor; import once


@dataclass(frozen=True)
class ArchitectureSpec:
    name: str
    family: str  # lazy path of the Family object
    gguf_architectures: tuple[str, ...] = ()
    hf_architectures: tuple[str, ...] = ()
    description: str = ""
    # Lazy path of claims(gguf_metadata) -> bool: files of a GGUF architecture several families share
    # that this one takes whatever the preset (llama.cpp writes Mixtral as "llama" with experts).
    gguf_claim: str = ""

    def load(self) -> Any:
        """The family object, checked against ``interfaces.Family``."""
        return check(resolve(self.family), Family, f"family {self.family!r} of architecture {self.name!r}")


@dataclass(frozen=True)
class FormatSpec:
    name: str
    detect: str  # lazy path of detect(path: Path) -> bool
    open: str  # lazy path of open(path: Path, options) -> Checkpoint
    description: str = ""


@dataclass(frozen=True)
class QuantTypeSpec:
    """One tensor storage type: the single record every reader, kernel and quantizer consults."""

    name: str
    ggml_type: int | None  # the GGUF/GGML tensor type id
    block_size: int  # elements per block (a row holds whole blocks)
    type_size: int  # bytes per block
    dequantize: str  # lazy path of dequantize(blocks: uint8 [n, type_size], spec) -> float32 [n, block_size]
    description: str = ""
    quantize: str | None = None  # lazy path of quantize(x: float32 [n, block_size]) -> uint8 [n, type_size]
    native: bool = False  # the C++ kernels (engine/kernels/quant_layout.h) repack and multiply it by ggml_type

    def dequantizer(self) -> Any:
        return _resolved(self.dequantize)

    def quantizer(self) -> Any:
        return None if self.quantize is None else _resolved(self.quantize)


@dataclass(frozen=True)
class AdapterSpec:
    name: str
    apply: str  # lazy path of apply(model, AdapterConfig, device, dtype) -> CausalLM (interfaces.py)
    description: str = ""


@dataclass(frozen=True)
class Registered:
    """One registered thing and the plugin that registered it."""

    spec: Any
    plugin: str
    origin: str = field(default="")  # distribution name and version, for `task=plugins`
