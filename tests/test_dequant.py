"""Bit-exactness of engine.quant.dequant against gguf-py's numpy dequantizer.

Values are compared as int32 bit patterns; two NaNs count as equal whatever their
payloads, because which NaN survives `NaN + NaN` is not even consistent inside numpy
(its SIMD and scalar loops pick different operands).
"""

from __future__ import annotations

import re
import zlib

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize

from mistralrs.engine.quant import dequant
from mistralrs.engine.quant.dequant import dequantize
from mistralrs.registry import PluginHost

BUILTIN_TYPES = {e.spec.name: e.spec for e in PluginHost().registries.quant_types if e.plugin == "quant"}
BLOCK_GEOMETRY = {name: (spec.block_size, spec.type_size) for name, spec in BUILTIN_TYPES.items()}
ALL_TYPES = list(BLOCK_GEOMETRY)
QUANT_TYPES = [t for t in ALL_TYPES if BLOCK_GEOMETRY[t][0] > 1]

# Byte offsets of the f16 scale fields (d, and dmin / m where present) in one block.
F16_SCALE_OFFSETS = {
    "Q4_0": (0,),
    "Q4_1": (0, 2),
    "Q5_0": (0,),
    "Q5_1": (0, 2),
    "Q8_0": (0,),
    "Q2_K": (80, 82),
    "Q3_K": (108,),
    "Q4_K": (0, 2),
    "Q5_K": (0, 2),
    "Q6_K": (208,),
}

F16_SPECIALS = [
    0x7BFF,  # 65504, largest finite
    0xFBFF,  # -65504
    0x0001,  # smallest subnormal, 2**-24
    0x8001,
    0x03FF,  # largest subnormal
    0x0400,  # smallest normal
    0x0000,  # +0
    0x8000,  # -0
    0x3C00,  # 1.0
    0x7C00,  # +inf
    0xFC00,  # -inf
    0x7E00,  # quiet NaN
    0x7C01,  # signalling NaN
    0xFE01,  # negative NaN with payload
]

F32_SPECIALS = [0x7F7FFFFF, 0xFF7FFFFF, 0x00000001, 0x00800000, 0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001]


def _rng(*key: object) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _q8_k_reference(blocks: np.ndarray) -> np.ndarray:
    """ggml's dequantize_row_q8_K (gguf-py has no Q8_K): float32 d times int8 q."""
    b = blocks.reshape(-1, BLOCK_GEOMETRY["Q8_K"][1])
    d = b[:, 0:4].copy().view(np.float32)
    q = b[:, 4:260].view(np.int8).astype(np.float32)
    return q * d


def _reference(data: np.ndarray, qtype: str, shape: tuple[int, ...]) -> np.ndarray:
    """gguf-py's result for bytes `data` laid out as rows of `shape`."""
    block, size = BLOCK_GEOMETRY[qtype]
    rows = data.reshape(*shape[:-1], shape[-1] // block * size)
    with np.errstate(all="ignore"):
        try:
            out = gguf_dequantize(rows, GGMLQuantizationType[qtype])
        except NotImplementedError:
            assert qtype == "Q8_K"
            out = _q8_k_reference(rows)
    return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)


def _assert_bits_equal(got: torch.Tensor, want: np.ndarray) -> None:
    assert got.dtype == torch.float32
    got_np = got.cpu().numpy()
    assert got_np.shape == want.shape
    differ = got_np.view(np.int32) != want.view(np.int32)
    differ &= ~(np.isnan(got_np) & np.isnan(want))
    if differ.any():
        i = tuple(int(x[0]) for x in np.nonzero(differ))
        g, w = got_np[i].view(np.uint32), want[i].view(np.uint32)
        raise AssertionError(f"{int(differ.sum())} elements differ; first at {i}: got {g:#010x}, want {w:#010x}")


def _check(data: np.ndarray, qtype: str, shape: tuple[int, ...]) -> None:
    raw = torch.from_numpy(data.reshape(-1).copy())
    before = raw.clone()
    _assert_bits_equal(dequantize(raw, qtype, shape), _reference(data, qtype, shape))
    assert torch.equal(raw, before), "input bytes were modified"


def _random_bytes(qtype: str, shape: tuple[int, ...], *key: object) -> np.ndarray:
    block, size = BLOCK_GEOMETRY[qtype]
    n = int(np.prod(shape)) // block * size
    return _rng(qtype, shape, *key).integers(0, 256, size=n, dtype=np.uint8)


def _shapes(qtype: str) -> list[tuple[int, ...]]:
    block = BLOCK_GEOMETRY[qtype][0]
    cols = block * 3 if block > 1 else 96
    return [(1, block if block > 1 else 1), (1, cols), (67, cols), (2, 3, cols)]


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_random_bytes(qtype: str) -> None:
    for shape in _shapes(qtype):
        _check(_random_bytes(qtype, shape), qtype, shape)


@pytest.mark.parametrize("qtype", QUANT_TYPES)
def test_random_bytes_across_chunks(qtype: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Tiny chunks: many chunk boundaries, a ragged last chunk, and one-block chunks.
    shape = (13, BLOCK_GEOMETRY[qtype][0] * 5)
    data = _random_bytes(qtype, shape, "chunks")
    for chunk in (BLOCK_GEOMETRY[qtype][0] * 7, 1):
        monkeypatch.setattr(dequant, "_CHUNK_ELEMENTS", chunk)
        _check(data, qtype, shape)


@pytest.mark.parametrize("qtype", list(F16_SCALE_OFFSETS))
def test_extreme_f16_scales(qtype: str) -> None:
    block, size = BLOCK_GEOMETRY[qtype]
    offsets = F16_SCALE_OFFSETS[qtype]
    # Every combination of special values over the block's scale fields, one per block.
    combos = np.array(np.meshgrid(*[F16_SPECIALS] * len(offsets), indexing="ij"), dtype=np.uint16)
    combos = combos.reshape(len(offsets), -1).T
    blocks = _rng(qtype, "extreme").integers(0, 256, size=(len(combos), size), dtype=np.uint8)
    for j, off in enumerate(offsets):
        blocks[:, off : off + 2] = combos[:, j : j + 1].copy().view(np.uint8)
    _check(blocks, qtype, (len(combos), block))
    # Same scales over all-ones quant bits (largest codes and sub-scales).
    blocks[:, :] = 0xFF
    for j, off in enumerate(offsets):
        blocks[:, off : off + 2] = combos[:, j : j + 1].copy().view(np.uint8)
    _check(blocks, qtype, (len(combos), block))


def test_extreme_q8_k_scales() -> None:
    block, size = BLOCK_GEOMETRY["Q8_K"]
    blocks = _rng("Q8_K", "extreme").integers(0, 256, size=(len(F32_SPECIALS), size), dtype=np.uint8)
    blocks[:, 0:4] = np.array(F32_SPECIALS, dtype=np.uint32).reshape(-1, 1).view(np.uint8)
    _check(blocks, "Q8_K", (len(F32_SPECIALS), block))


@pytest.mark.parametrize("qtype", QUANT_TYPES)
@pytest.mark.parametrize("fill", [0x00, 0xFF])
def test_constant_blocks(qtype: str, fill: int) -> None:
    shape = (3, BLOCK_GEOMETRY[qtype][0] * 2)
    data = np.full(BLOCK_GEOMETRY[qtype][1] * 6, fill, dtype=np.uint8)
    _check(data, qtype, shape)
    if fill == 0:
        assert not dequantize(torch.from_numpy(data), qtype, shape).any()


@pytest.mark.parametrize("qtype", ["F16", "BF16"])
@pytest.mark.parametrize("count", [65536, 65533])
def test_every_16_bit_pattern(qtype: str, count: int) -> None:
    # Odd count too: torch converts the tail of a tensor on a different (scalar) path.
    data = np.arange(count, dtype=np.uint16).view(np.uint8)
    _check(data, qtype, (count,))
    if count % 256 == 0:
        _check(data, qtype, (count // 256, 256))


def test_f32_returns_a_copy() -> None:
    raw = torch.from_numpy(_random_bytes("F32", (4, 8)))
    out = dequantize(raw, "F32", (4, 8))
    out.fill_(1.0)
    assert not torch.equal(raw.view(torch.float32).view(4, 8), out)


@pytest.mark.parametrize("qtype", ["F16", "F32", "Q4_K", "Q8_0", "Q5_0"])
def test_misaligned_and_shaped_raw(qtype: str) -> None:
    shape = (5, BLOCK_GEOMETRY[qtype][0] * 2 if BLOCK_GEOMETRY[qtype][0] > 1 else 8)
    data = _random_bytes(qtype, shape, "misaligned")
    want = _reference(data, qtype, shape)
    backing = torch.zeros(data.size + 1, dtype=torch.uint8)
    backing[1:] = torch.from_numpy(data)
    _assert_bits_equal(dequantize(backing[1:], qtype, shape), want)  # odd storage offset
    _assert_bits_equal(dequantize(torch.from_numpy(data).view(shape[0], -1), qtype, shape), want)


@pytest.mark.parametrize("qtype", ALL_TYPES)
def test_per_type_functions_and_geometry(qtype: str) -> None:
    assert BLOCK_GEOMETRY[qtype] == GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    spec = BUILTIN_TYPES[qtype]
    shape = (2, BLOCK_GEOMETRY[qtype][0] if BLOCK_GEOMETRY[qtype][0] > 1 else 4)
    raw = torch.from_numpy(_random_bytes(qtype, shape, "fn"))
    got = spec.dequantizer()(raw.view(-1, spec.type_size), spec).view(shape)
    assert torch.equal(got.view(torch.int32), dequantize(raw, qtype, shape).view(torch.int32))


def test_empty_tensor() -> None:
    out = dequantize(torch.empty(0, dtype=torch.uint8), "Q4_K", (0, 256))
    assert out.shape == (0, 256) and out.dtype == torch.float32


@pytest.mark.parametrize("name", ["Q9_9", "q4_k", "IQ2_XXS", ""])
def test_unknown_type(name: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(name))):
        dequantize(torch.zeros(1024, dtype=torch.uint8), name, (1, 32))


def test_wrong_byte_count() -> None:
    raw = torch.zeros(2 * 144 + 1, dtype=torch.uint8)
    with pytest.raises(ValueError, match=r"288 bytes, got 289"):
        dequantize(raw, "Q4_K", (1, 512))
    with pytest.raises(ValueError, match=r"8 bytes, got 4"):
        dequantize(torch.zeros(4, dtype=torch.uint8), "F16", (2, 2))


@pytest.mark.parametrize("qtype,cols", [("Q4_0", 48), ("Q8_0", 1), ("Q6_K", 128), ("Q2_K", 320)])
def test_cols_not_multiple_of_block(qtype: str, cols: int) -> None:
    with pytest.raises(ValueError, match=r"not a multiple of the block size"):
        dequantize(torch.zeros(4096, dtype=torch.uint8), qtype, (2, cols))
