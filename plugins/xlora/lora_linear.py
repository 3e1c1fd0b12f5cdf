"""LoRA on the engine's linear layers, whatever holds the base weight (dense, GGUF blocks, ISQ).

A targeted ``Linear`` is replaced in its parent by a ``LoraLinear`` wrapping it: no family code
changes, and ``LinearGroup`` keeps the fused q/k/v or gate/up base call and adds the low-rank terms
(``base_layer`` + ``adapter_delta``). All adapters of a layer are concatenated: ``A`` [Σr, in] and
``B`` [out, Σr], so any number of adapters costs two small matmuls. An adapter's per-token
X-LoRA scaling ``s_i`` commutes with ``A``: ``B(A(x·s_i)) = B(A(x)·s_i)``, applied per column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from mistralrs.engine.layers.linear import Linear, LinearGroup

from .lora_files import AdapterError, LoraModule

log = logging.getLogger(__name__)


@dataclass
class AdapterTerm:
    adapter: int  # index of the adapter (X-LoRA: its column in the scalings)
    lora: LoraModule


class LoraLinear(nn.Module):
    """``base(x) + Σ_i B_i(A_i(x)) · scale_i · s_i`` with ``s_i`` from ``mixer`` (X-LoRA) or 1."""

    def __init__(self, base: Linear, terms: list[AdapterTerm], device: torch.device, dtype: torch.dtype,
                 mixer=None, mixer_layer: int = 0):
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.mixer, self.mixer_layer = mixer, mixer_layer
        a = torch.cat([t.lora.a for t in terms]).to(device=device, dtype=dtype)
        scales = torch.cat([torch.full((t.lora.rank,), t.lora.scale) for t in terms])
        b = torch.cat([t.lora.b for t in terms], dim=1)
        self.register_buffer("lora_a", a, persistent=False)
        if mixer is None:  # constant scales fold into B
            self.register_buffer("lora_b", (b * scales).to(device=device, dtype=dtype), persistent=False)
        else:
            self.register_buffer("lora_b", b.to(device=device, dtype=dtype), persistent=False)
            self.register_buffer("column_scale", scales.to(device=device, dtype=dtype), persistent=False)
            adapters = torch.cat([torch.full((t.lora.rank,), t.adapter, dtype=torch.long) for t in terms])
            self.register_buffer("column_adapter", adapters.to(device), persistent=False)

    def adapter_delta(self, x: torch.Tensor) -> torch.Tensor | None:
        if self.mixer is None:
            return (x @ self.lora_a.T) @ self.lora_b.T
        columns = self.mixer.column_scalings(self.mixer_layer, self.column_adapter, self.column_scale)
        if columns is None:  # scaling pass with scaling_pass_value 0: the base model
            return None
        return ((x @ self.lora_a.T) * columns) @ self.lora_b.T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base_layer(x)
        delta = self.adapter_delta(x.to(self.lora_a.dtype))
        return y if delta is None else y + delta.to(y.dtype)

    def extra_repr(self) -> str:
        return f"rank={self.lora_a.shape[0]}, {'x-lora' if self.mixer is not None else 'lora'}"


def target_linear(model: nn.Module, path: str, adapter_name: str = "") -> Linear:
    who = f"adapter {adapter_name!r}" if adapter_name else "the adapter"
    try:
        layer = model.get_submodule(path)
    except AttributeError:
        raise AdapterError(f"{who} targets {path!r}, which this model does not have") from None
    if not isinstance(layer, Linear):
        raise AdapterError(f"{who} targets {path!r}, a {type(layer).__name__}, not a linear layer")
    return layer


def check_shapes(path: str, layer: Linear, lora: LoraModule, adapter_name: str) -> None:
    if lora.a.shape[1] != layer.in_features or lora.b.shape[0] != layer.out_features:
        raise AdapterError(f"adapter {adapter_name!r}: {path} has lora_A {list(lora.a.shape)} and lora_B "
                           f"{list(lora.b.shape)}, but the layer is {layer.in_features} -> {layer.out_features}")


def wrap_linear(model: nn.Module, path: str, wrapper: nn.Module) -> None:
    owner_name, _, attr = path.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    setattr(owner, attr, wrapper)


def reset_linear_groups(model: nn.Module) -> None:
    """Fused q/k/v and gate/up plans name their layers; re-plan them over the wrapped ones."""
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, LinearGroup):
                value.reset()


def merge_into(layer: Linear, terms: list[AdapterTerm]) -> bool:
    """W += Σ B·A·scale for float weights (a new tensor: tied weights keep theirs). False when the
    weight is quantized blocks, which then get the adapter per call instead."""
    from mistralrs.engine.quant.weights import DenseWeight

    if layer.packed is None:
        weight = layer.weight
    elif isinstance(layer.packed, DenseWeight):
        weight = layer.packed.tensor
    else:
        return False
    delta = sum(t.lora.b @ t.lora.a * t.lora.scale for t in terms)
    merged = (weight.float() + delta.to(weight.device)).to(weight.dtype)
    if layer.packed is None:
        layer.weight = nn.Parameter(merged, requires_grad=False)
    else:
        layer.packed = DenseWeight(merged)
    return True
