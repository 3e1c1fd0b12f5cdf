"""Mistral, Mixtral, Gemma, Gemma 2, Gemma 3, Qwen2, Qwen3, Qwen3-MoE and Phi-3: tiny random HF models from safetensors match HF transformers
in float32 — a 24-token batch of 2 through the full forward pass, and 8 greedy steps through the
engine's paged KV cache (tokens and the chosen tokens' log-probabilities)."""

from __future__ import annotations

import pytest
import torch

import mistralrs
from tiny_models import TINY_MAKERS, assert_matches_transformers, engine_greedy as greedy, reference_greedy

pytest.importorskip("transformers")

ATOL = 1e-4
FAMILIES = ["mistral", "mixtral", "gemma", "gemma2", "gemma3", "qwen2", "qwen3", "qwen3moe", "phi3"]
IDS = [[1, *range(40, 63)], [1, *range(100, 123)]]  # 24 tokens each: longer than the windows (8)


def load(family, path, *overrides):
    return mistralrs.load(f"model={family}", f"model.source={path}", "model.dtype=float32", "model.device=cpu",
                          *overrides)


@pytest.fixture(scope="module", params=FAMILIES)
def tiny(request, tmp_path_factory):
    family = request.param
    path = tmp_path_factory.mktemp(family)
    ref = TINY_MAKERS[family](path)
    return family, path, ref


def test_logits_and_greedy_decode_match_transformers(tiny):
    family, path, ref = tiny
    llm = load(family, path)
    assert llm.loaded.architecture == family
    assert_matches_transformers(llm, ref, IDS, atol=ATOL)


def test_detected_from_config_json(tiny):
    """model=llama (the default family) gives way to the family config.json names."""
    family, path, _ = tiny
    llm = load("llama", path)
    assert llm.loaded.architecture == family


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory):
    path = tmp_path_factory.mktemp("mistral-window")
    return path, TINY_MAKERS["mistral"](path)


def test_sliding_window_with_chunked_prefill_and_small_pages(tiny_mistral):
    """Prefill in chunks of 5 over 4-token pages, two sequences at once: still HF's numbers."""
    path, ref = tiny_mistral
    llm = load("mistral", path, "engine.block_size=4", "engine.max_batch_tokens=5")
    want_tokens, want_logprobs = reference_greedy(ref, IDS, 8)
    tokens, logprobs = greedy(llm, IDS)
    assert tokens == want_tokens
    torch.testing.assert_close(logprobs, want_logprobs, atol=ATOL, rtol=0)


def test_tokens_outside_the_window_are_never_attended(tiny_mistral):
    """Two layers of window 8 see 2 * 7 positions back: changing positions 0..8 leaves every later
    logit from position 23 on untouched, in prefill and in paged decoding."""
    path, _ = tiny_mistral
    llm = load("mistral", path, "engine.block_size=4")
    a = IDS[0]
    b = [7, 200, 201, 202, 203, 204, 205, 206, 207, *a[9:]]
    la, lb = llm.logits(a), llm.logits(b)
    torch.testing.assert_close(la[23:], lb[23:], atol=1e-6, rtol=0)
    assert (la[9] - lb[9]).abs().max() > 1e-3  # position 9 still sees them
    tokens, logprobs = greedy(llm, [a, b])
    assert tokens[0] == tokens[1]
    torch.testing.assert_close(logprobs[0], logprobs[1], atol=1e-6, rtol=0)


def test_mixtral_fused_expert_layout(tmp_path):
    """transformers 5 holds experts fused (``mlp.experts.gate_up_proj`` [E, 2I, H], ``down_proj``
    [E, H, I], router ``mlp.gate``); such checkpoints load to the same model."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    classic = tmp_path / "classic"
    ref = TINY_MAKERS["mixtral"](classic)
    fused = tmp_path / "fused"
    shutil.copytree(classic, fused)
    tensors = load_file(fused / "model.safetensors")
    n_layers, n_experts = ref.config.num_hidden_layers, ref.config.num_local_experts
    for i in range(n_layers):
        p = f"model.layers.{i}.block_sparse_moe"
        w = {k: [tensors.pop(f"{p}.experts.{e}.{k}.weight") for e in range(n_experts)] for k in ("w1", "w2", "w3")}
        tensors[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack(
            [torch.cat([g, u]) for g, u in zip(w["w1"], w["w3"])])
        tensors[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack(w["w2"])
        tensors[f"model.layers.{i}.mlp.gate.weight"] = tensors.pop(f"{p}.gate.weight")
    (fused / "model.safetensors").unlink()
    save_file(tensors, fused / "model.safetensors", metadata={"format": "pt"})
    assert json.loads((fused / "config.json").read_text())["architectures"] == ["MixtralForCausalLM"]
    a, b = load("mixtral", classic), load("mixtral", fused)
    torch.testing.assert_close(a.logits(IDS[0]), b.logits(IDS[0]), atol=0, rtol=0)
