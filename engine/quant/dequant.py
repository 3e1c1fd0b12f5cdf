"""Vectorized torch dequantization of GGML/GGUF tensor types.

``dequantize`` reads any type of the quant-type table (the registry's quant types): it checks the
bytes against the type's block geometry and calls the type's dequantize function, which for the
built-in types is ``decode_blocks`` below and for a plugin's type the plugin's own.

Results are bit-identical to ``gguf.quants.dequantize`` (gguf-py 0.19): every float
operation below is the same IEEE float32 operation, in the same order, that gguf-py
does in numpy. The rules that make this hold:

* f16 scales are widened to float32 *before* any arithmetic (exact), and products of
  scales (``d * sub_scale``) happen in float32, as in gguf-py.
* Quant values are small integers, so how they are unpacked (integer ops, any order)
  does not matter; they convert to float32 exactly.
* d (11 significant bits) * sub-scale (<= 7) * quant (<= 6) fits in float32's 24, so
  every product is exact; only the final ``+ m`` / ``- dmin * m`` (and Q8_K's f32 d)
  round. Each float op is still its own kernel call (convert, ``mul_``, ``add_`` or
  ``sub_``), so nothing depends on FMA contraction either.

Work happens in chunks of blocks written straight into the preallocated output, so
temporaries stay small (cache-sized) whatever the tensor size.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from mistralrs.registry import QuantTypeSpec, registries

__all__ = ["decode_blocks", "dequantize"]

# Output elements per chunk (4 MiB of float32): big enough that per-op overhead is
# noise, small enough that a chunk's few temporaries stay cache-resident. Measured
# best of 2**16..2**22 on a 2-core CPU.
_CHUNK_ELEMENTS = 1 << 20

# A kernel gets a chunk of blocks, its output rows, and the chunk's scale fields.
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], None]


# ---------------------------------------------------------------------------- helpers


def _nan_exact(h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """`f` = h.float() with NaNs replaced by numpy's widening: sign and payload kept,
    signalling NaNs left signalling. torch quiets them, and its scalar (tail) path
    even returns the canonical 0x7fffffff, so NaN bits would depend on position."""
    bits = h.view(torch.int16).to(torch.int32)
    # int16 sign extension fills the sign/exponent bits; OR sets the rest of the exponent.
    nan_bits = (bits << 13) | 0x7F800000
    return torch.where(torch.isnan(f), nan_bits.view(torch.float32), f)


def _widen_f16(h: torch.Tensor) -> torch.Tensor:
    """float16 -> float32 bit-identical to numpy's astype (exact for non-NaN anyway)."""
    f = h.float()
    # One scan; the NaN fix-up only runs for tensors that actually hold NaNs.
    return _nan_exact(h, f) if bool(torch.isnan(f).any()) else f


def _f16_fields(blocks: torch.Tensor, offset: int, count: int) -> torch.Tensor:
    """`count` adjacent f16 fields at byte `offset` of each block -> float32 (n, count)."""
    # contiguous() copies 2 bytes per field, which also fixes any misalignment.
    h = blocks[:, offset : offset + 2 * count].contiguous().view(torch.float16)
    return _nan_exact(h, h.float())  # one or two per block: cheap, and no syncing any()


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(..., k) bytes -> (..., 2, k): low nibbles of all k bytes, then the high ones."""
    return torch.stack((qs & 0x0F, qs >> 4), dim=-2)


def _bits(qs: torch.Tensor, step: int, mask: int) -> torch.Tensor:
    """(..., k) bytes -> (..., 8 // step, k): field j is (byte >> (j * step)) & mask."""
    shifts = torch.arange(0, 8, step, dtype=torch.uint8, device=qs.device)
    return (qs.unsqueeze(-2) >> shifts.unsqueeze(-1)) & mask


def _bits_of_words(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) little-endian uint32 bytes -> (n, 32) with bit i of the word at column i."""
    shifts = torch.arange(8, dtype=torch.uint8, device=qh.device)
    return ((qh.unsqueeze(-1) >> shifts) & 1).flatten(1)


def _k_scale_min(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack the 12-byte Q4_K/Q5_K field into eight 6-bit scales and mins, as float32."""
    d, m, md = scales[:, 0:4], scales[:, 4:8], scales[:, 8:12]
    sc = torch.cat((d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)), dim=1)
    mn = torch.cat((m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)), dim=1)
    return sc.float(), mn.float()


def _minus(q: torch.Tensor, offset: int) -> torch.Tensor:
    """Unsigned quant codes -> signed int8 codes minus `offset` (exact integer math)."""
    return q.view(torch.int8) - offset


# ------------------------------------------------------------------- block kernels
# Each kernel takes `b` (n, type_size) uint8 blocks and writes (n, block_size) float32
# into `out`. The comment on each gives gguf-py's float expression being mirrored.


def _q4_0(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # d * (q - 8)
    q = _nibbles(b[:, 2:18]).flatten(1)
    out.copy_(_minus(q, 8))
    out.mul_(h[:, 0:1])


def _q4_1(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # (d * q) + m
    out.copy_(_nibbles(b[:, 4:20]).flatten(1))
    out.mul_(h[:, 0:1])
    out.add_(h[:, 1:2])


def _q5_0(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # d * (q - 16), q = low nibble | bit << 4
    q = _nibbles(b[:, 6:22]).flatten(1) | (_bits_of_words(b[:, 2:6]) << 4)
    out.copy_(_minus(q, 16))
    out.mul_(h[:, 0:1])


def _q5_1(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # (d * q) + m
    out.copy_(_nibbles(b[:, 8:24]).flatten(1) | (_bits_of_words(b[:, 4:8]) << 4))
    out.mul_(h[:, 0:1])
    out.add_(h[:, 1:2])


def _q8_0(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # q * d
    out.copy_(b[:, 2:34].view(torch.int8))
    out.mul_(h[:, 0:1])


def _q2_k(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # (d * sc) * q - (dmin * m), with 16 sub-blocks of 16
    n = b.shape[0]
    scales = b[:, 0:16]
    dl = h[:, 0:1] * (scales & 0x0F).float()
    ml = h[:, 1:2] * (scales >> 4).float()
    q = _bits(b[:, 16:80].unflatten(1, (2, 32)), 2, 3).reshape(n, 16, 16)
    o = out.view(n, 16, 16)
    o.copy_(q)
    o.mul_(dl.unsqueeze(-1))
    o.sub_(ml.unsqueeze(-1))


def _q3_k(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # (d * (sc - 32)) * q, q = 2 low bits - 4 unless the hmask bit is set
    n = b.shape[0]
    s = b[:, 96:108]
    low = _nibbles(s[:, 0:8]).flatten(1)  # sub-blocks 0-7: low nibbles, 8-15: high
    high = _bits(s[:, 8:12], 2, 3).flatten(1)  # bits 4-5 of sub-block 4k+j: byte j >> 2k
    dl = h * _minus(low | (high << 4), 32).float()
    ql = _bits(b[:, 32:96].unflatten(1, (2, 32)), 2, 3).reshape(n, 16, 16)
    qh = _bits(b[:, 0:32], 1, 1).reshape(n, 16, 16)
    o = out.view(n, 16, 16)
    o.copy_(_minus(ql | (qh << 2), 4))  # == ql - 4 * (1 - qh)
    o.mul_(dl.unsqueeze(-1))


def _q4_k(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # (d * sc) * q - (dmin * m), with 8 sub-blocks of 32
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d = h[:, 0:1] * sc
    dm = h[:, 1:2] * mn
    o = out.view(n, 8, 32)
    o.copy_(_nibbles(b[:, 16:144].unflatten(1, (4, 32))).reshape(n, 8, 32))
    o.mul_(d.unsqueeze(-1))
    o.sub_(dm.unsqueeze(-1))


def _q5_k(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # (d * sc) * q - (dmin * m), q = nibble | bit << 4
    n = b.shape[0]
    sc, mn = _k_scale_min(b[:, 4:16])
    d = h[:, 0:1] * sc
    dm = h[:, 1:2] * mn
    ql = _nibbles(b[:, 48:176].unflatten(1, (4, 32))).reshape(n, 8, 32)
    qh = _bits(b[:, 16:48], 1, 1)
    o = out.view(n, 8, 32)
    o.copy_(ql | (qh << 4))
    o.mul_(d.unsqueeze(-1))
    o.sub_(dm.unsqueeze(-1))


def _q6_k(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # (d * sc) * (q - 32), sc signed int8, 16 sub-blocks of 16
    n = b.shape[0]
    d = h * b[:, 192:208].view(torch.int8).float()
    ql = _nibbles(b[:, 0:128].unflatten(1, (2, 64))).reshape(n, 8, 32)
    qh = _bits(b[:, 128:192].unflatten(1, (2, 32)), 2, 3).reshape(n, 8, 32)
    o = out.view(n, 16, 16)
    o.copy_(_minus(ql | (qh << 4), 32).view(n, 16, 16))
    o.mul_(d.unsqueeze(-1))


def _q8_k(b: torch.Tensor, out: torch.Tensor, h: torch.Tensor) -> None:
    # d * q with a float32 d (ggml's dequantize_row_q8_K; gguf-py has no Q8_K)
    out.copy_(b[:, 4:260].view(torch.int8))
    out.mul_(h)


# qtype -> (kernel, byte offset of the block's scale fields, how many f16 fields).
# Scale fields are decoded for the whole tensor up front (1/16 of the output at most),
# which keeps the per-chunk work to a handful of large ops.
_BLOCK_KERNELS: dict[str, tuple[Kernel, int, int]] = {
    "Q4_0": (_q4_0, 0, 1),  # d
    "Q4_1": (_q4_1, 0, 2),  # d, m
    "Q5_0": (_q5_0, 0, 1),  # d
    "Q5_1": (_q5_1, 0, 2),  # d, m
    "Q8_0": (_q8_0, 0, 1),  # d
    "Q2_K": (_q2_k, 80, 2),  # d, dmin
    "Q3_K": (_q3_k, 108, 1),  # d
    "Q4_K": (_q4_k, 0, 2),  # d, dmin
    "Q5_K": (_q5_k, 0, 2),  # d, dmin
    "Q6_K": (_q6_k, 208, 1),  # d
    "Q8_K": (_q8_k, 0, 0),  # d is float32, not f16
}


# ------------------------------------------------------------------------ driver


def _as_dtype(flat: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Reinterpret flat bytes as `dtype`; copies only if the start is misaligned."""
    try:
        return flat.view(dtype)
    except RuntimeError:
        return flat.clone().view(dtype)


def dequantize(raw: torch.Tensor, qtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode the bytes of a tensor of type `qtype` (any registered quant type) into float32 of `shape`.

    `raw` is read as flat little-endian bytes and never written to; the result is a new
    tensor on raw's device (also for F32, so callers may modify it freely).
    """
    types = registries().quant_types
    spec = types.find(qtype)
    if spec is None:
        raise ValueError(f"unsupported GGML type {qtype!r}; known: {', '.join(types.names())}")
    block_size, type_size = spec.block_size, spec.type_size
    shape = tuple(int(s) for s in shape)
    cols = shape[-1] if shape else 1
    if cols % block_size != 0:
        raise ValueError(
            f"{qtype}: last dimension {cols} of shape {shape} is not a multiple of "
            f"the block size {block_size}"
        )
    n_blocks = math.prod(shape) // block_size
    flat = raw.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    if flat.numel() != n_blocks * type_size:
        raise ValueError(
            f"{qtype} tensor of shape {shape} needs {n_blocks * type_size} bytes, "
            f"got {flat.numel()}"
        )
    out = spec.dequantizer()(flat.view(n_blocks, type_size), spec)
    if out.dtype != torch.float32 or out.numel() != n_blocks * block_size:  # a plugin's function broke the contract
        raise ValueError(f"{qtype}: its dequantize function returned {out.dtype} {tuple(out.shape)}, "
                         f"expected float32 ({n_blocks}, {block_size})")
    return out.reshape(shape)


def decode_blocks(blocks: torch.Tensor, spec: QuantTypeSpec) -> torch.Tensor:
    """The built-in types' dequantize function: (n, type_size) uint8 blocks -> (n, block_size) float32."""
    n_blocks = blocks.shape[0]
    if spec.name == "F32":
        return _as_dtype(blocks.reshape(-1), torch.float32).clone().view(n_blocks, 1)
    if spec.name == "F16":
        return _widen_f16(_as_dtype(blocks.reshape(-1), torch.float16)).view(n_blocks, 1)
    if spec.name == "BF16":
        # bf16 -> f32 is exactly "bits << 16" (NaN payloads kept), like gguf-py.
        return _as_dtype(blocks.reshape(-1), torch.bfloat16).float().view(n_blocks, 1)

    kernel, offset, count = _BLOCK_KERNELS[spec.name]
    if count:
        scales = _f16_fields(blocks, offset, count)
    else:  # Q8_K; a copy of the bytes, so bit-exact and aligned
        scales = blocks[:, 0:4].contiguous().view(torch.float32)
    out = torch.empty((n_blocks, spec.block_size), dtype=torch.float32, device=blocks.device)
    step = max(1, _CHUNK_ELEMENTS // spec.block_size)
    for start in range(0, n_blocks, step):
        chunk = slice(start, start + step)
        kernel(blocks[chunk], out[chunk], scales[chunk])
    return out
