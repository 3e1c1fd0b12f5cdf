"""Decode attention as plain torch computes it: the references the native kernel is tested against."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reference_attention(q, k_cache, v_cache, slots, lens, scale, window):
    out = []
    for b in range(q.shape[0]):
        n = int(lens[b])
        ks, vs = k_cache[slots[b, :n]], v_cache[slots[b, :n]]  # [n, Hkv, D]
        mask = torch.ones(n, dtype=torch.bool)
        if window:
            mask[: max(0, n - window)] = False
        o = F.scaled_dot_product_attention(q[b].unsqueeze(1).unsqueeze(0), ks.transpose(0, 1).unsqueeze(0),
                                           vs.transpose(0, 1).unsqueeze(0), attn_mask=mask.view(1, 1, 1, n), scale=scale,
                                           enable_gqa=True)
        out.append(o[0, :, 0])
    return torch.stack(out)


def soft_capped_reference(q, k_cache, v_cache, slots, lens, scale, window, cap):
    """Gemma 2's eager attention as transformers writes it: scores * scale, cap * tanh(scores / cap), softmax."""
    out = []
    for b in range(q.shape[0]):
        n = int(lens[b])
        first = max(0, n - window) if window else 0
        ks, vs = k_cache[slots[b, first:n]], v_cache[slots[b, first:n]]  # [m, Hkv, D]
        rep = q.shape[1] // ks.shape[1]
        ks, vs = ks.repeat_interleave(rep, dim=1), vs.repeat_interleave(rep, dim=1)
        scores = torch.einsum("hd,mhd->hm", q[b], ks) * scale
        probs = torch.softmax(torch.tanh(scores / cap) * cap, dim=-1)
        out.append(torch.einsum("hm,mhd->hd", probs, vs))
    return torch.stack(out)
