"""How a loaded weight is held and multiplied. Three forms:

- ``DenseWeight``: a plain tensor (float checkpoints, the float32 reference mode, and on CPU the
  16-element-group K-quants, whose scales do not fit the int4 kernels).
- ``Int4PlanesWeight`` (int4_planes.py): group-32 types packed for torch's CPU int4 kernel.
- ``BlockWeight``: the file's blocks as they are, dequantized on each use (other devices).

Every form answers ``matmul(x)``, ``rows(ids)`` (embedding lookups share the head's storage) and
``nbytes``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..formats.checkpoint import RawTensor
from .affine import AFFINE_TYPES, affine_groups
from .dequant import BLOCK_GEOMETRY, dequantize
from .int4_planes import Int4PlanesWeight, row_decode_supported

FLOAT_TYPES = ("F32", "F16", "BF16")


class DenseWeight:
    kind = "dense"

    def __init__(self, tensor: torch.Tensor):
        self.tensor = tensor
        self.shape = tuple(tensor.shape)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.tensor.dtype), self.tensor).to(x.dtype)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.tensor)

    def dense(self) -> torch.Tensor:
        return self.tensor

    @property
    def nbytes(self) -> int:
        return self.tensor.numel() * self.tensor.element_size()


class BlockWeight:
    """Blocks stay as stored; each use dequantizes (fast on GPUs, compact everywhere)."""

    kind = "blocks"

    def __init__(self, raw: RawTensor, device: torch.device, compute_dtype: torch.dtype):
        self.qtype, self.shape = raw.qtype, tuple(raw.shape)
        self.raw = raw.data.reshape(-1).view(torch.uint8).to(device).clone()
        self.compute_dtype = compute_dtype
        block, size = BLOCK_GEOMETRY[self.qtype]
        self.row_bytes = self.shape[1] // block * size

    def dense(self) -> torch.Tensor:
        return dequantize(self.raw, self.qtype, self.shape).to(self.compute_dtype)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(self.compute_dtype), self.dense()).to(x.dtype)

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        raw = self.raw.view(self.shape[0], self.row_bytes)[ids]
        return dequantize(raw, self.qtype, (ids.numel(), self.shape[1])).to(self.compute_dtype)

    @property
    def nbytes(self) -> int:
        return self.raw.numel()


def dense_from_raw(raw: RawTensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if raw.qtype in FLOAT_TYPES and raw.data.dtype != torch.uint8:
        t = raw.data.reshape(raw.shape)
    else:
        t = dequantize(raw.data, raw.qtype, raw.shape)
    out = t.to(device=device, dtype=dtype)
    if out.data_ptr() == raw.data.data_ptr():  # still a view of the read-only file map
        out = out.clone()
    return out


def packed_weight(raw: RawTensor, device: torch.device, compute_dtype: torch.dtype, *, need_rows: bool = False):
    """The compact, fast form of a 2-D checkpoint weight for ``device``."""
    rows, cols = raw.shape
    if raw.qtype in FLOAT_TYPES:
        return DenseWeight(dense_from_raw(raw, compute_dtype, device))
    if device.type == "cpu":
        if (raw.qtype in AFFINE_TYPES and Int4PlanesWeight.supports(rows, cols)
                and (not need_rows or row_decode_supported())):
            return Int4PlanesWeight(affine_groups(raw.data, raw.qtype, (rows, cols)))
        return DenseWeight(dense_from_raw(raw, compute_dtype, device))
    return BlockWeight(raw, device, compute_dtype)
