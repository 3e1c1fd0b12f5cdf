"""Group-32 affine weights as one or two int4 planes for torch's CPU int4 matmul kernel.

A code c of up to 8 bits splits into 4-bit planes c = c0 + 16 c1, and the kernel computes
(code - 8) * scale + zero per plane, so
    w = s c + z = s (c0 - 8) + 16 s (c1 + shift - 8) + (z + 8 s + 16 s (8 - shift))
with each plane one ``_weight_int4pack_mm_for_cpu`` call whose results add up. A 1-bit high plane
(5-bit types) is stored as c1 + 8 (shift 8), so its offset vanishes: large offsets would cost
precision once scales are rounded to bfloat16, which the kernel requires (as are activations).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from mistralrs.engine.quant.affine import GROUP, AffineGroups

_ROW_CHUNK = 4096  # rows packed at a time (a multiple of the kernel's 32-row blocks)


@dataclass
class Int4Plane:
    packed: torch.Tensor  # uint8, torch's packed layout
    scale_zeros: torch.Tensor  # bfloat16 [cols // 32, rows, 2]


def _pack(codes: torch.Tensor) -> torch.Tensor:
    parts = [torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes[r : r + _ROW_CHUNK].to(torch.int32), 1)
             for r in range(0, codes.shape[0], _ROW_CHUNK)]
    return torch.cat(parts) if len(parts) > 1 else parts[0]


@functools.cache
def row_decode_supported() -> bool:
    """The packed layout is torch-internal: check once that we read it as the kernel does (32-row
    blocks; per column k, 16 bytes holding rows r and r + 16 in the low and high nibble)."""
    probe = torch.randint(0, 16, (64, 64), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
    try:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(probe, 1)
    except RuntimeError:
        return False
    return torch.equal(_unpack_rows(packed, torch.arange(64), 64), probe.to(torch.uint8))


def _unpack_rows(packed: torch.Tensor, rows: torch.Tensor, cols: int) -> torch.Tensor:
    flat = packed.reshape(-1)
    base = (rows // 32) * (cols * 16) + rows % 16
    index = base.unsqueeze(1) + torch.arange(cols, device=rows.device) * 16
    byte = flat[index]
    high = ((rows % 32) >= 16).unsqueeze(1)
    return torch.where(high, byte >> 4, byte & 0x0F)


class Int4PlanesWeight:
    """A [out_features, in_features] weight held as packed int4 planes."""

    kind = "int4-planes"

    def __init__(self, groups: AffineGroups):
        rows, cols = groups.codes.shape
        self.shape = (rows, cols)
        n_planes = 1 if groups.bits <= 4 else 2
        scale, zero = groups.scale, groups.zero
        self.planes: list[Int4Plane] = []
        shift = 8 if groups.bits <= 7 else 0  # high plane of 5-bit codes holds 0..7 only
        zero_total = zero + 8 * scale + (16 * (8 - shift) * scale if n_planes == 2 else 0)
        for p in range(n_planes):
            codes = (groups.codes >> (4 * p)) & 0x0F
            plane_scale = scale * (16**p)
            if p == 0:
                plane_zero = zero_total
            else:
                codes, plane_zero = codes + shift, torch.zeros_like(zero)
            sz = torch.stack([plane_scale.t(), plane_zero.t()], dim=-1).to(torch.bfloat16).contiguous()
            self.planes.append(Int4Plane(_pack(codes), sz))

    @staticmethod
    def supports(rows: int, cols: int) -> bool:
        return rows % 32 == 0 and cols % GROUP == 0 and cols % 16 == 0

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        lead, cols = x.shape[:-1], x.shape[-1]
        xb = x.reshape(-1, cols).to(torch.bfloat16)
        y = None
        for plane in self.planes:
            part = torch.ops.aten._weight_int4pack_mm_for_cpu(xb, plane.packed, GROUP, plane.scale_zeros)
            y = part if y is None else y.add_(part)
        return y.to(x.dtype).reshape(*lead, self.shape[0])

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantized rows (embedding lookup from the same storage as the output head)."""
        cols = self.shape[1]
        out = None
        for plane in self.planes:
            codes = _unpack_rows(plane.packed, ids, cols).float()
            sz = plane.scale_zeros[:, ids].float()  # [groups, n, 2]
            scale = sz[..., 0].t().repeat_interleave(GROUP, dim=1)
            zero = sz[..., 1].t().repeat_interleave(GROUP, dim=1)
            part = (codes - 8) * scale + zero
            out = part if out is None else out + part
        return out

    def dense(self) -> torch.Tensor:
        return self.rows(torch.arange(self.shape[0]))

    @property
    def nbytes(self) -> int:
        return sum(p.packed.numel() * p.packed.element_size() + p.scale_zeros.numel() * 2 for p in self.planes)
