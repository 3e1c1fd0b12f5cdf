"""Preallocated KV cache: one pool of slots per layer, sequences own lists of slots.

Its dtype (``engine.kv_cache_dtype``) may be narrower than the activations': keys and values are
rounded to it when written and widened to the activations' dtype when attention reads them.
"""

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
        self.k[layer].index_copy_(0, slots, k.to(self.k.dtype))
        self.v[layer].index_copy_(0, slots, v.to(self.v.dtype))

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


KV_CACHE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def kv_cache_dtype(name: str, activations: torch.dtype, exact: bool) -> torch.dtype:
    """``engine.kv_cache_dtype`` -> a torch dtype. ``auto``: the activations' dtype in the exact mode
    (dense float32 weights, the reference), else float16 under float32 activations (llama.cpp's
    default too; within the accuracy bar on both real models, half the bytes) and the activations'
    dtype under 16-bit ones."""
    if name == "auto":
        return torch.float16 if activations == torch.float32 and not exact else activations
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"engine.kv_cache_dtype={name!r} is not one of auto, {', '.join(KV_CACHE_DTYPES)}")
    return KV_CACHE_DTYPES[name]
