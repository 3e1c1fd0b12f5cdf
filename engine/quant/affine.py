"""GGUF blocks as group-32 affine codes: w = scale * code + zero, code an unsigned integer.

Every type whose scale groups have 32 elements fits this form exactly (in float32); it is what
the int4 kernels consume. Types with 16-element groups (Q2_K, Q3_K, Q6_K) do not.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mistralrs.engine.quant.dequant import _bits, _bits_of_words, _f16_fields, _k_scale_min, _nibbles
from mistralrs.registry import registries

GROUP = 32
AFFINE_TYPES = {"Q4_0": 4, "Q4_1": 4, "Q5_0": 5, "Q5_1": 5, "Q8_0": 8, "Q4_K": 4, "Q5_K": 5}  # -> code bits


@dataclass
class AffineGroups:
    codes: torch.Tensor  # uint8 [rows, cols]
    scale: torch.Tensor  # float32 [rows, cols // 32]
    zero: torch.Tensor  # float32 [rows, cols // 32]
    bits: int


def _legacy(b: torch.Tensor, qtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per 32-block: codes [n, 32], scale [n], zero [n] for Q4_0/Q4_1/Q5_0/Q5_1/Q8_0."""
    if qtype == "Q4_0":
        d = _f16_fields(b, 0, 1)[:, 0]
        return _nibbles(b[:, 2:18]).flatten(1), d, -8 * d
    if qtype == "Q4_1":
        dm = _f16_fields(b, 0, 2)
        return _nibbles(b[:, 4:20]).flatten(1), dm[:, 0], dm[:, 1]
    if qtype == "Q5_0":
        d = _f16_fields(b, 0, 1)[:, 0]
        return _nibbles(b[:, 6:22]).flatten(1) | (_bits_of_words(b[:, 2:6]) << 4), d, -16 * d
    if qtype == "Q5_1":
        dm = _f16_fields(b, 0, 2)
        return _nibbles(b[:, 8:24]).flatten(1) | (_bits_of_words(b[:, 4:8]) << 4), dm[:, 0], dm[:, 1]
    if qtype == "Q8_0":
        d = _f16_fields(b, 0, 1)[:, 0]
        return (b[:, 2:34].view(torch.int8).to(torch.int16) + 128).to(torch.uint8), d, -128 * d
    raise ValueError(qtype)


def _k_quant(b: torch.Tensor, qtype: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per 256-super-block: codes [n, 8, 32], scale [n, 8], zero [n, 8] for Q4_K/Q5_K."""
    n = b.shape[0]
    dm = _f16_fields(b, 0, 2)
    sc, mn = _k_scale_min(b[:, 4:16])
    scale, zero = dm[:, 0:1] * sc, -(dm[:, 1:2] * mn)
    if qtype == "Q4_K":
        codes = _nibbles(b[:, 16:144].unflatten(1, (4, 32))).reshape(n, 8, 32)
    else:
        codes = _nibbles(b[:, 48:176].unflatten(1, (4, 32))).reshape(n, 8, 32) | _bits(b[:, 16:48], 1, 1) << 4
    return codes, scale, zero


def affine_groups(raw: torch.Tensor, qtype: str, shape: tuple[int, int]) -> AffineGroups:
    if qtype not in AFFINE_TYPES:
        raise ValueError(f"{qtype} has no group-32 affine form")
    rows, cols = shape
    size = registries().quant_types.get(qtype).type_size
    blocks = raw.reshape(-1).view(torch.uint8).reshape(-1, size)
    if qtype.endswith("_K"):
        codes, scale, zero = _k_quant(blocks, qtype)
    else:
        codes, scale, zero = _legacy(blocks, qtype)
    return AffineGroups(
        codes.reshape(rows, cols).to(torch.uint8),
        scale.reshape(rows, cols // GROUP).float(),
        zero.reshape(rows, cols // GROUP).float(),
        AFFINE_TYPES[qtype],
    )
