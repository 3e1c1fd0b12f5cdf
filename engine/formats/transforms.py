"""Reorganizations of stored tensors that work on float and block-quantized data alike.

Quantized blocks run along a row, so anything that only moves whole rows is lossless on them.
"""

from __future__ import annotations

import torch

from mistralrs.engine.formats.checkpoint import RawTensor


def permute_rows(raw: RawTensor, order: torch.Tensor) -> RawTensor:
    rows = raw.shape[0]
    data = raw.data.reshape(rows, -1)[order].reshape(raw.data.shape)
    return RawTensor(raw.name, raw.qtype, raw.shape, data)


def unpermute_gguf_rope_rows(raw: RawTensor, n_heads: int) -> RawTensor:
    """llama.cpp's converter interleaves each head's rows (pairs 2i, 2i+1) for its NORM rope; put
    them back in HF's rotate-half order (first half, second half)."""
    rows = raw.shape[0]
    head_dim = rows // n_heads
    # stored row (h, j, pair) came from HF row (h, pair, j)
    order = torch.arange(rows).view(n_heads, 2, head_dim // 2).transpose(1, 2).reshape(-1)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(rows)
    return permute_rows(raw, inverse)
