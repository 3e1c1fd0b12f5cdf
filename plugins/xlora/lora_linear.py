"""LoRA on the engine's linear layers, whatever holds the base weight (dense, GGUF blocks, ISQ).

A targeted ``Linear`` is replaced in its parent by a ``LoraLinear`` wrapping it: no family code
changes, and ``LinearGroup`` keeps the fused q/k/v or gate/up base call and adds the low-rank terms
(``base_layer`` + ``fuse_group``: A stacked, each layer's B a block written into its own columns of
the concatenated output). All adapters of a layer are concatenated: ``A`` [Σr, in] and ``B``
[out, Σr], so any number of adapters costs two small matmuls. An adapter's per-token X-LoRA
scaling ``s_i`` commutes with ``A``: ``B(A(x·s_i)) = B(A(x)·s_i)``, applied per rank column. The
terms are engine ``LowRankTerm``s, which the native decode stack also runs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from mistralrs.engine.layers.decode_stack import DecodePlan
from mistralrs.engine.layers.linear import Linear, LinearGroup
from mistralrs.engine.layers.low_rank import LowRankTerm

from mistralrs.plugins.xlora.lora_files import AdapterError, LoraModule

log = logging.getLogger(__name__)


@dataclass
class AdapterTerm:
    adapter: int  # index of the adapter (X-LoRA: its column in the scalings)
    lora: LoraModule


class LoraLinear(nn.Module):
    """``base(x) + Σ_i B_i(A_i(x)) · scale_i · s_i`` with ``s_i`` from ``mixer`` (X-LoRA) or 1, on
    the flat [T, in] activations the engine passes. Factors are stored transposed and contiguous
    (``x @ Aᵀ`` then an in-place add): at decode the cost is one native call."""

    def __init__(self, base: Linear, terms: list[AdapterTerm], device: torch.device, dtype: torch.dtype,
                 mixer=None, mixer_layer: int = 0):
        super().__init__()
        self.base_layer = base
        self.in_features, self.out_features = base.in_features, base.out_features
        self.mixer = mixer
        a = torch.cat([t.lora.a for t in terms])
        scales = torch.cat([torch.full((t.lora.rank,), t.lora.scale) for t in terms])
        b = torch.cat([t.lora.b for t in terms], dim=1)
        offset = None
        if mixer is None:  # constant scales fold into B
            b = b * scales
        else:  # per-token scales come from the mixer, per rank column
            adapters = torch.cat([torch.full((t.lora.rank,), t.adapter) for t in terms])
            self.column_info = (torch.full_like(adapters, mixer_layer), adapters, scales)
            offset = mixer.add_columns(*self.column_info)
        at = a.T.contiguous().to(device=device, dtype=dtype)
        self.term = LowRankTerm(at, [b.T.contiguous().to(device=device, dtype=dtype)], [0], [0], offset, mixer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # no module-call machinery for the base: this runs per layer and pass
        return self.term.add_(self.base_layer.forward(x), x)

    @staticmethod
    def fuse_group(layers) -> "LoraGroup | None":
        """One adapter term for layers sharing an input whose base outputs come concatenated
        (fused q/k/v, gate/up): ``A`` stacked, one ``B`` block per adapted layer."""
        wrapped = [layer for layer in layers if isinstance(layer, LoraLinear)]
        mixers = {id(layer.mixer) for layer in wrapped}
        if len(mixers) != 1:
            return None
        return LoraGroup(layers, wrapped[0].mixer)

    def extra_repr(self) -> str:
        return f"rank={self.term.rank}, {'x-lora' if self.mixer is not None else 'lora'}"


class LoraGroup:
    """The adapters of a fused group, added into the group's concatenated base output."""

    def __init__(self, layers, mixer):
        wrapped = [(i, layer) for i, layer in enumerate(layers) if isinstance(layer, LoraLinear)]
        outs = [layer.out_features for layer in layers]
        ranks = [layer.term.rank for _, layer in wrapped]
        offset = None
        if mixer is not None:
            info = [layer.column_info for _, layer in wrapped]
            offset = mixer.add_columns(*(torch.cat(part) for part in zip(*info)))
        self.term = LowRankTerm(torch.cat([layer.term.at for _, layer in wrapped], dim=1),
                                [layer.term.bts[0] for _, layer in wrapped],
                                [sum(ranks[:j]) for j in range(len(wrapped))], [sum(outs[:i]) for i, _ in wrapped],
                                offset, mixer)

    def add_(self, out: torch.Tensor, x: torch.Tensor) -> None:
        """``out`` [T, Σ out] += the adapters' terms."""
        self.term.add_(out, x)


def target_linear(model: nn.Module, path: str, adapter_name: str = "") -> Linear:
    who = f"adapter {adapter_name!r}" if adapter_name else "the adapter"
    try:
        layer = model.get_submodule(path)
    except AttributeError:
        raise AdapterError(f"{who} targets {path!r}, which this model does not have") from None
    if not isinstance(layer, Linear):
        raise AdapterError(f"{who} targets {path!r}, a {type(layer).__name__}, not a linear layer")
    return layer


def routed_ancestor(model: nn.Module, path: str) -> str | None:
    """The enclosing module that hands its layers only some token rows (a mixture of experts)."""
    parts = path.split(".")
    for end in range(len(parts) - 1, 0, -1):
        prefix = ".".join(parts[:end])
        if getattr(model.get_submodule(prefix), "routes_tokens", False):
            return prefix
    return None


def check_shapes(path: str, layer: Linear, lora: LoraModule, adapter_name: str) -> None:
    if lora.a.shape[1] != layer.in_features or lora.b.shape[0] != layer.out_features:
        raise AdapterError(f"adapter {adapter_name!r}: {path} has lora_A {list(lora.a.shape)} and lora_B "
                           f"{list(lora.b.shape)}, but the layer is {layer.in_features} -> {layer.out_features}")


def wrap_linear(model: nn.Module, path: str, wrapper: nn.Module) -> None:
    owner_name, _, attr = path.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    setattr(owner, attr, wrapper)


def reset_linear_groups(model: nn.Module) -> None:
    """Fused q/k/v and gate/up plans name their layers; re-plan them over the wrapped ones (and let
    a native decode stack, which holds the unwrapped weights, be planned anew)."""
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, LinearGroup):
                value.reset()
                value.plan()  # now: a fused group's adapter registers its columns before any pass
            elif isinstance(value, DecodePlan):
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
