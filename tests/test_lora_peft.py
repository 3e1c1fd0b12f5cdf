"""Plain LoRA (adapter=lora) equals PEFT's output on the oracle's adapters, merged at load and
applied per call, alone and several at once; over a quantized base it stays near the float one."""

from __future__ import annotations

import pytest
import torch

import mistralrs
from xlora_layouts import ADAPTERS, ATOL, BASE

pytest.importorskip("peft")

IDS = [[1, 125, 23, 31, 116, 211, 252, 34, 213, 21], [1, 18, 64, 84, 47, 178, 241, 126, 19, 94]]
CASES = {"one": ["adapter_2"], "two": ["adapter_0", "adapter_2"]}


def peft_logits(names: list[str]) -> torch.Tensor:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(BASE, torch_dtype=torch.float32, attn_implementation="eager").eval()
    model = PeftModel.from_pretrained(base, ADAPTERS / names[0], adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(ADAPTERS / name, adapter_name=name)
    model.base_model.set_adapter(names)
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.float()


def load_lora(names: list[str], *overrides: str):
    source = ",".join(str(ADAPTERS / n) for n in names)
    return mistralrs.load("model=llama", f"model.source={BASE}", "model.dtype=float32", "model.device=cpu",
                          "adapter=lora", f"adapter.source='{source}'", *overrides)


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
@pytest.mark.parametrize("case", CASES)
def test_lora_matches_peft(case, merge):
    names = CASES[case]
    expected = peft_logits(names)
    llm = load_lora(names, f"adapter.merge={merge}")
    info = llm.loaded.model.adapter_info
    assert (info["merged"] > 0, info["unmerged"] > 0) == (merge, not merge)
    base = mistralrs.load("model=llama", f"model.source={BASE}", "model.dtype=float32", "model.device=cpu")
    for row, ids in enumerate(IDS):
        got = llm.logits(ids)
        torch.testing.assert_close(got, expected[row], atol=ATOL, rtol=ATOL)
        assert (got - base.logits(ids)).abs().max() > 100 * ATOL  # the adapters do change the output


def test_lora_over_quantized_base_is_applied_per_call_and_stays_close():
    names = CASES["two"]
    float_logits = load_lora(names).logits(IDS[0])
    llm = load_lora(names, "quant=q8_0", "model.weights=packed")
    info = llm.loaded.model.adapter_info
    assert info["merged"] == 0 and info["unmerged"] > 0  # blocks cannot take a merge
    got = llm.logits(IDS[0])
    assert (got - float_logits).abs().max() < 0.05
    events = [e.token for _, e in llm.run([IDS[0]], max_tokens=4, temperature=0.0, ignore_eos=True)]
    assert len(events) == 4
