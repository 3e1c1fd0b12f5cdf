"""X-LoRA's two KV caches under the engine: batched decodes of sequences of different lengths,
chunked prefill, preemption and prefix reuse equal recomputing both passes over the full
sequence; the non-granular mode freezes scalings and skips the scaling pass."""

from __future__ import annotations

import random

import pytest
import torch

from mistralrs.engine.batch import contiguous_batch
from mistralrs.engine.kv_cache import KVCache
from xlora_layouts import ATOL, load_xlora, mistralrs_layout

VARIANT = "v2_layerwise_topk_temp"
STEPS = 6


def prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, 256) for _ in range(n - 1)] for n in lengths]


def decode(llm, batch: list[list[int]], steps: int = STEPS) -> tuple[list[list[int]], list[list[float]]]:
    tokens, logprobs = [[] for _ in batch], [[] for _ in batch]
    for i, event in llm.run(batch, max_tokens=steps, temperature=0.0, ignore_eos=True, logprobs=1):
        tokens[i].append(event.token)
        logprobs[i].append(event.logprob.logprob)
    return tokens, logprobs


def reference_logits(model, ids: list[int], freeze_at: int | None = None) -> torch.Tensor:
    """Both passes over the whole sequence at once; ``freeze_at``: positions from there on take the
    scalings of the position before (the non-granular mode)."""
    n = len(ids)
    cache = KVCache(model.cache_spec(), 2 * n, torch.float32, torch.device("cpu"))
    x = torch.tensor(ids)
    with torch.inference_mode():
        scalings = model.scalings(x, contiguous_batch([0], [n], [0], [0], x.device), cache)
        if freeze_at is not None:
            scalings[freeze_at:] = scalings[freeze_at - 1]
        model.mixer.main_pass(scalings, torch.float32)
        try:
            hidden = model.base(x, contiguous_batch([0], [n], [0], [n], x.device), cache)
        finally:
            model.mixer.clear()
        return model.logits(hidden).log_softmax(-1)


def check_against_reference(llm, batch, tokens, logprobs, freeze_after: int | None = None) -> None:
    model = llm.loaded.model
    for ids, out, lps in zip(batch, tokens, logprobs):
        freeze_at = None if freeze_after is None else len(ids) + freeze_after
        ref = reference_logits(model, ids + out, freeze_at)
        steps = ref[len(ids) - 1 : len(ids) - 1 + len(out)]
        assert out == steps.argmax(-1).tolist()
        expected = steps.gather(1, torch.tensor(out).unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(torch.tensor(lps), expected, atol=ATOL, rtol=0)


@pytest.fixture(scope="module")
def xlora_dir(tmp_path_factory):
    return mistralrs_layout(tmp_path_factory.mktemp("x") / "xlora", VARIANT)


def test_batch_of_different_lengths_equals_full_recompute(xlora_dir):
    llm = load_xlora(xlora_dir, "engine.block_size=4", "engine.max_batch_tokens=16")  # chunked prefill
    batch = prompts([3, 9, 14, 22, 5])
    tokens, logprobs = decode(llm, batch)
    check_against_reference(llm, batch, tokens, logprobs)
    assert llm.engine.pool.stats().free == llm.engine.pool.num_blocks  # both caches' blocks returned


def test_preemption_recomputes_both_caches(xlora_dir):
    # 12 blocks of 4 slots: two caches x five sequences cannot all stay; the newest get preempted
    llm = load_xlora(xlora_dir, "engine.block_size=4", "engine.kv_cache_tokens=48")
    batch = prompts([6, 7, 8, 5, 9], seed=1)
    tokens, logprobs = decode(llm, batch)
    assert llm.engine.scheduler.preemptions > 0
    check_against_reference(llm, batch, tokens, logprobs)


def test_prefix_reuse_shares_blocks_of_both_caches_correctly(xlora_dir):
    llm = load_xlora(xlora_dir, "engine.block_size=4")
    shared = prompts([13], seed=2)[0]
    first = decode(llm, [shared])
    second_prompt = shared[:12] + [77, 78]
    tokens, logprobs = decode(llm, [second_prompt])
    assert llm.engine.pool.prefix_hit_tokens >= 12  # the second request reused both caches' blocks
    check_against_reference(llm, [shared], *first)
    check_against_reference(llm, [second_prompt], tokens, logprobs)


@pytest.mark.parametrize("k", [0, 2])
def test_non_granular_freezes_scalings_and_skips_the_scaling_pass(xlora_dir, k):
    llm = load_xlora(xlora_dir, "engine.block_size=4", f"adapter.tgt_non_granular_index={k}")
    model = llm.loaded.model
    rows_seen = []
    classify = model.classifier.forward
    model.classifier.forward = lambda hidden: rows_seen.append(hidden.shape[0]) or classify(hidden)
    batch = prompts([5, 11, 8], seed=3)
    tokens, logprobs = decode(llm, batch, steps=8)
    assert sum(rows_seen) == sum(len(p) + k for p in batch)  # no scaling pass once frozen
    check_against_reference(llm, batch, tokens, logprobs, freeze_after=k)
    granular = [reference_logits(model, p + t) for p, t in zip(batch, tokens)]
    frozen = [reference_logits(model, p + t, len(p) + k) for p, t in zip(batch, tokens)]
    assert max((g - f).abs().max() for g, f in zip(granular, frozen)) > 1e-3  # freezing does change it


def test_non_granular_survives_preemption(xlora_dir):
    llm = load_xlora(xlora_dir, "engine.block_size=4", "engine.kv_cache_tokens=48", "adapter.tgt_non_granular_index=1")
    batch = prompts([6, 7, 8, 5, 9], seed=4)
    tokens, logprobs = decode(llm, batch)
    assert llm.engine.scheduler.preemptions > 0
    check_against_reference(llm, batch, tokens, logprobs, freeze_after=1)
