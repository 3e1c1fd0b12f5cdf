"""Gemma 2 beyond the family-wide tests (test_families_hf/gguf, test_decode_stack, test_server_families,
test_xlora_families run its tiny model): the soft caps' settings from both formats, and LoRA.

Where llama.cpp and transformers differ on Gemma 2:
- GGUF records no ``query_pre_attn_scalar``; llama.cpp scales queries by 1/sqrt(head_dim) (the 27B
  model, 46 layers, by 1/sqrt(hidden / heads)), which is what the released 2B and 9B configs say
  (256 = head_dim). transformers is right for a checkpoint that says otherwise; a GGUF cannot say it,
  so the GGUF reference (tests/fixtures/make_tiny_ggufs.py) is computed with the scalar = head_dim.
- llama.cpp applies both soft caps whether or not the file names them (defaults 50 and 30, HF's
  defaults too); an HF config can turn either off with null. Each reader follows its format.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mistralrs
from mistralrs.engine.formats.gguf_parse import read_gguf_metadata
from mistralrs.plugins.gemma.config import gemma2_config_from_gguf
from tiny_models import assert_matches_transformers, make_tiny_gemma2

pytest.importorskip("transformers")

TINY = Path(__file__).parent / "data" / "tiny"
IDS = [[1, *range(40, 63)], [1, *range(100, 123)]]


def load(path, *overrides):
    return mistralrs.load("model=gemma2", f"model.source={path}", "model.dtype=float32", "model.device=cpu",
                          *overrides)


def test_hf_config_layers_scale_and_caps(tmp_path):
    make_tiny_gemma2(tmp_path)
    cfg = load(tmp_path).loaded.config
    assert cfg.local_layers == [True, False, True, False]  # starts local, as transformers' layer_types
    assert (cfg.sliding_window, cfg.query_pre_attn_scalar) == (8, 24.0)
    assert (cfg.attn_logit_softcapping, cfg.final_logit_softcapping) == (2.0, 1.0)
    assert cfg.local_rope is None  # one RoPE base for both kinds of layer


def test_caps_set_to_null_are_off(tmp_path):
    """An HF config may turn the caps off; the model then matches transformers without them."""
    ref = make_tiny_gemma2(tmp_path, attn_logit_softcapping=None, final_logit_softcapping=None)
    llm = load(tmp_path)
    assert (llm.loaded.config.attn_logit_softcapping, llm.loaded.config.final_logit_softcapping) == (None, None)
    assert_matches_transformers(llm, ref, IDS)


def test_attention_cap_runs_in_prefill_and_decode(tmp_path):
    """The tiny model's attention scores reach several units, so a cap of 2 changes them: with the
    cap removed from our model only, prefill logits and decoded tokens stop matching."""
    ref = make_tiny_gemma2(tmp_path)
    llm = load(tmp_path)
    for layer in llm.loaded.model.model.layers:
        layer.self_attn.softcap = None
    llm.loaded.model.decode_plan.enabled = False  # the stack was built with the cap
    with pytest.raises(AssertionError):
        assert_matches_transformers(llm, ref, IDS)


def test_gguf_without_cap_keys_takes_llama_cpp_defaults():
    meta = dict(read_gguf_metadata(TINY / "gemma2.gguf"))
    assert (meta["gemma2.attn_logit_softcapping"], meta["gemma2.final_logit_softcapping"]) == (2.0, 1.0)
    for key in ("gemma2.attn_logit_softcapping", "gemma2.final_logit_softcapping", "gemma2.attention.sliding_window"):
        del meta[key]
    cfg = gemma2_config_from_gguf(meta, "gemma2")
    assert (cfg.attn_logit_softcapping, cfg.final_logit_softcapping, cfg.sliding_window) == (50.0, 30.0, 4096)
    assert cfg.query_pre_attn_scalar == cfg.head_dim == 32
    assert cfg.local_layers == [True, False, True, False]


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_peft_lora_matches_peft(tmp_path, merge):
    peft = pytest.importorskip("peft")
    model = make_tiny_gemma2(tmp_path / "base")
    torch.manual_seed(0)
    config = peft.LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = peft.get_peft_model(model, config).eval()
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = model(torch.tensor(IDS)).logits.float()
    llm = load(tmp_path / "base", "adapter=lora", f"adapter.source={tmp_path / 'adapter'}", f"adapter.merge={merge}")
    base = load(tmp_path / "base")
    for row, ids in enumerate(IDS):
        got = llm.logits(ids)
        torch.testing.assert_close(got, expected[row], atol=1e-4, rtol=0)
        assert (got - base.logits(ids)).abs().max() > 1e-2
