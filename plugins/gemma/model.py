"""Gemma, Gemma 2 and Gemma 3: what differs from Llama.

Gemma = Llama with GeGLU (tanh GELU) MLPs, RMSNorm scaled by (1 + weight) (config ``hidden_act``
and ``norm_offset``), embeddings multiplied by sqrt(hidden size) in the model dtype, an independent
head_dim and tied embeddings.

Gemma 2 = Gemma with norms before *and after* attention and MLP, local layers (sliding window)
interleaved with global ones, queries scaled by 1/sqrt(query_pre_attn_scalar), and soft-capped
attention and final logits (cap * tanh(x / cap)).

Gemma 3 = Gemma 2 with RMSNorm on each query and key head and the local layers' own RoPE base
(its caps are optional; the released models set none on attention).
"""

from __future__ import annotations

import torch

from mistralrs.engine.layers.norms import RMSNorm
from mistralrs.engine.layers.rope import RotaryEmbedding
from mistralrs.engine.llama_base.model import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM

from mistralrs.plugins.gemma.config import Gemma2Config, Gemma3Config, GemmaConfig


class GemmaForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: GemmaConfig):
        super().__init__(cfg)
        self.embed_scale: torch.Tensor | None = None

    def prepare(self, max_positions: int, device: torch.device, dtype: torch.dtype) -> None:
        super().prepare(max_positions, device, dtype)
        self.embed_scale = torch.tensor(self.config.hidden_size ** 0.5, dtype=dtype, device=device)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids) * self.embed_scale


class Gemma2Attention(LlamaAttention):
    def __init__(self, cfg: Gemma2Config, layer: int):
        super().__init__(cfg, layer)
        self.scale = cfg.query_pre_attn_scalar ** -0.5
        self.softcap = cfg.attn_logit_softcapping
        self.is_local = cfg.local_layers[layer]
        self.window = cfg.sliding_window if self.is_local else None


class Gemma3Attention(Gemma2Attention):
    def __init__(self, cfg: Gemma3Config, layer: int):
        super().__init__(cfg, layer)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps, cfg.norm_offset)

    def qkv(self, x):
        q, k, v = super().qkv(x)
        return self.q_norm(q), self.k_norm(k), v


class Gemma2DecoderLayer(LlamaDecoderLayer):
    """Norms before and after attention and MLP ("sandwich"); local layers take RoPE table 1."""

    attention = Gemma2Attention

    def __init__(self, cfg: Gemma2Config, layer: int):
        super().__init__(cfg, layer)
        self.pre_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.post_feedforward_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.rope_index = 1 if self.self_attn.is_local else 0

    def forward(self, x, rope, cache, batch):
        x = x + self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), rope, cache, batch))
        return x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x)))

    def decode_spec(self):
        # the class's own attention: a subclass with other q/k/v computes something else
        if not self._computes_as(Gemma2DecoderLayer, type(self).attention):
            return None
        attn = self.self_attn
        return self.spec_with_norms(attn_norm=self.input_layernorm, post_attn_norm=self.post_attention_layernorm,
                                    ffn_norm=self.pre_feedforward_layernorm,
                                    post_ffn_norm=self.post_feedforward_layernorm,
                                    q_norm=getattr(attn, "q_norm", None), k_norm=getattr(attn, "k_norm", None))


class Gemma3DecoderLayer(Gemma2DecoderLayer):
    attention = Gemma3Attention


class Gemma2ForCausalLM(GemmaForCausalLM):
    decoder_layer = Gemma2DecoderLayer

    def __init__(self, cfg: Gemma2Config):
        super().__init__(cfg)
        self.local_rotary: RotaryEmbedding | None = None

    def prepare(self, max_positions: int, device: torch.device, dtype: torch.dtype) -> None:
        super().prepare(max_positions, device, dtype)  # global layers' RoPE
        local = self.config.local_rope
        self.local_rotary = self.rotary if local is None else RotaryEmbedding(local, max_positions, device, dtype)

    def rope_tables(self, batch):
        glob = self.rotary.tables(batch.positions)
        return [glob, glob if self.local_rotary is self.rotary else self.local_rotary.tables(batch.positions)]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = super().logits(hidden)
        cap = self.config.final_logit_softcapping
        return torch.tanh(logits / cap) * cap if cap else logits


class Gemma3ForCausalLM(Gemma2ForCausalLM):
    decoder_layer = Gemma3DecoderLayer
