"""Qwen2 and Qwen3: what differs from Llama.

Qwen2 / Qwen2.5 = Llama with biases on the query, key and value projections (not the output one).

Qwen3 = Llama with an RMSNorm over each query and key head before RoPE (as Gemma 3, but with a plain
``weight`` scale) and a head_dim that need not be hidden / heads.

Qwen3-MoE = Qwen3 whose MLPs are sparse mixtures of SwiGLU experts (engine/layers/moe.py), except in
the layers its config keeps dense.
"""

from __future__ import annotations

from mistralrs.engine.layers.linear import Linear
from mistralrs.engine.layers.moe import SparseMoE
from mistralrs.engine.layers.norms import RMSNorm
from mistralrs.engine.llama_base.model import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM

from mistralrs.plugins.qwen.config import Qwen2Config, Qwen3Config, Qwen3MoeConfig


class Qwen2Attention(LlamaAttention):
    def __init__(self, cfg: Qwen2Config, layer: int):
        super().__init__(cfg, layer)  # q/k/v with biases (cfg.attention_bias)
        self.o_proj = Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=False)


class Qwen2DecoderLayer(LlamaDecoderLayer):
    attention = Qwen2Attention


class Qwen2ForCausalLM(LlamaForCausalLM):
    decoder_layer = Qwen2DecoderLayer


class Qwen3Attention(LlamaAttention):
    def __init__(self, cfg: Qwen3Config, layer: int):
        super().__init__(cfg, layer)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset)

    def qkv(self, x):
        q, k, v = super().qkv(x)
        return self.q_norm(q), self.k_norm(k), v


class Qwen3DecoderLayer(LlamaDecoderLayer):
    attention = Qwen3Attention

    def decode_spec(self):
        if not self._computes_as(Qwen3DecoderLayer, Qwen3Attention):
            return None
        attn = self.self_attn
        return self.spec_with_norms(attn_norm=self.input_layernorm, ffn_norm=self.post_attention_layernorm,
                                    q_norm=attn.q_norm, k_norm=attn.k_norm)


class Qwen3ForCausalLM(LlamaForCausalLM):
    decoder_layer = Qwen3DecoderLayer


class Qwen3MoeDecoderLayer(Qwen3DecoderLayer):
    def __init__(self, cfg: Qwen3MoeConfig, layer: int):
        super().__init__(cfg, layer)
        if cfg.is_sparse(layer):
            self.mlp = SparseMoE(cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts, cfg.num_experts_per_tok,
                                 cfg.hidden_act, normalize_top_k=cfg.norm_topk_prob)


class Qwen3MoeForCausalLM(LlamaForCausalLM):
    decoder_layer = Qwen3MoeDecoderLayer
