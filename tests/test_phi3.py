"""Phi-3 beyond the family-wide tests (test_families_hf/gguf, which run the Phi-4-mini-shaped tiny
model): the Phi-3-mini shape, older rope type names, and the fused weights' checks."""

from __future__ import annotations

import json

import pytest
import torch

import mistralrs
from mistralrs.engine.formats.checkpoint import ModelFileError
from tiny_models import assert_matches_transformers, make_tiny_phi3

pytest.importorskip("transformers")

IDS = [[1, *range(40, 63)], [1, *range(100, 123)]]


def load(path, *overrides):
    return mistralrs.load("model=phi3", f"model.source={path}", "model.dtype=float32", "model.device=cpu", *overrides)


def test_phi3_mini_shape_plain_rope_full_rotary_untied(tmp_path):
    """Phi-3-mini-4k: plain RoPE over whole heads, its own output head, a window (here 8)."""
    ref = make_tiny_phi3(tmp_path, tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    llm = load(tmp_path)
    cfg = llm.loaded.config
    assert (cfg.rope.scaling, cfg.rope.dim, cfg.tie_word_embeddings, cfg.sliding_window) == ("none", 16, False, 8)
    assert_matches_transformers(llm, ref, IDS)


@pytest.mark.parametrize("old_name", ["su", "yarn"])
def test_older_rope_type_names_are_longrope(tmp_path, old_name):
    """Phi-3 config.json files of 2024 say rope_scaling type "su" (and some "yarn"): transformers'
    Phi3Config reads both as LongRoPE, with the same factors."""
    make_tiny_phi3(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["rope_scaling"] = {**config.pop("rope_parameters"), "type": old_name}
    del config["rope_scaling"]["rope_type"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    rope = load(tmp_path).loaded.config.rope
    assert (rope.scaling, rope.dim, rope.original_max_position) == ("longrope", 12, 16)


def test_fused_weight_of_another_size_is_refused_by_name(tmp_path):
    from safetensors.torch import load_file, save_file

    make_tiny_phi3(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    name = "model.layers.0.self_attn.qkv_proj.weight"
    tensors[name] = tensors[name][:-8]
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelFileError, match="qkv_proj.weight.*num_key_value_heads"):
        load(tmp_path)


# --- adapters trained on the checkpoint's fused modules --------------------------------------------
@pytest.fixture(scope="module")
def fused_lora(tmp_path_factory):
    """A PEFT LoRA on the tiny Phi-3's fused qkv_proj and gate_up_proj (and o/down), as adapters for
    Phi-3 checkpoints are trained, with PEFT's logits."""
    peft = pytest.importorskip("peft")
    root = tmp_path_factory.mktemp("phi3-lora")
    model = make_tiny_phi3(root / "base")
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                             target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    model = peft.get_peft_model(model, config).eval()
    model.save_pretrained(root / "adapter")
    with torch.no_grad():
        expected = model(torch.tensor(IDS)).logits.float()
    return root / "base", root / "adapter", expected


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_peft_lora_on_fused_modules_matches_peft(fused_lora, merge):
    """A LoRA on [q; k; v] is the LoRAs on q, k and v with A shared and B split by rows: exact."""
    base_dir, adapter_dir, expected = fused_lora
    llm = load(base_dir, "adapter=lora", f"adapter.source={adapter_dir}", f"adapter.merge={merge}")
    base = load(base_dir)
    for row, ids in enumerate(IDS):
        got = llm.logits(ids)
        torch.testing.assert_close(got, expected[row], atol=1e-4, rtol=0)
        assert (got - base.logits(ids)).abs().max() > 1e-2


def test_xlora_on_fused_module_names_keeps_one_layer_per_fused_module(tmp_path):
    """X-LoRA adapters naming qkv_proj / gate_up_proj: the parts of each fused module share its X-LoRA
    layer (so the classifier's layerwise scalings count the checkpoint's modules), and the batched
    dual-cache decode equals recomputing both passes."""
    import json

    from fixtures.make_random_xlora import write_random_xlora
    from xlora_layouts import check_against_reference, decode, prompts

    make_tiny_phi3(tmp_path / "base")
    base = load(tmp_path / "base")
    cfg = base.loaded.config
    h, qkv = cfg.hidden_size, (cfg.num_heads + 2 * cfg.num_kv_heads) * cfg.head_dim
    linears = [entry for i in range(cfg.num_layers) for entry in (
        (f"model.layers.{i}.self_attn.o_proj", h, h), (f"model.layers.{i}.self_attn.qkv_proj", h, qkv),
        (f"model.layers.{i}.mlp.gate_up_proj", h, 2 * cfg.intermediate_size),
        (f"model.layers.{i}.mlp.down_proj", cfg.intermediate_size, h))]
    src = write_random_xlora(tmp_path / "x", base.loaded.model, h, layerwise=True, b_scale=0.5, linears=linears)
    llm = load(tmp_path / "base", "adapter=xlora", f"adapter.source={src}", "engine.block_size=4")
    assert llm.loaded.model.adapter_info["xlora_layers"] == len(linears)
    order = json.loads((src / "ordering.json").read_text())["layers"]
    attn = llm.loaded.model.base.model.layers[1].self_attn
    for part in ("q_proj", "k_proj", "v_proj"):
        assert set(getattr(attn, part).column_info[0].tolist()) == {order["model.layers.1.self_attn.qkv_proj"]}
    batch = prompts([4, 11, 7], seed=5)
    tokens, logprobs = decode(llm, batch)
    check_against_reference(llm, batch, tokens, logprobs)
    assert (llm.logits(batch[1]) - base.logits(batch[1])).abs().max() > 1e-2
