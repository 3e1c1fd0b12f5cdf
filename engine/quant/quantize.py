"""Vectorized torch quantization of float tensors into GGUF blocks (in-situ quantization).

``quantize(x, qtype)`` turns a float tensor whose last dimension is a multiple of the type's block
into the flat uint8 bytes of a GGUF tensor of that type, the very layout ``dequantize`` and the C++
kernels read.

The 32-element types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) produce the same bytes, bit for bit, as
``gguf.quants.quantize`` (gguf-py 0.19): every float operation is the same IEEE float32 operation
on the same operands in the same order:

* scales come from the block's extreme (Q4_0/Q5_0: the first element of largest magnitude, with its
  sign; Q4_1/Q5_1: max and min; Q8_0: the largest magnitude), one float32 division (``/ -8``,
  ``/ 15``, ``/ 127`` ...), an inverse ``1 / d`` (0 where d is 0), and a float32 -> float16
  round-to-nearest-even for the stored scale;
* codes are ``trunc(x * id + 8.5)`` (Q4_0; 16.5 for Q5_0), ``trunc((x - min) * id + 0.5)``
  (Q4_1/Q5_1), or Q8_0's round-half-away-from-zero ``sign(v) * (floor|v| + floor(2 (|v| - floor|v|)))``
  — each product, sum and rounding a separate torch op, so no FMA contraction or reassociation;
* the float -> integer cast follows numpy on x86 (the value's low byte when it fits int32, 0 for
  NaN/inf/out of range), which only matters for blocks whose scale underflows (|x| < ~1e-38).

The K-types are in quantize_k.py; ``quantize`` finds any type's block quantizer, a plugin's too,
in the quant-type table. Work is chunked so temporaries stay small whatever the tensor.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterator

import torch

from mistralrs.engine.quant.block_packing import f16_bytes, high_bits_words, pack_nibbles
from mistralrs.registry import registries

__all__ = ["quantize", "single_threaded"]

# Input elements per chunk: big enough that per-op overhead is noise, small enough that the
# temporaries stay cache-friendly. The K-quant searches hold ~20 trials of every element at once.
_CHUNK_ELEMENTS = 1 << 16
_K_CHUNK_ELEMENTS = 1 << 14


# ---------------------------------------------------------------------------- helpers


def numpy_cast_u8(v: torch.Tensor) -> torch.Tensor:
    """float32 -> uint8 as numpy's ``astype(np.uint8)`` does on x86: through a truncating int32
    conversion (NaN, inf and out-of-range give 0x80000000), keeping the low byte."""
    t = torch.trunc(v)
    ok = torch.isfinite(t) & (t.abs() < 2.0**31)
    return (torch.where(ok, t, 0.0).to(torch.int32) & 0xFF).to(torch.uint8)


def numpy_roundf(v: torch.Tensor) -> torch.Tensor:
    """gguf-py's np_roundf: round half away from zero, as sign(v) * (floor|v| + floor(2 frac))."""
    a = v.abs()
    fl = torch.floor(a)
    b = fl + torch.floor(2 * (a - fl))
    return torch.sign(v) * b


def _inverse(d: torch.Tensor) -> torch.Tensor:
    """1 / d, and 0 where d is 0 (gguf-py's ``np.where(d == 0, 0, 1 / d)``)."""
    return torch.where(d == 0, 0.0, 1.0 / d)


# ------------------------------------------------------------------- block kernels
# Each takes (n, 32) float32 blocks and returns (n, type_size) uint8 blocks; the quant-type table
# (engine/quant/plugin.py) names them as its types' quantizers.


def _signed_extreme(x: torch.Tensor) -> torch.Tensor:
    """The first element of largest magnitude in each block, sign kept: (n, 1)."""
    return x.gather(-1, x.abs().argmax(dim=-1, keepdim=True))


def quantize_q4_0_blocks(x: torch.Tensor) -> torch.Tensor:
    d = _signed_extreme(x) / -8
    q = numpy_cast_u8(x * _inverse(d) + 8.5).clamp_(max=15)
    return torch.cat([f16_bytes(d), pack_nibbles(q.view(-1, 2, 16))], dim=1)


def quantize_q4_1_blocks(x: torch.Tensor) -> torch.Tensor:
    mx = x.amax(dim=-1, keepdim=True)
    mn = x.amin(dim=-1, keepdim=True)
    d = (mx - mn) / 15
    q = numpy_cast_u8((x - mn) * _inverse(d) + 0.5).clamp_(max=15)
    return torch.cat([f16_bytes(d), f16_bytes(mn), pack_nibbles(q.view(-1, 2, 16))], dim=1)


def quantize_q5_0_blocks(x: torch.Tensor) -> torch.Tensor:
    d = _signed_extreme(x) / -16
    q = numpy_cast_u8(x * _inverse(d) + 16.5).clamp_(max=31)
    qs = pack_nibbles((q & 0x0F).view(-1, 2, 16))
    return torch.cat([f16_bytes(d), high_bits_words(q), qs], dim=1)


def quantize_q5_1_blocks(x: torch.Tensor) -> torch.Tensor:
    mx = x.amax(dim=-1, keepdim=True)
    mn = x.amin(dim=-1, keepdim=True)
    d = (mx - mn) / 31
    q = numpy_cast_u8((x - mn) * _inverse(d) + 0.5).clamp_(max=31)
    qs = pack_nibbles((q & 0x0F).view(-1, 2, 16))
    return torch.cat([f16_bytes(d), f16_bytes(mn), high_bits_words(q), qs], dim=1)


def quantize_q8_0_blocks(x: torch.Tensor) -> torch.Tensor:
    d = x.abs().amax(dim=-1, keepdim=True) / 127
    q = numpy_cast_u8(numpy_roundf(x * _inverse(d)))  # int8 codes as their two's-complement bytes
    return torch.cat([f16_bytes(d), q], dim=1)


# ------------------------------------------------------------------------ driver


def quantize(x: torch.Tensor, qtype: str) -> torch.Tensor:
    """Quantize a float tensor to the flat uint8 bytes of a GGUF tensor of type ``qtype``.

    The last dimension must be a multiple of the type's block size. Works on x's device; x is
    read in float32 (F16/BF16 widen exactly) and never modified.
    """
    types = registries().quant_types
    spec = types.find(qtype)
    kernel = None if spec is None else spec.quantizer()
    if kernel is None:
        supported = ", ".join(e.spec.name for e in types if e.spec.quantize is not None)
        raise ValueError(f"cannot quantize to {qtype!r}; supported: {supported}")
    block_size, type_size = spec.block_size, spec.type_size
    cols = x.shape[-1] if x.dim() else 1
    if cols % block_size != 0:
        raise ValueError(f"{qtype}: last dimension {cols} of shape {tuple(x.shape)} is not a multiple "
                         f"of the block size {block_size}")
    flat = x.reshape(-1)
    n_blocks = flat.numel() // block_size
    out = torch.empty((n_blocks, type_size), dtype=torch.uint8, device=x.device)
    chunk = _K_CHUNK_ELEMENTS if qtype.endswith("_K") else _CHUNK_ELEMENTS
    if x.device.type != "cpu":  # accelerators: fewer, larger launches
        chunk *= 16
    step = max(1, chunk // block_size)

    with single_threaded(x.device):
        for start in range(0, n_blocks, step):
            stop = min(n_blocks, start + step)
            blocks = flat[start * block_size : stop * block_size].view(stop - start, block_size)
            out[start:stop] = kernel(blocks.to(torch.float32))
    return out.view(-1)


_threads_lock = threading.RLock()


@contextlib.contextmanager
def single_threaded(device: torch.device) -> Iterator[None]:
    """CPU quantization runs its ops on one thread. A chunk is a few dozen ops on ~1 MB tensors,
    and intra-op parallelism puts a thread barrier after each: on cores shared with other work
    that made quantizing 10-40x slower than one thread (measured on a busy 2-core machine, where
    one parallel region cost ~20 ms), and spreading chunks over Python threads instead still lost
    2-4x to GIL hand-offs there."""
    if device.type != "cpu" or torch.get_num_threads() == 1:
        yield
        return
    with _threads_lock:  # torch's intra-op thread count is process-wide
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
