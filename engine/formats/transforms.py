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


def split_row_blocks(raw: RawTensor, sizes: tuple[int, ...]) -> list[RawTensor]:
    """Consecutive row blocks of ``sizes`` rows (a fused [q; k; v] or [gate; up] weight into its parts);
    ``sizes`` must add up to the rows."""
    assert sum(sizes) == raw.shape[0], (sizes, raw.shape)
    per_row = raw.data.numel() // raw.shape[0]  # elements, or bytes when quantized
    flat, parts, start = raw.data.reshape(-1), [], 0
    for n in sizes:
        parts.append(RawTensor(f"{raw.name}[{start}:{start + n}]", raw.qtype, (n, *raw.shape[1:]),
                               flat[start * per_row:(start + n) * per_row]))
        start += n
    return parts
