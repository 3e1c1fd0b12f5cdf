"""The tiny models of test_families_hf.py converted to GGUF by llama.cpp's own converter
(tests/fixtures/make_tiny_ggufs.py; files and HF transformers' float32 outputs in tests/data/tiny)
load through the GGUF path and match transformers too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mistralrs
from mistralrs.conf.schema import ModelConfig
from mistralrs.engine.loading.loader import open_checkpoint
from mistralrs.registry import registries
from tiny_models import engine_greedy, rewrite_gguf

TINY = Path(__file__).parent / "data" / "tiny"
ATOL = 1e-4


def load(family: str, path: Path, *overrides: str):
    return mistralrs.load(f"model={family}", f"model.source={path}", "model.dtype=float32", "model.device=cpu",
                          *overrides)


def reference(family: str) -> dict[str, np.ndarray]:
    return dict(np.load(TINY / f"{family}.reference.npz"))


def assert_matches(llm, ref: dict[str, np.ndarray], suffix: str = "") -> None:
    ids = ref.get(f"ids{suffix}", ref["ids"]).tolist()
    for row, seq in enumerate(ids):
        torch.testing.assert_close(llm.logits(seq), torch.from_numpy(ref[f"logits{suffix}"][row]), atol=ATOL, rtol=0)
    tokens, logprobs = engine_greedy(llm, ids)
    assert tokens == ref[f"greedy{suffix}"].tolist()
    torch.testing.assert_close(logprobs, torch.from_numpy(ref[f"greedy_logprobs{suffix}"]), atol=ATOL, rtol=0)


@pytest.mark.parametrize("family", ["mixtral", "gemma", "gemma2", "gemma3", "qwen2", "qwen3", "qwen3moe", "phi3"])
def test_gguf_matches_transformers(family):
    llm = load(family, TINY / f"{family}.gguf")
    assert llm.loaded.architecture == family
    assert llm.loaded.checkpoint.format == "gguf"
    assert_matches(llm, reference(family))


def test_mistral_gguf_runs_full_attention_without_a_window():
    """The converter writes Mistral as 'llama' and drops sliding_window: full attention, as llama.cpp."""
    llm = load("mistral", TINY / "mistral.gguf")
    assert llm.loaded.checkpoint.metadata["general.architecture"] == "llama"
    assert llm.loaded.config.sliding_window is None
    assert_matches(llm, reference("mistral"), "_full")


def test_mistral_gguf_with_model_sliding_window_matches_the_windowed_model():
    llm = load("mistral", TINY / "mistral.gguf", "model.sliding_window=8")
    assert llm.loaded.config.sliding_window == 8
    assert_matches(llm, reference("mistral"))


def test_plain_llama_family_reads_a_mistral_gguf():
    llm = load("llama", TINY / "mistral.gguf")
    assert llm.loaded.architecture == "llama"
    assert_matches(llm, reference("mistral"), "_full")


def test_phi3_gguf_longrope_short_factors_and_window():
    """llama.cpp's converter writes Phi-3's LongRoPE factor sets as ``rope_factors_short/long`` tensors
    with ``rope.scaling.attn_factor`` (sqrt(1 + ln(256 / 16) / ln 16) = sqrt 2) and no scaling type, and
    the window as ``phi3.attention.sliding_window``. Within the original context (model.max_seq_len=16)
    the short factors run and match transformers on 12-token prompts (the parametrized test above runs
    the long ones past it); llama.cpp chooses the set by the same rule, its per-sequence context
    against ``rope.scaling.original_context_length``. Its runtime turns Phi-3's window off (full
    attention); transformers applies it, and so does this engine: without it the reference is missed."""
    llm = load("phi3", TINY / "phi3.gguf", "model.max_seq_len=16")
    cfg = llm.loaded.config
    assert (cfg.sliding_window, cfg.tie_word_embeddings, cfg.rope.dim, cfg.rope.scaling) == (8, True, 12, "longrope")
    assert cfg.rope.attention_factor == pytest.approx(2 ** 0.5)
    ref = reference("phi3")
    assert_matches(llm, ref, "_short")
    unwindowed = load("phi3", TINY / "phi3.gguf", "model.sliding_window=64")
    ids = ref["ids"][0].tolist()
    assert (unwindowed.logits(ids) - torch.from_numpy(ref["logits"][0])).abs().max() > 1e-2


def test_configure_applies_or_refuses_sliding_window():
    regs = registries()
    mistral = regs.architectures.get("mistral").load()
    llama = regs.architectures.get("llama").load()
    ckpt = open_checkpoint(TINY / "mistral.gguf", regs)
    cfg = mistral.configure(mistral.config(ckpt), ModelConfig(sliding_window=8))
    assert cfg.sliding_window == 8
    assert mistral.configure(mistral.config(ckpt), ModelConfig()).sliding_window is None
    with pytest.raises(ValueError, match="sliding-window"):
        llama.configure(llama.config(ckpt), ModelConfig(sliding_window=8))


def test_gguf_llama_with_experts_is_handed_to_mixtral():
    """A Mixtral GGUF says general.architecture=llama; the llama family hands it over."""
    from mistralrs.plugins.mixtral.model import MixtralForCausalLM

    llm = load("llama", TINY / "mixtral.gguf")
    assert isinstance(llm.loaded.model, MixtralForCausalLM)
    assert llm.loaded.config.num_experts == 4 and llm.loaded.config.num_experts_per_tok == 2
    assert_matches(llm, reference("mixtral"))


# --- Mixtral expert layouts ----------------------------------------------------------------------
def expert_tensors(per_expert: bool, quantize: bool):
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize as gguf_quantize

    def convert(t):
        data = np.array(t.data)
        if "_exps." not in t.name:
            yield t.name, data, None, None
            return
        q = GGMLQuantizationType.Q8_0 if quantize else None

        def stored(a):
            return gguf_quantize(a.astype(np.float32), q) if quantize else a

        if not per_expert:
            yield t.name, stored(data), q, None
            return
        stem = t.name.replace("_exps.weight", "")  # blk.{i}.ffn_gate
        for e in range(data.shape[0]):
            yield f"{stem}.{e}.weight", stored(data[e]), q, None

    return convert


def test_mixtral_gguf_older_per_expert_layout(tmp_path):
    path = tmp_path / "mixtral-per-expert.gguf"
    rewrite_gguf(TINY / "mixtral.gguf", path, expert_tensors(per_expert=True, quantize=False))
    ckpt = open_checkpoint(path, registries())
    assert "blk.0.ffn_gate.3.weight" in ckpt.tensor_names() and "blk.0.ffn_gate_exps.weight" not in ckpt.tensor_names()
    assert_matches(load("mixtral", path), reference("mixtral"))


def test_mixtral_quantized_experts_split_losslessly(tmp_path):
    """Q8_0 experts stored merged (3-D, split into whole block rows at load) or per expert load the
    same weights; and the model still follows the float reference closely."""
    merged, split = tmp_path / "merged-q8.gguf", tmp_path / "split-q8.gguf"
    rewrite_gguf(TINY / "mixtral.gguf", merged, expert_tensors(per_expert=False, quantize=True))
    rewrite_gguf(TINY / "mixtral.gguf", split, expert_tensors(per_expert=True, quantize=True))
    a, b = load("mixtral", merged), load("mixtral", split)
    assert a.loaded.checkpoint.tensor("blk.1.ffn_down_exps.weight").qtype == "Q8_0"
    for name, p in a.loaded.model.named_parameters():
        torch.testing.assert_close(p, b.loaded.model.get_parameter(name), atol=0, rtol=0)
    ref = reference("mixtral")
    ids = ref["ids"][0].tolist()
    assert (a.logits(ids) - torch.from_numpy(ref["logits"][0])).abs().max() < 0.05


# --- Gemma's chat template ---------------------------------------------------------------------
def test_gemma_gguf_without_template_gets_gemmas():
    from mistralrs.plugins.gemma.chat_template import GEMMA_CHAT_TEMPLATE

    ckpt = open_checkpoint(TINY / "gemma3.gguf", registries())
    assert "tokenizer.chat_template" not in ckpt.metadata
    llm = load("gemma3", TINY / "gemma3.gguf")
    assert llm.tokenizer.chat_template == GEMMA_CHAT_TEMPLATE


def test_gemma_chat_template_renders_gemma_turns():
    from mistralrs.engine.tokenizer.chat_template import ChatTemplateError, render_chat
    from mistralrs.plugins.gemma.chat_template import GEMMA_CHAT_TEMPLATE

    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi! "},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": [{"type": "text", "text": "Sky colour?"}]},
    ]
    text = render_chat(GEMMA_CHAT_TEMPLATE, messages, add_generation_prompt=True, bos_token="<bos>",
                       eos_token="<eos>")
    assert text == (
        "<bos><start_of_turn>user\nBe brief.\n\nHi!<end_of_turn>\n"
        "<start_of_turn>model\nHello.<end_of_turn>\n"
        "<start_of_turn>user\nSky colour?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    with pytest.raises(ChatTemplateError, match="roles"):
        render_chat(GEMMA_CHAT_TEMPLATE, [{"role": "tool", "content": "x"}], bos_token="<bos>", eos_token="<eos>")
