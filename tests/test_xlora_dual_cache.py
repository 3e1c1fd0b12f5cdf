"""X-LoRA's two KV caches under the engine: batched decodes of sequences of different lengths,
chunked prefill, preemption and prefix reuse equal recomputing both passes over the full
sequence; the non-granular mode freezes scalings and skips the scaling pass."""

from __future__ import annotations

import pytest

from xlora_layouts import check_against_reference, decode, load_xlora, mistralrs_layout, prompts, reference_logits

VARIANT = "v2_layerwise_topk_temp"


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


def test_non_granular_blocks_past_the_freeze_are_never_reused(xlora_dir):
    # A's K/V after its freeze point depend on where its prompt ended; B's prompt covers those
    # positions granularly, so reusing A's blocks there would be wrong.
    llm = load_xlora(xlora_dir, "engine.block_size=4", "adapter.tgt_non_granular_index=0")
    a = prompts([8], seed=6)[0]
    a_out, _ = decode(llm, [a], steps=8)
    b = (a + a_out[0])[:14] + [99]
    tokens, logprobs = decode(llm, [b])
    assert llm.engine.pool.prefix_hit_tokens == 8  # A's prompt blocks only, in both caches
    check_against_reference(llm, [b], tokens, logprobs, freeze_after=0)
