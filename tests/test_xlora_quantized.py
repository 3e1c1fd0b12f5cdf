"""X-LoRA over an in-situ quantized base (quant=q8_0, blocks kept packed): float adapters on
quantized weights, fused q/k/v and gate/up base calls kept, close to the float result."""

from __future__ import annotations

import mistralrs
from xlora_layouts import BASE, load_xlora, mistralrs_layout, oracle

VARIANT = "v1_default"


def test_xlora_over_q8_0_base_stays_close_to_float(tmp_path):
    from mistralrs.engine.kernels import native_ops

    src = mistralrs_layout(tmp_path / "x", VARIANT)
    o = oracle(VARIANT)
    llm = load_xlora(src, "quant=q8_0", "model.weights=packed")
    base = llm.loaded.model.base
    q_proj = base.model.layers[0].self_attn.q_proj
    assert q_proj.base_layer.packed is not None and q_proj.base_layer.packed.kind != "dense"
    ids = o["input_ids"].tolist()
    tokens = [[e.token for _, e in llm.run([p], max_tokens=4, temperature=0.0, ignore_eos=True)] for p in ids]
    if native_ops() is not None:  # decode went through the fused native q/k/v call plus the LoRA terms
        assert base.model.layers[0].self_attn.qkv_proj._fused is not None
    assert base.decode_plan.stack() is not None  # both passes decode natively, adapter terms included
    base_q8 = mistralrs.load("model=llama", f"model.source={BASE}", "model.dtype=float32", "model.device=cpu",
                             "quant=q8_0", "model.weights=packed")
    for row, p in enumerate(ids):
        got = llm.logits(p)
        diff = (got - o["logits"][row]).abs().max().item()
        base_diff = (base_q8.logits(p) - o["logits_base"][row]).abs().max().item()  # q8_0's own rounding
        assert diff < 2 * base_diff + 1e-3, (diff, base_diff)  # a wrong mix would be off by ~1
        assert (got - o["logits_base"][row]).abs().max() > 0.5
    assert [len(t) for t in tokens] == [4, 4]
    agree = sum(a == b for t, e in zip(tokens, o["decode_tokens"].tolist()) for a, b in zip(t, e))
    assert agree >= 6  # greedy picks may flip only where the float logits nearly tie
