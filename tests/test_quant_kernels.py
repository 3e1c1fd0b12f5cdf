"""Packed weight forms against dequantize-then-matmul (gguf-exact dequantization is the reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.quant.affine import AFFINE_TYPES, affine_groups
from mistralrs.engine.quant.dequant import dequantize
from mistralrs.engine.quant.int4_planes import Int4PlanesWeight, row_decode_supported
from mistralrs.engine.kernels import native_ops
from mistralrs.engine.quant.weights import NATIVE_MAX_ROWS, BlockWeight, DenseWeight, RepackedWeight, packed_weight
from mistralrs.registry import PluginHost

SPECS = [e.spec for e in PluginHost().registries.quant_types]
BLOCK_GEOMETRY = {s.name: (s.block_size, s.type_size) for s in SPECS}
NATIVE_TYPES = {s.name: s.ggml_type for s in SPECS if s.native}  # name -> the GGML id the kernels take

ALL_QUANT = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
SCALE_OFFSETS = {"Q2_K": (80, 2), "Q3_K": (108, 1), "Q6_K": (208, 1)}  # f16 fields at the block end


def random_blocks(qtype: str, rows: int, cols: int, seed: int = 0) -> torch.Tensor:
    """Random codes with realistic f16 scales (random bytes would give absurd ones)."""
    import gguf

    rng = np.random.default_rng(seed)
    try:
        data = rng.standard_normal((rows, cols)).astype(np.float32)
        raw = gguf.quants.quantize(data, gguf.GGMLQuantizationType[qtype])
        return torch.from_numpy(np.ascontiguousarray(raw).view(np.uint8).reshape(-1).copy())
    except NotImplementedError:
        block, size = BLOCK_GEOMETRY[qtype]
        raw = rng.integers(0, 256, (rows * cols // block, size), dtype=np.uint8)
        offset, count = SCALE_OFFSETS.get(qtype, (0, 2))
        scales = rng.uniform(0.002, 0.02, (raw.shape[0], count)).astype(np.float16)
        raw[:, offset : offset + 2 * count] = scales.view(np.uint8)
        return torch.from_numpy(raw.reshape(-1))


@pytest.mark.parametrize("qtype", sorted(AFFINE_TYPES))
def test_affine_form_is_exact(qtype):
    raw = random_blocks(qtype, 8, 512)
    g = affine_groups(raw, qtype, (8, 512))
    w = g.codes.float() * g.scale.repeat_interleave(32, 1) + g.zero.repeat_interleave(32, 1)
    torch.testing.assert_close(w, dequantize(raw, qtype, (8, 512)), atol=0, rtol=0)


@pytest.mark.parametrize("qtype", sorted(AFFINE_TYPES))
@pytest.mark.parametrize("batch", [1, 7, 128])
def test_int4_planes_match_dequantized_matmul(qtype, batch):
    rows, cols = 96, 512
    raw = random_blocks(qtype, rows, cols, seed=batch)
    weight = Int4PlanesWeight(affine_groups(raw, qtype, (rows, cols)))
    ref_w = dequantize(raw, qtype, (rows, cols))
    x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(1))
    got = weight.matmul(x)
    expected = x @ ref_w.t()
    # bfloat16 activations and scales: ~3 significant digits
    scale = expected.abs().max()
    assert (got - expected).abs().max() <= 0.01 * scale
    assert got.dtype == x.dtype and got.shape == (batch, rows)


@pytest.mark.parametrize("qtype", ["Q4_1", "Q8_0", "Q5_0"])
def test_int4_planes_rows_decode_the_weight(qtype):
    if not row_decode_supported():
        pytest.skip("this torch build packs int4 differently; embeddings keep a dense copy")
    raw = random_blocks(qtype, 64, 256)
    weight = Int4PlanesWeight(affine_groups(raw, qtype, (64, 256)))
    ids = torch.tensor([0, 17, 31, 32, 63])
    ref = dequantize(raw, qtype, (64, 256))[ids]
    assert (weight.rows(ids) - ref).abs().max() <= 0.01 * ref.abs().max()


@pytest.mark.parametrize("qtype", ALL_QUANT)
def test_every_type_has_a_packed_form_that_multiplies_correctly(qtype):
    rows, cols = 64, 512
    raw = RawTensor("w", qtype, (rows, cols), random_blocks(qtype, rows, cols))
    weight = packed_weight(raw, torch.device("cpu"), torch.float32)
    x = torch.randn(3, cols)
    expected = x @ dequantize(raw.data, qtype, (rows, cols)).t()
    assert (weight.matmul(x) - expected).abs().max() <= 0.01 * expected.abs().max()
    if qtype in NATIVE_TYPES and native_ops() is not None:
        assert weight.kind == "gguf-repacked"
    else:
        assert weight.kind == ("int4-planes" if qtype in AFFINE_TYPES else "dense")


def test_native_kernels_build_on_this_machine():
    # CI and dev machines have a compiler; elsewhere the torch fallbacks above still hold.
    assert native_ops() is not None


@pytest.mark.parametrize("qtype", sorted(NATIVE_TYPES))
@pytest.mark.parametrize("batch", [1, 2, 7, NATIVE_MAX_ROWS, 128])
def test_native_kernel_matches_dequantized_matmul(qtype, batch):
    if native_ops() is None:
        pytest.skip("no C++ toolchain here")
    rows, cols = 64, 512
    raw = RawTensor("w", qtype, (rows, cols), random_blocks(qtype, rows, cols, seed=batch))
    weight = RepackedWeight(raw, native_ops())
    x = torch.randn(batch, cols, generator=torch.Generator().manual_seed(batch))
    expected = x @ dequantize(raw.data, qtype, (rows, cols)).t()
    got = weight.matmul(x)
    # exact weights; decode-sized batches quantize x per 32-group to two 8-bit levels (2^-16 of the max)
    tolerance = 1e-4 if batch <= NATIVE_MAX_ROWS else 1e-5
    assert (got - expected).abs().max() <= tolerance * expected.abs().max()
    ids = torch.tensor([0, 9, 63])
    reference = dequantize(raw.data, qtype, (rows, cols))
    torch.testing.assert_close(weight.rows(ids), reference[ids], atol=0, rtol=0)
    torch.testing.assert_close(weight.dense(), reference, atol=0, rtol=1e-6)
    assert weight.nbytes <= 1.04 * raw.data.numel()  # K-types keep sub-scales a byte apiece


@pytest.mark.parametrize("qtype", sorted(NATIVE_TYPES))
def test_repacked_rows_that_fill_no_whole_block(qtype):
    """Row counts off the 16-row interleave: padding rows never leak into the results."""
    if native_ops() is None:
        pytest.skip("no C++ toolchain here")
    cols = 256
    for rows in (1, 15, 17, 37):
        raw = RawTensor("w", qtype, (rows, cols), random_blocks(qtype, rows, cols, seed=rows))
        weight = RepackedWeight(raw, native_ops())
        reference = dequantize(raw.data, qtype, (rows, cols))
        torch.testing.assert_close(weight.dense(), reference, atol=0, rtol=1e-6)
        torch.testing.assert_close(weight.rows(torch.tensor([rows - 1, 0])), reference[[rows - 1, 0]], atol=0, rtol=0)
        x = torch.randn(5, cols, generator=torch.Generator().manual_seed(rows))
        expected = x @ reference.t()
        assert weight.matmul(x).shape == (5, rows)
        assert (weight.matmul(x) - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_large_mapped_weight_repacks_in_parts_releasing_each(qtype, monkeypatch):
    """A mapped tensor larger than REPACK_PART_BYTES is repacked run by run straight into place (the
    same bytes as in one go), each run's file bytes released once copied, all of them in the end."""
    import mistralrs.engine.quant.weights as weights

    if native_ops() is None:
        pytest.skip("no C++ toolchain here")
    rows, cols = 101, 256  # not a multiple of 16 rows: the last run is a partial block
    blocks = random_blocks(qtype, rows, cols, seed=3)
    released: list[tuple[int, int]] = []
    monkeypatch.setattr(weights, "REPACK_PART_BYTES", blocks.numel() // 5)
    parts = RepackedWeight(RawTensor("w", qtype, (rows, cols), blocks, release=lambda a, b: released.append((a, b))),
                           native_ops())
    whole = RepackedWeight(RawTensor("w", qtype, (rows, cols), blocks), native_ops())
    assert torch.equal(parts.packed, whole.packed)
    assert len(released) > 2 and released[0][0] == 0 and released[-1][1] == blocks.numel()
    assert all(a[1] == b[0] for a, b in zip(released, released[1:]))  # contiguous runs, each released once


@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K", "Q6_K"])
def test_extreme_blocks_multiply_exactly_enough(qtype):
    """All-zero weights, the largest codes, and activations with one huge entry per group."""
    if native_ops() is None:
        pytest.skip("no C++ toolchain here")
    rows, cols = 32, 512
    raw = random_blocks(qtype, rows, cols)
    block, size = BLOCK_GEOMETRY[qtype]
    blocks = raw.view(-1, size)
    blocks[::3] = 0  # zero scales and codes
    if qtype == "Q8_0":
        blocks[1::3, 2:] = torch.tensor([-128, 127], dtype=torch.int8).repeat(16).view(torch.uint8)
    weight = RepackedWeight(RawTensor("w", qtype, (rows, cols), raw), native_ops())
    reference = dequantize(raw, qtype, (rows, cols))
    x = torch.randn(3, cols, generator=torch.Generator().manual_seed(0))
    x[:, ::32] = 1e4  # one outlier per group sets the group's scale
    x[1] = 0.0
    expected = x.double() @ reference.double().t()
    got = weight.matmul(x).double()
    assert (got[1] == 0).all()
    assert (got - expected).abs().max() <= 1e-4 * expected.abs().max()


@pytest.mark.slow
def test_avx2_build_of_the_kernels_agrees(tmp_path):
    """Machines without AVX-512 take another code path (AVX2 integer dot products, the sign trick for
    Q8_0): build it for a Haswell CPU and check every type against gguf's dequantization."""
    import os
    import subprocess
    import sys

    script = tmp_path / "check.py"
    script.write_text(
        "import sys, torch\n"
        f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from test_quant_kernels import NATIVE_TYPES, random_blocks\n"
        "from mistralrs.engine.kernels import native_ops\n"
        "from mistralrs.engine.quant.dequant import dequantize\n"
        "ops = native_ops()\n"
        "assert ops is not None\n"
        "for q, t in NATIVE_TYPES.items():\n"
        "    raw = random_blocks(q, 40, 512)\n"
        "    ref = dequantize(raw, q, (40, 512))\n"
        "    p = ops.quant_repack(raw, t, 40, 512)\n"
        "    assert torch.equal(ops.quant_dequantize(p, t, 40, 512), ref), q\n"
        "    for m in (1, 3, 6):\n"
        "        x = torch.randn(m, 512)\n"
        "        e = x @ ref.t()\n"
        "        err = ((ops.quant_matmul(x, p, t, 40) - e).abs().max() / e.abs().max()).item()\n"
        "        assert err < 1e-4, (q, m, err)\n"
        "print('ok')\n")
    env = {**os.environ, "MISTRALRS_KERNEL_MARCH": "haswell"}
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0"])
def test_block_weight_dequantizes_per_use(qtype):
    rows, cols = 32, 512
    raw = RawTensor("w", qtype, (rows, cols), random_blocks(qtype, rows, cols))
    weight = BlockWeight(raw, torch.device("cpu"), torch.float32)
    ref = dequantize(raw.data, qtype, (rows, cols))
    x = torch.randn(2, cols)
    torch.testing.assert_close(weight.matmul(x), x @ ref.t())
    torch.testing.assert_close(weight.rows(torch.tensor([3, 30])), ref[[3, 30]])
    assert weight.nbytes == raw.data.numel()


def test_packed_forms_are_compact():
    rows, cols = 256, 1024
    for qtype in ("Q4_0", "Q4_1", "Q4_K", "Q8_0"):
        raw = random_blocks(qtype, rows, cols)
        weight = Int4PlanesWeight(affine_groups(raw, qtype, (rows, cols)))
        assert weight.nbytes <= 1.25 * raw.numel(), qtype
    dense = DenseWeight(torch.zeros(rows, cols))
    assert dense.nbytes == rows * cols * 4


def test_many_weights_in_one_call_equal_separate_calls():
    if native_ops() is None:
        pytest.skip("no C++ toolchain here")
    from mistralrs.engine.quant.weights import native_group

    cols = 512
    parts = [("Q5_0", 64), ("Q8_0", 32), ("Q4_K", 96), ("Q6_K", 32)]  # mixed lane orders and block sizes
    weights = [RepackedWeight(RawTensor("w", q, (n, cols), random_blocks(q, n, cols, seed=i)), native_ops())
               for i, (q, n) in enumerate(parts)]
    for batch in (1, 3):
        x = torch.randn(batch, cols)
        fused = native_group(weights)(x)
        for got, w in zip(fused, weights):
            torch.testing.assert_close(got, w.matmul(x), atol=1e-5, rtol=1e-5)
    assert native_group(weights)(torch.randn(NATIVE_MAX_ROWS + 1, cols)) is None
