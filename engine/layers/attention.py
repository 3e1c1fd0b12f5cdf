"""Attention over the KV cache: write the step's K/V, then attend per sequence segment."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs.engine.core.batch import AttentionBatch
from mistralrs.engine.kernels import fast_ops
from mistralrs.engine.core.kv_cache import KVCache

# the cache tensors' dtypes the native kernels take (uint8: q8_0 blocks, engine/core/kv_cache.py)
NATIVE_CACHE_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.uint8)


def cached_attention(
    q: torch.Tensor,  # [T, heads, head_dim]
    k: torch.Tensor,  # [T, kv_heads, head_dim]
    v: torch.Tensor,  # [T, kv_heads, v_head_dim]
    cache: KVCache,
    layer: int,
    batch: AttentionBatch,
    scale: float | None = None,
    window: int | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Returns [T, heads, v_head_dim]. ``softcap``: attention scores become softcap * tanh(score /
    softcap) before the softmax (Gemma 2)."""
    k_cache, v_cache = cache.k[layer], cache.v[layer]
    # the native kernels take float32 activations over a float32, float16, bfloat16 or q8_0 cache
    ops = fast_ops(q) if k_cache.dtype in NATIVE_CACHE_DTYPES and not k_cache.is_cuda else None
    if ops is not None:
        ops.kv_write(k_cache, v_cache, batch.slot_mapping, k, v)
        if batch.decode is not None:  # every sequence decodes one token: one native call
            scale = scale if scale is not None else q.shape[-1] ** -0.5
            return ops.decode_attention(q, k_cache, v_cache, batch.decode.slots, batch.decode.lens, scale, window or 0,
                                       softcap or 0.0)
    else:
        cache.write(layer, batch.slot_mapping, k, v)
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    for seg, mask in zip(batch.segments, batch.masks(window)):
        qs = q[seg.q_slice].transpose(0, 1).unsqueeze(0)  # [1, H, q_len, D]
        ks = cache.widen(_rows(k_cache, seg.kv_slots), q.dtype).transpose(0, 1).unsqueeze(0)  # [1, Hkv, ctx, D]
        vs = cache.widen(_rows(v_cache, seg.kv_slots), q.dtype).transpose(0, 1).unsqueeze(0)
        if softcap:
            o = _soft_capped_attention(qs, ks, vs, mask, seg.q_len, scale, softcap)
        else:
            causal = mask is None and seg.q_len > 1
            o = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=True)
        out[seg.q_slice] = o.squeeze(0).transpose(0, 1)
    return out


def _soft_capped_attention(q, k, v, mask, q_len: int, scale: float | None, cap: float) -> torch.Tensor:
    """SDPA's computation with the scores soft-capped before the mask and softmax (SDPA has no hook
    for it). q [1, H, q_len, D]; k, v [1, Hkv, ctx, D]; mask as ``AttentionBatch.masks`` gives it."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
    scores = torch.tanh(scores / cap) * cap
    if mask is None and q_len > 1:  # plain causal over q_len == ctx_len
        mask = torch.ones(q_len, k.shape[2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v


def _rows(cache: torch.Tensor, slots: torch.Tensor | slice) -> torch.Tensor:
    # index_select: advanced indexing takes a much slower general path here
    return cache[slots] if isinstance(slots, slice) else cache.index_select(0, slots)
