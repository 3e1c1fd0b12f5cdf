"""A tiny random LlamaForCausalLM from safetensors matches HF transformers in float32."""

from __future__ import annotations

import pytest
import torch

import mistralrs
from tiny_models import make_tiny_llama, reference_logits

pytest.importorskip("transformers")

ATOL = 1e-4


def load(path):
    return mistralrs.load("model=llama", f"model.source={path}", "model.dtype=float32", "model.device=cpu")


@pytest.mark.parametrize("variant", [
    {},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 32}},
    {"tie_word_embeddings": True, "num_key_value_heads": 4},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
], ids=["plain", "llama3-rope", "tied-mha", "linear-rope"])
def test_logits_match_transformers(tmp_path, variant):
    ref_model = make_tiny_llama(tmp_path / "m", **variant)
    llm = load(tmp_path / "m")
    ids = [[1, *range(40, 63)], [1, *range(100, 123)]]  # 24 tokens each
    expected = reference_logits(ref_model, ids)
    for row, seq in enumerate(ids):
        got = llm.logits(seq)
        assert got.shape == expected[row].shape
        torch.testing.assert_close(got, expected[row], atol=ATOL, rtol=0)


def test_greedy_decode_with_kv_cache_matches_transformers(tmp_path):
    ref_model = make_tiny_llama(tmp_path / "m")
    llm = load(tmp_path / "m")
    prompt = "hello tiny llama"
    ids = llm.tokenizer.encode(prompt)
    with torch.no_grad():
        out = ref_model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                                 pad_token_id=0)
    expected = out[0, len(ids):].tolist()
    events = [e for _, e in llm.run([ids], max_tokens=8, temperature=0.0, ignore_eos=True)]
    assert [e.token for e in events] == expected


@pytest.mark.parametrize("style", ["top-level", "rope_parameters"])
def test_rope_theta_from_either_config_style(tmp_path, style):
    import json

    ref_model = make_tiny_llama(tmp_path / "m", rope_theta=500.0)
    path = tmp_path / "m" / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("rope_theta", None)
    cfg.pop("rope_parameters", None)
    cfg.pop("rope_scaling", None)
    if style == "top-level":  # transformers 4.x
        cfg["rope_theta"] = 500.0
    else:  # transformers 5
        cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": 500.0}
    path.write_text(json.dumps(cfg))
    llm = load(tmp_path / "m")
    ids = list(range(3, 40))
    torch.testing.assert_close(llm.logits(ids), reference_logits(ref_model, [ids])[0], atol=ATOL, rtol=0)
