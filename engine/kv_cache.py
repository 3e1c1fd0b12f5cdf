"""Preallocated KV cache: one pool of slots per layer, sequences own lists of slots."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class KVCacheSpec:
    """What a model needs cached per token, per layer."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int | None = None


class KVCache:
    """``k[layer]`` / ``v[layer]`` are ``[num_slots, kv_heads, head_dim]``; written once, never resized."""

    def __init__(self, spec: KVCacheSpec, num_slots: int, dtype: torch.dtype, device: torch.device):
        self.spec = spec
        self.num_slots = num_slots
        shape = (spec.num_layers, num_slots, spec.num_kv_heads)
        # Uninitialized on purpose: pages are only touched (and counted in RSS) once used, and
        # attention reads a slot only after this step or an earlier one wrote it.
        self.k = torch.empty(*shape, spec.head_dim, dtype=dtype, device=device)
        self.v = torch.empty(*shape, spec.v_head_dim or spec.head_dim, dtype=dtype, device=device)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k[layer].index_copy_(0, slots, k)
        self.v[layer].index_copy_(0, slots, v)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()
