"""The C++ helper ops against their plain-torch definitions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mistralrs.engine.kernels import native_ops
from mistralrs.engine.layers.rope import apply_rope
from attention_reference import reference_attention, soft_capped_reference

ops = native_ops()
pytestmark = pytest.mark.skipif(ops is None, reason="no C++ toolchain here")


def test_rms_norm_and_fused_residual_add():
    x, r, w = torch.randn(5, 96), torch.randn(5, 96), torch.randn(96)
    expected = F.rms_norm(x, (96,), w, 1e-5)
    torch.testing.assert_close(ops.rms_norm(x, w, 1e-5), expected)
    residual = r.clone()
    out = ops.add_rms_norm_(residual, x, w, 1e-6)
    torch.testing.assert_close(residual, r + x)
    torch.testing.assert_close(out, F.rms_norm(r + x, (96,), w, 1e-6))


@pytest.mark.parametrize("rot", [64, 32])  # full and partial rotary
def test_rope_in_place_on_strided_views(rot):
    fused = torch.randn(7, 3 * 4 * 64)  # q (4 heads) and k/v views of one projection, as in the models
    q = fused[:, : 4 * 64].view(7, 4, 64)
    angles = torch.randn(7, rot // 2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    expected = apply_rope(q.clone(), cos.unsqueeze(1), sin.unsqueeze(1))
    untouched = fused[:, 4 * 64 :].clone()
    ops.rope_(q, cos, sin)
    torch.testing.assert_close(q, expected)
    assert torch.equal(fused[:, 4 * 64 :], untouched)


@pytest.mark.parametrize("window", [0, 5, 100])
@pytest.mark.parametrize("lengths, heads", [([9, 1, 17], (6, 2)), ([300, 1, 130], (6, 2)), ([700], (4, 1)), ([260, 75], (3, 3))])
def test_decode_attention_matches_sdpa_over_paged_slots(window, lengths, heads):
    """Short contexts (one chunk) and long ones, split into chunks whose softmax sums are merged;
    GQA groups of 3 and 4 query heads, and plain multi-head attention."""
    g = torch.Generator().manual_seed(len(lengths))
    (hq, hkv), d, longest = heads, 32, max(lengths)
    slots_total = 2 * longest + 8
    k_cache, v_cache = torch.randn(slots_total, hkv, d, generator=g), torch.randn(slots_total, hkv, d, generator=g)
    lens = torch.tensor(lengths)
    slots = torch.zeros(len(lengths), longest, dtype=torch.long)
    for b, n in enumerate(lengths):  # scattered slots, as a paged cache hands them out
        slots[b, :n] = torch.randperm(slots_total, generator=g)[:n]
    q = torch.randn(len(lengths), hq, d, generator=g)
    got = ops.decode_attention(q, k_cache, v_cache, slots, lens, 0.3, window)
    torch.testing.assert_close(got, reference_attention(q, k_cache, v_cache, slots, lens, 0.3, window),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("window", [0, 5])
def test_decode_attention_soft_caps_scores(cache_dtype, window):
    """Scores of several units against a cap of 2: the capped softmax, over lengths with vector tails
    (13 = 8 + 5) and several chunks (300); large scores saturate without overflow."""
    g = torch.Generator().manual_seed(7)
    lengths, (hq, hkv), d = [13, 1, 300], (6, 2), 32
    slots_total = 700
    k_cache = (3 * torch.randn(slots_total, hkv, d, generator=g)).to(cache_dtype)
    v_cache = torch.randn(slots_total, hkv, d, generator=g).to(cache_dtype)
    lens = torch.tensor(lengths)
    slots = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        slots[b, :n] = torch.randperm(slots_total, generator=g)[:n]
    q = 3 * torch.randn(len(lengths), hq, d, generator=g)
    got = ops.decode_attention(q, k_cache, v_cache, slots, lens, 0.3, window, 2.0)
    want = soft_capped_reference(q, k_cache.float(), v_cache.float(), slots, lens, 0.3, window, 2.0)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    uncapped = ops.decode_attention(q, k_cache, v_cache, slots, lens, 0.3, window)
    assert (uncapped - want).abs().max() > 0.1  # the cap changes the result: the test can fail


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 36])  # vectorized rows, and rows with a scalar tail
def test_decode_attention_over_16_bit_caches(dtype, d):
    """A float16/bfloat16 cache is read as its exact float32 widening: the result equals SDPA over the
    widened cache, and kv_write rounds float32 rows as torch's conversion does (nearest even)."""
    g = torch.Generator().manual_seed(d)
    lengths, hq, hkv, slots_total = [130, 7], 6, 2, 300
    k32, v32 = torch.randn(slots_total, hkv, d, generator=g), torch.randn(slots_total, hkv, d, generator=g)
    k_cache, v_cache = torch.zeros(slots_total, hkv, d, dtype=dtype), torch.zeros(slots_total, hkv, d, dtype=dtype)
    fused = torch.cat([k32, v32], dim=-1)  # strided k/v views of one projection, as the models pass them
    ops.kv_write(k_cache, v_cache, torch.arange(slots_total), fused[..., :d], fused[..., d:])
    assert torch.equal(k_cache, k32.to(dtype)) and torch.equal(v_cache, v32.to(dtype))
    lens = torch.tensor(lengths)
    slots = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for b, n in enumerate(lengths):
        slots[b, :n] = torch.randperm(slots_total, generator=g)[:n]
    q = torch.randn(len(lengths), hq, d, generator=g)
    got = ops.decode_attention(q, k_cache, v_cache, slots, lens, 0.25, 0)
    expected = reference_attention(q, k_cache.float(), v_cache.float(), slots, lens, 0.25, 0)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_kv_write_puts_rows_in_their_slots():
    k_cache, v_cache = torch.zeros(10, 2, 8), torch.zeros(10, 2, 8)
    fused = torch.randn(3, 4 * 8)
    k, v = fused[:, :16].view(3, 2, 8), fused[:, 16:].view(3, 2, 8)
    slots = torch.tensor([7, 2, 9])
    ops.kv_write(k_cache, v_cache, slots, k, v)
    torch.testing.assert_close(k_cache[slots], k)
    torch.testing.assert_close(v_cache[slots], v)
    assert k_cache[[0, 1, 3, 4, 5, 6, 8]].abs().sum() == 0


def test_a_build_killed_midway_does_not_hang_later_loads():
    """torch's builder waits forever on a leftover ``lock`` file; ours clears it under an OS lock."""
    import subprocess
    import sys

    code = ("from mistralrs.engine.kernels import _build_dir, native_ops\n"
            "(_build_dir() / 'lock').touch()  # what a killed build leaves behind\n"
            "assert native_ops() is not None\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("rows", [1, 3])
@pytest.mark.parametrize("scaled", ["none", "shared", "per_token"])
def test_lora_add_matches_torch(rows, scaled):
    ops = native_ops()
    g = torch.Generator().manual_seed(rows)
    x, at, bt = torch.randn(rows, 96, generator=g), torch.randn(96, 12, generator=g), torch.randn(12, 2100, generator=g)
    out = torch.randn(rows, 2100, generator=g)
    scales = None
    if scaled == "shared":
        scales = torch.rand(1, 12, generator=g)
    elif scaled == "per_token":  # a split view with a row stride, as the X-LoRA mixer hands out
        scales = torch.rand(rows, 20, generator=g).split([12, 8], dim=1)[0]
    down = x @ at
    expected = out + (down if scales is None else down * scales) @ bt
    ops.lora_add_(out, x, at, [bt], [0], [0], scales)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)


def test_lora_add_blocks_go_to_their_columns():
    """Layers sharing an input: stacked A, one B block per layer in its own output columns (and a
    layer without an adapter between them left as it was)."""
    ops = native_ops()
    g = torch.Generator().manual_seed(0)
    x, at = torch.randn(2, 64, generator=g), torch.randn(64, 10, generator=g)
    b0, b2 = torch.randn(4, 30, generator=g), torch.randn(6, 50, generator=g)  # layers 0 and 2 of 30 | 20 | 50
    out = torch.randn(2, 100, generator=g)
    scales = torch.rand(2, 10, generator=g)
    down = (x @ at) * scales
    expected = out.clone()
    expected[:, :30] += down[:, :4] @ b0
    expected[:, 50:] += down[:, 4:] @ b2
    ops.lora_add_(out, x, at, [b0, b2], [0, 4], [0, 50], scales)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-4)
    with pytest.raises(RuntimeError, match="does not fit"):
        ops.lora_add_(out, x, at, [b2], [6], [0], None)


def test_build_key_covers_what_changes_the_binary():
    """Two environments with the same torch version but another torch install (include paths),
    compiler, flags or CPU get separate build folders instead of rebuilding each other's."""
    from mistralrs.engine.kernels import build_key

    base = dict(sources=[b"int f();"], torch_version="2.13.0", torch_dir="/venv-a/torch",
                include_paths=["/venv-a/torch/include"], compiler="/usr/bin/g++ 12.2", flags=["-O3"],
                cpu_features="avx2 fma")
    key = build_key(**base)
    assert key == build_key(**base)  # stable
    for field, other in [("include_paths", ["/venv-b/torch/include"]), ("torch_dir", "/venv-b/torch"),
                         ("compiler", "/usr/bin/g++ 13.1"), ("flags", ["-O2"]), ("cpu_features", "avx2"),
                         ("sources", [b"int g();"]), ("torch_version", "2.12.0")]:
        assert build_key(**{**base, field: other}) != key, field
