"""X-LoRA against PEFT's output (tests/data/xlora): logits from both file layouts, and a greedy
decode through the engine with its two KV caches."""

from __future__ import annotations

import pytest
import torch

from xlora_layouts import ATOL, DATA, VARIANTS, load_xlora, mistralrs_layout, oracle, peft_layout

LAYOUTS = {"mistral.rs": mistralrs_layout, "peft": peft_layout}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_peft(tmp_path, variant, layout):
    llm = load_xlora(LAYOUTS[layout](tmp_path / "x", variant))
    assert llm.loaded.model.adapter_info["layout"] == layout
    o = oracle(variant)
    for row, ids in enumerate(o["input_ids"].tolist()):
        got = llm.logits(ids)
        torch.testing.assert_close(got, o["logits"][row], atol=ATOL, rtol=ATOL)
        # teeth: the base model alone and an equal mix of the adapters are far from it
        assert (got - o["logits_base"][row]).abs().max() > 100 * ATOL
        assert (got - o["logits_equal_weight"][row]).abs().max() > 100 * ATOL


def test_adapters_dir_finds_adapters_elsewhere():
    variant = "v1_default"
    llm = load_xlora(DATA / "xlora" / variant, f"adapter.adapters_dir={DATA / 'adapters'}")
    o = oracle(variant)
    torch.testing.assert_close(llm.logits(o["input_ids"][0].tolist()), o["logits"][0], atol=ATOL, rtol=ATOL)


@pytest.mark.parametrize("variant", VARIANTS)
def test_greedy_decode_with_dual_cache(tmp_path, variant):
    llm = load_xlora(mistralrs_layout(tmp_path / "x", variant))
    model = llm.loaded.model
    assert model.num_kv_caches == 2 and llm.engine.pool.num_caches == 2
    o = oracle(variant)
    steps = o["decode_tokens"].shape[1]
    seen: list[torch.Tensor] = []
    logits_of = model.logits
    model.logits = lambda hidden: seen.append(logits_of(hidden)) or seen[-1]
    prompts = o["input_ids"].tolist()
    tokens = [[] for _ in prompts]
    for index, event in llm.run(prompts, max_tokens=steps, temperature=0.0, ignore_eos=True):
        tokens[index].append(event.token)
    assert tokens == o["decode_tokens"].tolist()
    assert len(seen) == steps and all(s.shape[0] == len(prompts) for s in seen)  # both decoded together
    torch.testing.assert_close(torch.stack(seen), o["decode_last_logits"], atol=ATOL, rtol=ATOL)
