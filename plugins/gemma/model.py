"""Gemma and Gemma 3: what differs from Llama.

Gemma = Llama with GeGLU (tanh GELU) MLPs, RMSNorm scaled by (1 + weight) (config ``hidden_act``
and ``norm_offset``), embeddings multiplied by sqrt(hidden size) in the model dtype, an independent
head_dim and tied embeddings.

Gemma 3 = Gemma with RMSNorm on each query and key head, norms before *and after* attention and MLP,
local layers (sliding window, their own RoPE base) interleaved with global ones, queries scaled by
1/sqrt(query_pre_attn_scalar), and optionally soft-capped final logits.
"""

from __future__ import annotations

import torch

from mistralrs.engine.layers.norms import RMSNorm
from mistralrs.engine.layers.rope import RotaryEmbedding
from mistralrs.engine.llama_base.model import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM

from mistralrs.plugins.gemma.config import Gemma3Config, GemmaConfig


class GemmaForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: GemmaConfig):
        super().__init__(cfg)
        self.embed_scale: torch.Tensor | None = None

    def prepare(self, max_positions: int, device: torch.device, dtype: torch.dtype) -> None:
        super().prepare(max_positions, device, dtype)
        self.embed_scale = torch.tensor(self.config.hidden_size ** 0.5, dtype=dtype, device=device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids) * self.embed_scale


class Gemma3Attention(LlamaAttention):
    def __init__(self, cfg: Gemma3Config, layer: int):
        super().__init__(cfg, layer)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset)
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.is_local = cfg.local_layers[layer]
        self.window = cfg.sliding_window if self.is_local else None

    def qkv(self, x):
        q, k, v = super().qkv(x)
        return self.q_norm(q), self.k_norm(k), v


class Gemma3DecoderLayer(LlamaDecoderLayer):
    attention = Gemma3Attention

    def __init__(self, cfg: Gemma3Config, layer: int):
        super().__init__(cfg, layer)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.rope_index = 1 if self.self_attn.is_local else 0  # local layers: their own RoPE base

    def forward(self, x, rope, cache, batch):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, cache, batch))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))

    def decode_spec(self):
        if not self._computes_as(Gemma3DecoderLayer, Gemma3Attention):
            return None
        attn = self.self_attn
        return self.spec_with_norms(attn_norm=self.input_layernorm, post_attn_norm=self.post_attention_layernorm,
                                    ffn_norm=self.pre_feedforward_layernorm,
                                    post_ffn_norm=self.post_feedforward_layernorm, q_norm=attn.q_norm, k_norm=attn.k_norm)


class Gemma3ForCausalLM(GemmaForCausalLM):
    decoder_layer = Gemma3DecoderLayer

    def __init__(self, cfg: Gemma3Config):
        super().__init__(cfg)
        self.local_rotary: RotaryEmbedding | None = None

    def prepare(self, max_positions: int, device: torch.device, dtype: torch.dtype) -> None:
        super().prepare(max_positions, device, dtype)  # global layers' RoPE
        self.local_rotary = RotaryEmbedding(self.config.local_rope, max_positions, device, dtype)

    def rope_tables(self, batch):
        return [self.rotary.tables(batch.positions), self.local_rotary.tables(batch.positions)]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().logits(hidden)
        cap = self.config.final_logit_softcapping
        return torch.tanh(logits / cap) * cap if cap else logits
