"""engine.kv_cache_dtype: the q8_0 cache's bytes against gguf.quants (GGML_TYPE_Q8_0, the independent
reference), the decode kernel over q8_0 rows against float attention over the same rows dequantized,
and each dtype end to end on tiny models against the float32 cache.

Tolerances (the real models' bar is in test_smollm2_reference.py / test_gemma3_reference.py):
- q8_0 bytes: equal to gguf.quants.quantize; values: equal to gguf.quants.dequantize.
- decode attention over q8_0 rows: within 2e-5 of SDPA over the dequantized rows (only the order of
  float32 sums differs).
- tiny models, teacher-forced decode logits against the float32 cache: max |Δ| within float16 2e-3,
  bfloat16 1e-2, q8_0 4e-2 times the largest |logit| (measured at most 1.6e-4 / 6.5e-3 / 2.8e-2 of
  it, the last two on the tiny Gemma 3, whose soft-capped logits stay below 1); each greedy token the
  float32 cache's argmax up to twice that (random tiny models have near ties, so a q8_0 run may part
  from the float32 one where two logits are within its error).
- the same sequences batched, chunked, preempted, sharing prefix blocks or in X-LoRA's two caches
  against each alone, q8_0: logprobs within BATCHING_TOLERANCE (2e-3), the same greedy tokens.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mistralrs
from conftest import decode_path_logits
from mistralrs.engine.core.kv_cache import KV_CACHE_DTYPES, Q8_0, KVCache, KVCacheSpec, dequantize_q8_0, quantize_q8_0
from mistralrs.engine.kernels import native_ops
from attention_reference import reference_attention
from tiny_models import engine_greedy, make_tiny_llama

TINY = Path(__file__).parent / "data" / "tiny"
PROMPTS = [[1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100], [1, 84, 104, 101], [1] + list(range(40, 90))]
# A q8_0 row depends on its own values only, but batching changes the float32 rounding of k and v
# (other matmul shapes) by ~1e-7, which now and then moves a value across a rounding boundary: one
# step of its block's scale. Logprobs then move by up to ~8e-4 on the tiny models (float16: ~8e-5).
BATCHING_TOLERANCE = 2e-3
LOGIT_TOLERANCE = {"float32": 0.0, "float16": 2e-3, "bfloat16": 1e-2, "q8_0": 4e-2}  # x max |logit|

needs_native = pytest.mark.skipif(native_ops() is None, reason="no C++ toolchain here")


def awkward_rows(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    """Rows spanning 12 orders of magnitude (float16 subnormal scales included), an all-zero block and a
    block whose scaled values fall exactly on .5 (ggml rounds those away from zero)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g) * torch.logspace(-8, 4, shape[0]).view(-1, *[1] * (len(shape) - 1))
    x[0, 0, :32] = 0
    x[1, 0, :32] = torch.arange(32) - 15.5
    x[1, 0, 0] = 127.0  # scale 1: every other value is a tie
    return x


def test_q8_0_quantize_and_dequantize_match_gguf():
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    x = awkward_rows((40, 3, 96))
    expected = quantize(x.numpy(), GGMLQuantizationType.Q8_0)
    packed = quantize_q8_0(x)
    assert packed.dtype == torch.uint8 and packed.shape == (40, 3, 96 // 32 * 34)
    assert np.array_equal(packed.numpy(), expected)
    assert np.array_equal(dequantize_q8_0(packed).numpy(), dequantize(expected, GGMLQuantizationType.Q8_0))


def test_q8_0_cache_layout_and_bytes():
    spec = KVCacheSpec(num_layers=2, num_kv_heads=3, head_dim=64)
    cache = KVCache(spec, 8, Q8_0, torch.device("cpu"))
    assert cache.k.shape == (2, 8, 3, 68) and cache.k.dtype == torch.uint8
    assert cache.nbytes == 2 * (2 * 8 * 3 * 68)  # 34/64 of float16's 2 * 2 * 8 * 3 * 64 * 2 bytes
    x = torch.randn(5, 3, 64, generator=torch.Generator().manual_seed(0)) * torch.tensor([0.01, 1, 30]).view(3, 1)
    slots = torch.tensor([6, 0, 3, 7, 1])
    cache.write(1, slots, x, 2 * x)
    assert torch.equal(cache.k[1][slots], quantize_q8_0(x)) and torch.equal(cache.v[1][slots], quantize_q8_0(2 * x))
    # each value within half a step of its block's scale (max|x| / 127, itself rounded to float16)
    err = (cache.widen(cache.k[1][slots], torch.float32) - x).view(5, 3, 2, 32).abs().amax(-1)
    assert (err <= x.view(5, 3, 2, 32).abs().amax(-1) * (0.5 / 127 + 2**-11)).all()
    with pytest.raises(ValueError, match=r"engine.kv_cache_dtype=q8_0 .*head_dim is 48"):
        KVCache(KVCacheSpec(1, 1, 48), 4, Q8_0, torch.device("cpu"))


@needs_native
def test_native_kv_write_quantizes_as_gguf():
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    ops = native_ops()
    x = awkward_rows((40, 3, 64), seed=1)
    fused = torch.cat([x, -3 * x], dim=-1)  # strided k/v views of one projection, as the models pass them
    k_cache, v_cache = torch.zeros(50, 3, 68, dtype=torch.uint8), torch.zeros(50, 3, 68, dtype=torch.uint8)
    slots = torch.randperm(50, generator=torch.Generator().manual_seed(0))[:40]
    ops.kv_write(k_cache, v_cache, slots, fused[..., :64], fused[..., 64:])
    assert np.array_equal(k_cache[slots].numpy(), quantize(x.numpy(), GGMLQuantizationType.Q8_0))
    assert np.array_equal(v_cache[slots].numpy(), quantize((-3 * x).numpy(), GGMLQuantizationType.Q8_0))


@needs_native
@pytest.mark.parametrize("d", [32, 64, 96, 256])  # one block, two, two + one, eight (Gemma 3)
@pytest.mark.parametrize("window", [0, 5])
@pytest.mark.parametrize("lengths, heads", [([9, 1, 18], (6, 2)), ([301, 130], (4, 1)), ([70], (3, 3))])
def test_decode_attention_over_q8_0_equals_float_attention_on_dequantized_rows(d, window, lengths, heads):
    """int8 keys times their block scale in q·k, int8 values times p·scale: the float attention over
    the dequantized rows, up to the order of float32 sums; key counts not divisible by 4 take the
    scalar tail, long contexts the chunked (flash-decoding) merge."""
    ops = native_ops()
    g = torch.Generator().manual_seed(d + len(lengths))
    (hq, hkv), longest = heads, max(lengths)
    slots_total = 2 * longest + 8
    k_cache = quantize_q8_0(torch.randn(slots_total, hkv, d, generator=g))
    v_cache = quantize_q8_0(torch.randn(slots_total, hkv, d, generator=g))
    lens = torch.tensor(lengths)
    slots = torch.zeros(len(lengths), longest, dtype=torch.long)
    for b, n in enumerate(lengths):  # scattered slots, as a paged cache hands them out
        slots[b, :n] = torch.randperm(slots_total, generator=g)[:n]
    q = torch.randn(len(lengths), hq, d, generator=g)
    got = ops.decode_attention(q, k_cache, v_cache, slots, lens, 0.3, window)
    expected = reference_attention(q, dequantize_q8_0(k_cache), dequantize_q8_0(v_cache), slots, lens, 0.3, window)
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=1e-5)


# -- end to end on tiny models -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama32")
    make_tiny_llama(path, head_dim=32)  # 4 heads of 32 over hidden 64: q8_0 needs multiples of 32
    return path


def load(family: str, source: Path, *overrides: str):
    return mistralrs.load(f"model={family}", f"model.source={source}", "model.device=cpu", *overrides)


def teacher_forced(llm, kv_dtype: str) -> list[torch.Tensor]:
    return [decode_path_logits(llm, p, KV_CACHE_DTYPES[kv_dtype]) for p in PROMPTS]


@needs_native
@pytest.mark.parametrize("family, quant", [("llama", "none"), ("llama", "q4_0"), ("gemma3", "q8_0")])
def test_each_kv_cache_dtype_decodes_close_to_the_float32_cache(family, quant, tiny_llama):
    """Decode logits (one token per step over the cache: the native stack) with each dtype against the
    float32 cache, within LOGIT_TOLERANCE x the largest |logit|; and each greedy token the engine picks
    (prefill, then decode) is the float32 cache's argmax, or within twice that tolerance of it (the
    tiny random models have near ties)."""
    source = tiny_llama if family == "llama" else TINY / f"{family}.gguf"
    extra = ("model.dtype=float32",) if quant == "none" else ()
    reference = reference_llm = None
    for name in LOGIT_TOLERANCE:
        llm = load(family, source, f"quant={quant}", f"engine.kv_cache_dtype={name}", *extra)
        assert llm.engine.kv_dtype == KV_CACHE_DTYPES[name]
        assert llm.loaded.model.decode_plan.stack() is not None
        logits = teacher_forced(llm, name)
        if reference is None:
            reference, reference_llm = logits, llm
        bound = LOGIT_TOLERANCE[name] * max(r.abs().max().item() for r in reference)
        err = max((a - b).abs().max().item() for a, b in zip(logits, reference))
        assert err <= bound, f"{name}: decode logits differ by {err} > {bound}"
        tokens, _ = engine_greedy(llm, PROMPTS, steps=8)
        for prompt, out in zip(PROMPTS, tokens):
            ref = decode_path_logits(reference_llm, prompt + out[:-1])[len(prompt) - 1:]
            chosen = ref.gather(1, torch.tensor(out).unsqueeze(1)).squeeze(1)
            assert (chosen >= ref.max(-1).values - 2 * bound).all(), f"{name}: greedy {out}"


@needs_native
def test_q8_0_torch_path_equals_native_path(tiny_llama, monkeypatch):
    """Without the native kernels (CUDA, other activations) q8_0 rows are quantized in torch and
    dequantized for SDPA: the same bytes, so the same logits up to float32 rounding."""
    import mistralrs.engine.layers.attention as attention

    llm = load("llama", tiny_llama, "model.dtype=float32", "engine.kv_cache_dtype=q8_0")
    native = teacher_forced(llm, "q8_0")
    llm.loaded.model.decode_plan.enabled = False
    monkeypatch.setattr(attention, "fast_ops", lambda *tensors: None)
    for a, b in zip(teacher_forced(llm, "q8_0"), native):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@needs_native
def test_q8_0_under_chunked_prefill_preemption_and_prefix_reuse(tiny_llama):
    """Batching, chunked prefill, preemption (recompute) and shared prefix blocks give each sequence
    what it gets alone, within BATCHING_TOLERANCE."""
    alone = load("llama", tiny_llama, "model.dtype=float32", "engine.kv_cache_dtype=q8_0")
    expected = [engine_greedy(alone, [p], steps=6) for p in PROMPTS]
    llm = load("llama", tiny_llama, "model.dtype=float32", "engine.kv_cache_dtype=q8_0", "engine.block_size=4",
               "engine.max_batch_tokens=16", "engine.kv_cache_tokens=80")
    for _ in range(2):  # the second round reuses the first's prefix blocks
        tokens, logprobs = engine_greedy(llm, PROMPTS, steps=6)
        for i, (want_tokens, want_logprobs) in enumerate(expected):
            assert tokens[i] == want_tokens[0]
            torch.testing.assert_close(logprobs[i], want_logprobs[0], atol=BATCHING_TOLERANCE, rtol=0)
    assert llm.engine.scheduler.preemptions > 0 and llm.engine.pool.prefix_hit_tokens > 0


def test_q8_0_needs_head_dim_multiple_of_32(tmp_path):
    make_tiny_llama(tmp_path)  # head_dim 16
    with pytest.raises(ValueError, match=r"engine.kv_cache_dtype=q8_0 .*head_dim is 16"):
        load("llama", tmp_path, "engine.kv_cache_dtype=q8_0")


def test_kv_bytes_per_token():
    from mistralrs.engine.core.llm_engine import kv_bytes_per_token

    class Model:
        def cache_spec(self):
            return KVCacheSpec(num_layers=30, num_kv_heads=3, head_dim=64)  # SmolLM2-135M

    sizes = {name: kv_bytes_per_token(Model(), dtype, 1) for name, dtype in KV_CACHE_DTYPES.items()}
    assert sizes == {"float32": 46080, "float16": 23040, "bfloat16": 23040, "q8_0": 12240}


@needs_native
def test_xlora_dual_caches_in_q8_0(tmp_path):
    """X-LoRA keeps two caches per sequence (scaling pass, main pass) in the one pool: in q8_0, batched
    decodes with chunked prefill over small blocks give each sequence what it gets alone (within
    BATCHING_TOLERANCE)."""
    from fixtures.make_random_xlora import write_random_xlora
    from xlora_layouts import decode, prompts

    overrides = ["model=gemma3", f"model.source={TINY / 'gemma3.gguf'}", "model.dtype=float32", "model.device=cpu"]
    base = mistralrs.load(*overrides)  # head_dim 32
    src = write_random_xlora(tmp_path / "x", base.loaded.model, base.loaded.config.hidden_size, layerwise=True,
                             b_scale=0.5)
    xlora = [*overrides, "adapter=xlora", f"adapter.source={src}", "engine.kv_cache_dtype=q8_0"]
    alone = mistralrs.load(*xlora)
    batch = prompts([4, 11, 7], seed=5)
    expected = [decode(alone, [p]) for p in batch]
    llm = mistralrs.load(*xlora, "engine.block_size=4", "engine.max_batch_tokens=8")
    assert llm.engine.num_caches == 2 and llm.engine.kv_dtype is Q8_0
    tokens, logprobs = decode(llm, batch)
    for i, (want_tokens, want_logprobs) in enumerate(expected):
        assert tokens[i] == want_tokens[0]
        torch.testing.assert_close(torch.tensor(logprobs[i]), torch.tensor(want_logprobs[0]), atol=BATCHING_TOLERANCE,
                                   rtol=0)
