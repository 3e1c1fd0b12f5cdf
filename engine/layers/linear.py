"""Weight-holding layers. Parameters start empty on the meta device and the loader fills them —
either as a plain ``weight`` parameter or as a compact weight object (engine/quant/weights.py)
with ``matmul``/``rows``, which is how quantized checkpoints stay quantized in memory.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mistralrs.registry.interfaces import AdaptedLinear


def _empty(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, device="meta"), requires_grad=False)


class _Weighted(nn.Module):
    packed: Any = None  # a weight object from engine/quant/weights.py, replacing `weight`
    dtype: torch.dtype = torch.float32  # activations this layer hands on

    def set_packed(self, weight: Any, dtype: torch.dtype) -> None:
        if "weight" in self._parameters:
            del self._parameters["weight"]
        self.packed, self.dtype = weight, dtype

    def weight_nbytes(self) -> int:
        if self.packed is not None:
            return self.packed.nbytes
        return self.weight.numel() * self.weight.element_size()


class Linear(_Weighted):
    def __init__(self, in_features: int, out_features: int, bias: bool = False):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = _empty(out_features, in_features)
        self.bias = _empty(out_features) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.linear(x, self.weight, self.bias)
        y = self.packed.matmul(x)
        return y if self.bias is None else y + self.bias

    def extra_repr(self) -> str:
        kind = self.packed.kind if self.packed is not None else "dense"
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, {kind}"


class Embedding(_Weighted):
    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.weight = _empty(num_embeddings, dim)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.packed is None:
            return F.embedding(ids, self.weight)
        return self.packed.rows(ids).to(self.dtype)


def base_layer(layer: nn.Module) -> nn.Module:
    """The layer an adapter wraps (interfaces.AdaptedLinear), or ``layer`` itself when unwrapped."""
    return layer.base_layer if isinstance(layer, AdaptedLinear) else layer


class LinearGroup:
    """Linear layers of ``owner`` sharing an input (q/k/v, gate/up), applied in one kernel call
    when their weights allow it. Weights arrive after the model is built, so the plan is made on
    first use (``reset()`` after swapping a layer, e.g. for an adapter)."""

    def __init__(self, owner: nn.Module, *names: str):
        self.owner, self.names = owner, names
        self.reset()

    def reset(self) -> None:
        self._planned, self._fused, self._layers, self._adapter = False, None, (), None

    def plan(self) -> None:
        from mistralrs.engine.quant.weights import native_group

        self._layers = self.layers()
        # An adapter wrapping a layer (interfaces.AdaptedLinear) keeps the fused base call when its
        # ``fuse_group`` gives one object adding its terms to the concatenated outputs.
        bases = [base_layer(layer) for layer in self._layers]
        plain = all(isinstance(layer, Linear) and layer.packed is not None and layer.bias is None
                    for layer in bases)
        self._fused = native_group([layer.packed for layer in bases]) if plain else None
        adapted = [layer for layer, base in zip(self._layers, bases) if layer is not base]
        if adapted and self._fused is not None:
            self._adapter = adapted[0].fuse_group(self._layers)
            if self._adapter is None:
                self._fused = None  # each layer applies its own adapter
        self._planned = True

    def layers(self) -> tuple[nn.Module, ...]:
        """The grouped layers as they are now (adapter wrappers included)."""
        return tuple(getattr(self.owner, n) for n in self.names)

    def native_plan(self):
        """(the one-call native product, the adapters' ``LowRankTerm`` or None), or None when the
        layers take separate calls."""
        if not self._planned:
            self.plan()
        term = self._adapter.term if self._adapter is not None else None
        if self._fused is None or (self._adapter is not None and term is None):
            return None
        return self._fused, term

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if not self._planned:
            self.plan()
        if self._fused is not None:
            if self._adapter is None:
                out = self._fused(x)
                if out is not None:
                    return out
            else:
                flat = self._fused.concatenated(x)
                if flat is not None:
                    self._adapter.add_(flat, x)
                    return flat.split(self._fused.rows, dim=-1)
        return [layer(x) for layer in self._layers]
