"""Preallocated KV cache: one pool of slots per layer, sequences own lists of slots.

Its dtype (``engine.kv_cache_dtype``) may be narrower than the activations': keys and values are
rounded to it when written and widened to the activations' dtype when attention reads them.

``q8_0`` stores each head row as llama.cpp's GGML_TYPE_Q8_0 blocks: per 32 consecutive values one
float16 scale ``d = max|x| / 127`` followed by 32 int8 ``round(x / d)`` (34 bytes, 8.5 bits a value),
packed in one uint8 tensor ``[layers, slots, kv_heads, head_dim / 32 * 34]``. One tensor per cache
keeps every consumer's plumbing (slot rows, per-layer views, the native stack's arguments) as for
the float dtypes, each block's scale sits next to its values (read in the same pass), and the bytes
are GGML's, so ``gguf.quants`` checks them directly. The decode kernel (engine/kernels/attention.cpp)
widens a run of rows at a time into an L1-sized float32 tile, exactly (scale times int8), once for
all the query heads of a GQA group; the module path and prefill dequantize the rows they read.

Choosing ``auto`` (measured on SmolLM2-135M Q4_1 and Gemma-3-270M Q4_K_M, the default fast path's
decode against the float reference; README "KV cache precision"): float16 and bfloat16 halve
float32's bytes, q8_0 takes 26.6% of them. All three keep top-1 agreement at 100% of prompt positions
and the last-position logit error below llama.cpp's (q8_0: 0.34 / 0.58 against llama.cpp's 1.77 /
2.16), but only float16 stays as close as float32 (0.011 / 0.014; bfloat16 0.07 / 0.08) and keeps
every greedy continuation equal to the reference's (q8_0 parts from it on 2 of 6 prompts, where
llama.cpp does too). Decode at 2,000 tokens of context runs within ~10% across the four (q8_0
1.02-1.1x float16, float32 0.9-1.0x). So ``auto`` stays float16, llama.cpp's default too; q8_0 is
the choice when the cache's size binds (long contexts, many sequences).
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


@dataclass(frozen=True)
class KVBlockType:
    """A block-quantized cache element type: each run of ``block`` values of a head row is stored as
    ``block_bytes`` bytes (the cache tensors are uint8)."""

    name: str
    block: int
    block_bytes: int

    def __str__(self) -> str:
        return self.name

    def row_bytes(self, dim: int) -> int:
        return dim // self.block * self.block_bytes


Q8_0 = KVBlockType("q8_0", 32, 34)  # GGML_TYPE_Q8_0: float16 scale + 32 int8
KVDType = torch.dtype | KVBlockType


def kv_row_bytes(dtype: KVDType, dim: int) -> int:
    """Bytes of one cached head row of ``dim`` values."""
    return dtype.row_bytes(dim) if isinstance(dtype, KVBlockType) else dim * torch.finfo(dtype).bits // 8


def check_kv_head_dims(dtype: KVDType, head_dims: tuple[int, ...]) -> None:
    if isinstance(dtype, KVBlockType) and any(d % dtype.block for d in head_dims):
        raise ValueError(f"engine.kv_cache_dtype={dtype.name} needs a head_dim that is a multiple of {dtype.block}; "
                         f"this model's head_dim is {' / '.join(map(str, sorted(set(head_dims))))} "
                         f"(use float16, bfloat16 or float32)")


def quantize_q8_0(x: torch.Tensor) -> torch.Tensor:
    """[..., D] float -> [..., D / 32 * 34] uint8 Q8_0 blocks, as ggml's quantize_row_q8_0_ref (float32
    scale for the rounding, half away from zero; the stored scale rounded to float16)."""
    x = x.float()
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    d = blocks.abs().amax(-1, keepdim=True) / 127
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    y = blocks * inv
    r = torch.round(y)  # half to even; ggml's roundf takes ties away from zero
    t = torch.trunc(y)
    r = torch.where((y - t).abs() == 0.5, t + torch.sign(y), r)
    out = torch.cat([d.to(torch.float16).view(torch.uint8), r.to(torch.int8).view(torch.uint8)], -1)
    return out.reshape(*x.shape[:-1], -1)


def dequantize_q8_0(packed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[..., D / 32 * 34] uint8 Q8_0 blocks -> [..., D] in ``dtype`` (scale times value in float32)."""
    blocks = packed.reshape(*packed.shape[:-1], -1, 34)
    d = blocks[..., :2].contiguous().view(torch.float16).float()
    q = blocks[..., 2:].contiguous().view(torch.int8).float()
    return (q * d).reshape(*packed.shape[:-1], -1).to(dtype)


class KVCache:
    """``k[layer]`` / ``v[layer]`` are ``[num_slots, kv_heads, head_dim]`` (q8_0: ``head_dim / 32 * 34``
    bytes); written once, never resized."""

    def __init__(self, spec: KVCacheSpec, num_slots: int, dtype: KVDType, device: torch.device):
        self.spec = spec
        self.num_slots = num_slots
        self.dtype = dtype
        shape = (spec.num_layers, num_slots, spec.num_kv_heads)
        k_dim, v_dim = spec.head_dim, spec.v_head_dim or spec.head_dim
        self.blocks = dtype if isinstance(dtype, KVBlockType) else None
        if self.blocks is not None:
            check_kv_head_dims(dtype, (k_dim, v_dim))
            k_dim, v_dim, dtype = self.blocks.row_bytes(k_dim), self.blocks.row_bytes(v_dim), torch.uint8
        # Uninitialized on purpose: pages are only touched (and counted in RSS) once used, and
        # attention reads a slot only after this step or an earlier one wrote it.
        self.k = torch.empty(*shape, k_dim, dtype=dtype, device=device)
        self.v = torch.empty(*shape, v_dim, dtype=dtype, device=device)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if self.blocks is not None:
            k, v = quantize_q8_0(k), quantize_q8_0(v)
        self.k[layer].index_copy_(0, slots, k.to(self.k.dtype))
        self.v[layer].index_copy_(0, slots, v.to(self.v.dtype))

    def widen(self, rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Rows read from ``k`` or ``v`` as ``dtype`` values (q8_0: dequantized)."""
        return dequantize_q8_0(rows, dtype) if self.blocks is not None else rows.to(dtype)

    @property
    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


KV_CACHE_DTYPES: dict[str, KVDType] = {"float32": torch.float32, "float16": torch.float16,
                                       "bfloat16": torch.bfloat16, "q8_0": Q8_0}


def kv_cache_dtype(name: str, activations: torch.dtype, exact: bool) -> KVDType:
    """``engine.kv_cache_dtype`` -> a torch dtype, or :data:`Q8_0`. ``auto``: the activations' dtype in
    the exact mode (dense float32 weights, the reference), else float16 under float32 activations
    (llama.cpp's default too; within the accuracy bar on both real models, half the bytes) and the
    activations' dtype under 16-bit ones."""
    if name == "auto":
        return torch.float16 if activations == torch.float32 and not exact else activations
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"engine.kv_cache_dtype={name!r} is not one of auto, {', '.join(KV_CACHE_DTYPES)}")
    return KV_CACHE_DTYPES[name]
