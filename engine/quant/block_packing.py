"""Packing small integer codes into GGUF block bytes: shared by every quantizer (quantize.py's
32-element types and quantize_k.py's K-types), so neither quantizer module depends on the other."""

from __future__ import annotations

import torch


def f16_bytes(d: torch.Tensor) -> torch.Tensor:
    """float32 (n, k) -> the little-endian bytes (n, 2k) of its float16 rounding."""
    return d.to(torch.float16).contiguous().view(torch.uint8)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(..., 2, k) codes < 16 -> (..., k) bytes: first half in the low nibbles."""
    return q[..., 0, :] | (q[..., 1, :] << 4)


def pack_fields(q: torch.Tensor, step: int) -> torch.Tensor:
    """(..., m, k) small codes -> (..., k) bytes holding field j at bit j * step."""
    out = q[..., 0, :].clone()
    for j in range(1, q.shape[-2]):
        out |= q[..., j, :] << (j * step)
    return out


def high_bits_words(q: torch.Tensor) -> torch.Tensor:
    """(n, 32) 5-bit codes -> (n, 4) bytes of a little-endian uint32 holding bit 4 of code i at bit i."""
    bits = (q >> 4).view(q.shape[0], 4, 8).transpose(1, 2)  # (n, bit j, byte b) = code 8b + j
    return pack_fields(bits, 1)
