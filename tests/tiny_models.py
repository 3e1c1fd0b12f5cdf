"""Tiny random HF models for numerics tests, made by transformers itself (the reference)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

BYTE_VOCAB = 256 + 3  # <unk>, <s>, </s> + one token per byte


def write_byte_tokenizer(path: Path, chat_template: str | None = None, vocab_size: int = BYTE_VOCAB) -> None:
    """A byte-level BPE tokenizer with no merges: ids 3.. are the 256 byte symbols (a smaller
    ``vocab_size`` drops the last ones, which then read as <unk>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    alphabet = ByteLevel.alphabet()
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(alphabet)[: vocab_size - len(vocab)]:
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.save(str(path / "tokenizer.json"))
    config = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True}
    if chat_template:
        config["chat_template"] = chat_template
    (path / "tokenizer_config.json").write_text(json.dumps(config))


def _make_tiny(path: Path, config_cls, model_cls, settings: dict, seed: int,
               weight_scales: dict[str, float] | None = None) -> "torch.nn.Module":
    """``weight_scales``: parameters whose name contains a key are multiplied by its value."""
    torch.manual_seed(seed)
    model = model_cls(config_cls(**settings, attn_implementation="eager")).eval()
    with torch.no_grad():  # random init leaves norms at 1 (Gemma: 0) and biases at 0; perturb them so a
        for name, p in model.named_parameters():  # missed norm or bias shows
            if "norm" in name or name.endswith(".bias"):
                p.add_(torch.randn_like(p) * 0.1)
            for key, factor in (weight_scales or {}).items():
                if key in name:
                    p.mul_(factor)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    write_byte_tokenizer(path)
    return model


def _llama_like(**overrides) -> dict:
    settings = dict(
        vocab_size=BYTE_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
        rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False,
        bos_token_id=1, eos_token_id=2,
    )
    settings.update(overrides)
    return settings


def make_tiny_llama(path: Path, seed: int = 0, **overrides) -> "torch.nn.Module":
    from transformers import LlamaConfig, LlamaForCausalLM

    return _make_tiny(path, LlamaConfig, LlamaForCausalLM, _llama_like(**overrides), seed)


def make_tiny_mistral(path: Path, seed: int = 1, **overrides) -> "torch.nn.Module":
    """Sliding window 8, smaller than the 24-token test prompts."""
    from transformers import MistralConfig, MistralForCausalLM

    return _make_tiny(path, MistralConfig, MistralForCausalLM, _llama_like(**{"sliding_window": 8, **overrides}), seed)


def make_tiny_mixtral(path: Path, seed: int = 2, **overrides) -> "torch.nn.Module":
    """4 experts, top-2."""
    from transformers import MixtralConfig, MixtralForCausalLM

    settings = _llama_like(**{"intermediate_size": 64, "num_local_experts": 4, "num_experts_per_tok": 2,
                              "sliding_window": None, "router_jitter_noise": 0.0, **overrides})
    return _make_tiny(path, MixtralConfig, MixtralForCausalLM, settings, seed)


def make_tiny_gemma(path: Path, seed: int = 3, **overrides) -> "torch.nn.Module":
    """head_dim 24, independent of hidden 64 / 4 heads; tied embeddings; weights initialized large
    enough (std 0.3) that greedy decoding does not just repeat the last token."""
    from transformers import GemmaConfig, GemmaForCausalLM

    settings = _llama_like(head_dim=24, hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True, rms_norm_eps=1e-6,
                           pad_token_id=0, initializer_range=0.3)
    settings.update(overrides)
    return _make_tiny(path, GemmaConfig, GemmaForCausalLM, settings, seed)


def make_tiny_gemma3(path: Path, seed: int = 4, **overrides) -> "torch.nn.Module":
    """6 layers (five local with window 8, then one global), head_dim 32 != hidden / heads, queries
    scaled by 1/sqrt(24), logits soft-capped at 1.0 so the cap shows."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    settings = dict(
        vocab_size=BYTE_VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=6,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        rms_norm_eps=1e-6, sliding_window=8, query_pre_attn_scalar=24, final_logit_softcapping=1.0,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        rope_parameters={"full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0}},
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    settings.update(overrides)
    return _make_tiny(path, Gemma3TextConfig, Gemma3ForCausalLM, settings, seed)


def make_tiny_gemma2(path: Path, seed: int = 9, **overrides) -> "torch.nn.Module":
    """4 layers alternating local (window 8) and global, starting local; head_dim 32 != hidden / heads,
    queries scaled by 1/sqrt(24); q/k weights 6x the rest, so attention scores reach several units
    and their soft cap at 2.0 shows, and final logits capped at 1.0 (they reach about 0.6)."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    settings = dict(
        vocab_size=BYTE_VOCAB, hidden_size=64, intermediate_size=64, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=256,
        rms_norm_eps=1e-6, sliding_window=8, query_pre_attn_scalar=24, attn_logit_softcapping=2.0,
        final_logit_softcapping=1.0, hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    settings.update(overrides)
    return _make_tiny(path, Gemma2Config, Gemma2ForCausalLM, settings, seed,
                      weight_scales={"q_proj": 6.0, "k_proj": 6.0})


def make_tiny_qwen2(path: Path, seed: int = 5, **overrides) -> "torch.nn.Module":
    """Biases on q/k/v (perturbed by _make_tiny so they show), none on o; tied embeddings."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    settings = _llama_like(tie_word_embeddings=True, use_sliding_window=False)
    settings.update(overrides)
    return _make_tiny(path, Qwen2Config, Qwen2ForCausalLM, settings, seed)


def make_tiny_qwen3(path: Path, seed: int = 6, **overrides) -> "torch.nn.Module":
    """head_dim 32 != hidden 64 / 4 heads; RMSNorm on each q and k head; no biases."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    settings = _llama_like(head_dim=32, attention_bias=False, use_sliding_window=False, rms_norm_eps=1e-6)
    settings.update(overrides)
    return _make_tiny(path, Qwen3Config, Qwen3ForCausalLM, settings, seed)


def make_tiny_qwen3moe(path: Path, seed: int = 7, **overrides) -> "torch.nn.Module":
    """Qwen3 with 4 experts of 32, top-2 without renormalizing (norm_topk_prob false, so the plain
    softmax weights show) in layer 1; layer 0 keeps a dense MLP (mlp_only_layers)."""
    from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

    settings = _llama_like(head_dim=32, attention_bias=False, use_sliding_window=False, rms_norm_eps=1e-6,
                           num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, norm_topk_prob=False,
                           decoder_sparse_step=1, mlp_only_layers=[0], router_aux_loss_coef=0.0)
    settings.update(overrides)
    return _make_tiny(path, Qwen3MoeConfig, Qwen3MoeForCausalLM, settings, seed)


# LongRoPE factor sets of the tiny Phi-3 (6 = rotary dims 12 / 2): far apart, so a wrong choice shows
PHI3_SHORT_FACTORS = [1.0, 1.05, 1.2, 1.5, 1.9, 2.4]
PHI3_LONG_FACTORS = [1.0, 1.5, 3.0, 6.0, 10.0, 16.0]


def make_tiny_phi3(path: Path, seed: int = 8, **overrides) -> "torch.nn.Module":
    """Phi-4-mini-shaped: fused qkv_proj and gate_up_proj, tied embeddings, rotary over 0.75 of each
    16-dim head, LongRoPE with an original context of 16 (so 24-token prompts take the long factors
    and an attention factor of sqrt(2)), and a sliding window of 8; weights initialized large enough
    (std 0.2) that greedy decoding does not just repeat the last token."""
    from transformers import Phi3Config, Phi3ForCausalLM

    settings = _llama_like(tie_word_embeddings=True, sliding_window=8, original_max_position_embeddings=16,
                           pad_token_id=0, initializer_range=0.2, rope_parameters={
                               "rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
                               "short_factor": PHI3_SHORT_FACTORS, "long_factor": PHI3_LONG_FACTORS})
    settings.update(overrides)
    return _make_tiny(path, Phi3Config, Phi3ForCausalLM, settings, seed)


TINY_MAKERS = {
    "llama": make_tiny_llama,
    "mistral": make_tiny_mistral,
    "mixtral": make_tiny_mixtral,
    "gemma": make_tiny_gemma,
    "gemma2": make_tiny_gemma2,
    "gemma3": make_tiny_gemma3,
    "qwen2": make_tiny_qwen2,
    "qwen3": make_tiny_qwen3,
    "phi3": make_tiny_phi3,
    "qwen3moe": make_tiny_qwen3moe,
}


def reference_logits(model, ids: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float()


def reference_greedy(model, ids: list[list[int]], steps: int) -> tuple[list[list[int]], torch.Tensor]:
    """Greedy continuation of equal-length prompts with HF's KV cache: (tokens [B][steps], the
    chosen tokens' log-probabilities [B, steps])."""
    with torch.no_grad():
        out = model.generate(torch.tensor(ids), max_new_tokens=steps, do_sample=False, eos_token_id=None,
                             pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    tokens = out.sequences[:, len(ids[0]):]
    logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)  # [B, steps, vocab]
    return tokens.tolist(), logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def engine_greedy(llm, prompts: list[list[int]], steps: int = 8) -> tuple[list[list[int]], torch.Tensor]:
    """The same through the engine (paged KV cache, all prompts batched): (tokens, log-probabilities)."""
    tokens: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]
    for i, e in llm.run(prompts, max_tokens=steps, temperature=0.0, ignore_eos=True, logprobs=0):
        tokens[i].append(e.token)
        logprobs[i].append(e.logprob.logprob)
    return tokens, torch.tensor(logprobs)


def assert_matches_transformers(llm, ref, ids: list[list[int]], steps: int = 8, atol: float = 1e-4) -> None:
    """``llm`` (float32) against the transformers model ``ref``: full-forward logits of each prompt, and
    greedy decoding through the engine (tokens and their log-probabilities)."""
    expected = reference_logits(ref, ids)
    for row, seq in enumerate(ids):
        torch.testing.assert_close(llm.logits(seq), expected[row], atol=atol, rtol=0)
    want_tokens, want_logprobs = reference_greedy(ref, ids, steps)
    tokens, logprobs = engine_greedy(llm, ids, steps)
    assert tokens == want_tokens
    torch.testing.assert_close(logprobs, want_logprobs, atol=atol, rtol=0)


def rewrite_gguf(src: Path, dst: Path, tensors, metadata: dict | None = None) -> None:
    """Copy ``src``'s metadata to ``dst``; ``tensors(reader_tensor)`` yields (name, array, raw_dtype,
    raw_shape), raw_shape None for the array's own shape. ``metadata``: keys added or replaced (str,
    float32 or uint32 values)."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    reader = GGUFReader(src)
    writer = GGUFWriter(dst, arch=reader.fields["general.architecture"].contents())
    extra = metadata or {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in extra:
            continue
        vtype = field.types[0]
        sub_type = field.types[1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub_type)
    for key, value in extra.items():
        vtype = {str: GGUFValueType.STRING, float: GGUFValueType.FLOAT32}.get(type(value), GGUFValueType.UINT32)
        writer.add_key_value(key, value, vtype)
    for t in reader.tensors:
        for name, data, raw_dtype, raw_shape in tensors(t):
            writer.add_tensor(name, data, raw_shape=raw_shape, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
