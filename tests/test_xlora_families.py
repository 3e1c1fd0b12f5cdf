"""X-LoRA on every family's tiny GGUF (no family code for adapters): batched dual-cache decodes
equal recomputing both passes, and the adapters change the output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import mistralrs
from fixtures.make_random_xlora import write_random_xlora
from xlora_layouts import check_against_reference, decode, prompts

TINY = Path(__file__).parent / "data" / "tiny"


@pytest.mark.parametrize("family", ["mistral", "mixtral", "gemma", "gemma2", "gemma3", "qwen2", "qwen3", "qwen3moe", "phi3"])
def test_random_xlora_on_family(tmp_path, family):
    overrides = [f"model={family}", f"model.source={TINY / family}.gguf", "model.dtype=float32", "model.device=cpu",
                 "engine.block_size=4"]
    base = mistralrs.load(*overrides)
    src = write_random_xlora(tmp_path / "x", base.loaded.model, base.loaded.config.hidden_size, layerwise=True,
                             b_scale=0.5)
    llm = mistralrs.load(*overrides, "adapter=xlora", f"adapter.source={src}")
    batch = prompts([4, 11, 7], seed=5)
    tokens, logprobs = decode(llm, batch)
    check_against_reference(llm, batch, tokens, logprobs)
    assert (llm.logits(batch[1]) - base.logits(batch[1])).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["mixtral", "qwen3moe"])
def test_xlora_refuses_mixture_experts(tmp_path, family):
    from mistralrs.plugins.xlora.lora_files import AdapterError

    overrides = [f"model={family}", f"model.source={TINY / family}.gguf", "model.dtype=float32", "model.device=cpu"]
    base = mistralrs.load(*overrides)
    src = write_random_xlora(tmp_path / "x", base.loaded.model, base.loaded.config.hidden_size)
    order = json.loads((src / "ordering.json").read_text())
    expert = "model.layers.0.mlp.experts.1.down_proj"
    order["layers"][expert] = len(order["layers"])
    (src / "ordering.json").write_text(json.dumps(order))
    weights = src / "adapter_0" / "adapter_model.safetensors"
    tensors = load_file(str(weights))
    out_features, in_features = dict(base.loaded.model.named_modules())[expert].weight.shape
    tensors[f"base_model.model.{expert}.lora_A.weight"] = torch.zeros(8, in_features)
    tensors[f"base_model.model.{expert}.lora_B.weight"] = torch.zeros(out_features, 8)
    save_file(tensors, str(weights))
    with pytest.raises(AdapterError, match="expert of the mixture model.layers.0.mlp"):
        mistralrs.load(*overrides, "adapter=xlora", f"adapter.source={src}")
