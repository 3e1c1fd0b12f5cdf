"""How a loaded weight is held and multiplied. Four forms:

- ``RepackedWeight``: on CPU, the file's blocks repacked once at load into the C++ kernels'
  row-interleaved layout (engine/kernels/quant_layout.h; about the file's bytes), multiplied by
  their integer dot-product kernel for decode-sized batches; larger batches dequantize and use the
  BLAS matmul.
- ``Int4PlanesWeight`` (int4_planes.py): group-32 types packed for torch's CPU int4 kernel, when
  the C++ kernels cannot be built.
- ``DenseWeight``: a plain tensor (float checkpoints, the float32 reference mode, fallbacks).
- ``BlockWeight``: the file's blocks, dequantized on each use (GPUs and other devices).

Every form answers ``matmul(x)``, ``rows(ids)`` (embedding lookups share the head's storage) and
``nbytes``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.quant.affine import AFFINE_TYPES, affine_groups
from mistralrs.engine.quant.dequant import dequantize
from mistralrs.engine.quant.int4_planes import Int4PlanesWeight, row_decode_supported
from mistralrs.engine.kernels import native_ops
from mistralrs.registry import registries

NATIVE_MAX_ROWS = 16  # activations rows up to which the C++ kernel beats dequantize + BLAS
PACKED_ROWS = 16  # rows per block of the repacked layout (quant_layout.h kRows); blocks are independent
REPACK_PART_BYTES = 16 * 2**20  # mapped tensors larger than this are repacked in parts of about this size

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

    def __init__(self, raw: RawTensor, device: torch.device, compute_dtype: torch.dtype, copy: bool = True):
        self.qtype, self.shape = raw.qtype, tuple(raw.shape)
        data = raw.data.reshape(-1).view(torch.uint8)
        # On CPU the blocks may stay a view of the memory-mapped file: zero-copy, pages shared.
        self.raw = data.to(device).clone() if copy else data.contiguous()
        self.compute_dtype = compute_dtype
        spec = registries().quant_types.get(self.qtype)
        self.row_bytes = self.shape[1] // spec.block_size * spec.type_size

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


class RepackedWeight:
    """A quantized weight in the C++ kernels' layout (the memory of the file's blocks)."""

    kind = "gguf-repacked"

    def __init__(self, raw: RawTensor, ops) -> None:
        self.qtype, self.shape = raw.qtype, tuple(raw.shape)
        self.ops, self.type_id = ops, registries().quant_types.get(raw.qtype).ggml_type
        blocks = raw.data.reshape(-1).view(torch.uint8).contiguous()
        if raw.release is None or blocks.numel() <= REPACK_PART_BYTES:
            self.packed = ops.quant_repack(blocks, self.type_id, *self.shape)
        else:  # a large mapped tensor (Gemma 3's 262k-row embedding): never the file's pages and the copy at once
            self.packed = self._repack_in_parts(blocks, raw.release)

    def _repack_in_parts(self, blocks: torch.Tensor, release) -> torch.Tensor:
        """Repack runs of whole 16-row blocks (independent in the packed layout) straight into their
        place, and drop each run's file pages as soon as it is copied."""
        n, k = self.shape
        row_bytes = blocks.numel() // n
        rows = max(PACKED_ROWS, REPACK_PART_BYTES // row_bytes // PACKED_ROWS * PACKED_ROWS)
        block_bytes = self.ops.quant_repack(blocks[:PACKED_ROWS * row_bytes], self.type_id, PACKED_ROWS, k).numel()
        out = torch.empty(block_bytes * -(-n // PACKED_ROWS), dtype=torch.uint8)
        for r0 in range(0, n, rows):
            r1 = min(n, r0 + rows)
            start = r0 // PACKED_ROWS * block_bytes
            part = out[start:start + block_bytes * -(-(r1 - r0) // PACKED_ROWS)]
            self.ops.quant_repack_into(blocks[r0 * row_bytes:r1 * row_bytes], self.type_id, r1 - r0, k, part)
            release(r0 * row_bytes, r1 * row_bytes)
        return out

    def dense(self) -> torch.Tensor:
        return self.ops.quant_dequantize(self.packed, self.type_id, *self.shape)

    def matmul(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2 or x.dtype != torch.float32:  # the decode path passes [T, K] float32 as is
            return self.matmul(x.reshape(-1, x.shape[-1]).float()).to(x.dtype).reshape(*x.shape[:-1], self.shape[0])
        if x.shape[0] > NATIVE_MAX_ROWS:  # prefill: dequantize once, then the BLAS matmul
            return F.linear(x, self.dense())
        return self.ops.quant_matmul(x, self.packed, self.type_id, self.shape[0])

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.ops.quant_rows(self.packed, self.type_id, *self.shape, ids.reshape(-1))
        return out.reshape(*ids.shape, self.shape[1])

    @property
    def nbytes(self) -> int:
        return self.packed.numel()


class NativeGroup:
    """Repacked weights sharing an input (q/k/v, gate/up): one kernel call for all of them."""

    def __init__(self, weights: list[RepackedWeight]):
        self.ops = weights[0].ops
        self.packed = [w.packed for w in weights]
        self.types = [w.type_id for w in weights]
        self.rows = [w.shape[0] for w in weights]

    def __call__(self, x: torch.Tensor) -> list[torch.Tensor] | None:
        """The products, or None for a prefill-sized batch (each weight then goes its own way)."""
        out = self.concatenated(x)
        return None if out is None else out.split(self.rows, dim=-1)

    def concatenated(self, x: torch.Tensor) -> torch.Tensor | None:
        """The products side by side [T, Σ rows] (an adapter adds its terms in one call), or None."""
        if x.dim() != 2 or x.dtype != torch.float32 or x.shape[0] > NATIVE_MAX_ROWS:
            return None
        return self.ops.quant_matmul_many(x, self.packed, self.types, self.rows)


def native_group(weights: list) -> NativeGroup | None:
    return NativeGroup(weights) if all(isinstance(w, RepackedWeight) for w in weights) else None


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
    """The compact, fast form of a 2-D checkpoint weight for ``device``. A type the C++ kernels do not
    handle (``native`` false in the quant-type table, e.g. a plugin's) is dequantized once on CPU."""
    rows, cols = raw.shape
    if raw.qtype in FLOAT_TYPES:
        return DenseWeight(dense_from_raw(raw, compute_dtype, device))
    if device.type == "cpu":
        spec = registries().quant_types.get(raw.qtype)
        ops = native_ops() if spec.native else None
        if ops is not None and cols % spec.block_size == 0:
            return RepackedWeight(raw, ops)
        if (raw.qtype in AFFINE_TYPES and Int4PlanesWeight.supports(rows, cols)
                and (not need_rows or row_decode_supported())):
            return Int4PlanesWeight(affine_groups(raw.data, raw.qtype, (rows, cols)))
        return DenseWeight(dense_from_raw(raw, compute_dtype, device))
    return BlockWeight(raw, device, compute_dtype)
