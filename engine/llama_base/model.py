"""The Llama architecture: pre-norm decoder blocks of GQA attention with RoPE and a SwiGLU MLP.

The Llama-shaped families (Mistral, Mixtral, Gemma, Gemma 3) subclass these classes and override
only what differs: ``LlamaAttention.qkv`` (e.g. Q/K norms), ``window`` / ``scale`` / ``softcap``,
``LlamaDecoderLayer.make_mlp`` (e.g. a mixture of experts), ``LlamaForCausalLM.decoder_layer``,
``embed`` and ``logits``.
"""

from __future__ import annotations

import torch
from torch import nn

from mistralrs.engine.core.batch import AttentionBatch
from mistralrs.engine.core.kv_cache import KVCache, KVCacheSpec
from mistralrs.engine.layers.attention import cached_attention
from mistralrs.engine.layers.decode_stack import DecodeLayerSpec, DecodePlan
from mistralrs.engine.layers.linear import Embedding, Linear, LinearGroup
from mistralrs.engine.layers.mlp import GatedMLP
from mistralrs.engine.layers.moe import SparseMoE
from mistralrs.engine.layers.norms import RMSNorm
from mistralrs.engine.layers.rope import RotaryEmbedding, apply_rope_

from mistralrs.engine.llama_base.config import LlamaConfig

Rope = tuple[torch.Tensor, torch.Tensor]  # cos, sin tables for the step's positions


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = Linear(cfg.hidden_size, cfg.num_heads * cfg.head_dim, bias=bias)
        self.k_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=bias)
        self.v_proj = Linear(cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, bias=bias)
        self.o_proj = Linear(cfg.num_heads * cfg.head_dim, cfg.hidden_size, bias=bias)
        self.qkv_proj = LinearGroup(self, "q_proj", "k_proj", "v_proj")
        self.window: int | None = None  # sliding-window layers attend to this many positions (self included)
        self.scale: float | None = None  # query scaling; None is 1/sqrt(head_dim)
        self.softcap: float | None = None  # attention logit soft-capping (Gemma 2)

    def qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-head queries, keys and values [T, heads, head_dim] before RoPE."""
        t = x.shape[0]
        q, k, v = self.qkv_proj(x)  # one kernel call when the weights allow it
        q = q.view(t, self.num_heads, self.head_dim)
        k = k.view(t, self.num_kv_heads, self.head_dim)
        v = v.view(t, self.num_kv_heads, self.head_dim)
        return q, k, v

    def forward(self, x, rope: Rope, cache: KVCache, batch: AttentionBatch):
        q, k, v = self.qkv(x)
        q, k = apply_rope_(q, *rope), apply_rope_(k, *rope)  # fresh projections: rotate in place
        o = cached_attention(q, k, v, cache, self.layer, batch, scale=self.scale, window=self.window,
                             softcap=self.softcap)
        return self.o_proj(o.reshape(x.shape[0], -1))


class LlamaDecoderLayer(nn.Module):
    attention = LlamaAttention
    rope_index = 0  # which of the model's RoPE tables (``rope_tables``) this layer uses

    def __init__(self, cfg: LlamaConfig, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.self_attn = self.attention(cfg, layer)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)
        self.mlp = self.make_mlp(cfg)

    def make_mlp(self, cfg: LlamaConfig) -> nn.Module:
        return GatedMLP(cfg.hidden_size, cfg.intermediate_size, cfg.hidden_act, cfg.mlp_bias)

    def forward(self, x, rope: Rope, cache: KVCache, batch: AttentionBatch):
        x = x + self.self_attn(self.input_layernorm(x), rope, cache, batch)
        return x + self.mlp(self.post_attention_layernorm(x))

    def decode_spec(self) -> DecodeLayerSpec | None:
        """This layer for the native decode stack, or None when it computes something else (a
        subclass with its own forward or q/k/v, an MLP other than gated or a sparse mixture)."""
        if not self._computes_as(LlamaDecoderLayer, LlamaAttention):
            return None
        return self.spec_with_norms(attn_norm=self.input_layernorm, ffn_norm=self.post_attention_layernorm)

    def _computes_as(self, layer_cls: type, attention_cls: type) -> bool:
        attn = self.self_attn
        return (type(self).forward is layer_cls.forward and type(attn).forward is LlamaAttention.forward
                and type(attn).qkv is attention_cls.qkv and type(self.mlp) in (GatedMLP, SparseMoE))

    def spec_with_norms(self, **norms) -> DecodeLayerSpec:
        attn, mlp = self.self_attn, self.mlp
        if type(mlp) is SparseMoE:  # the experts' MLPs, all alike: the first says the activation
            ffn = dict(gate_up=None, down=None, moe=mlp, activation=mlp.experts[0].activation)
        else:
            ffn = dict(gate_up=mlp.gate_up, down=mlp.down_proj, activation=mlp.activation)
        return DecodeLayerSpec(qkv=attn.qkv_proj, o=attn.o_proj, heads=attn.num_heads, kv_heads=attn.num_kv_heads,
                               head_dim=attn.head_dim, scale=attn.scale if attn.scale is not None else attn.head_dim ** -0.5,
                               window=attn.window, softcap=attn.softcap, rope=self.rope_index, **ffn, **norms)


class LlamaModel(nn.Module):
    def __init__(self, cfg: LlamaConfig, decoder_layer: type[nn.Module] = LlamaDecoderLayer):
        super().__init__()
        self.embed_tokens = Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(decoder_layer(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.norm_offset)


class LlamaForCausalLM(nn.Module):
    """The ``CausalLM`` contract (registry/interfaces.py) for every Llama-shaped family:
    forward(ids, batch, cache) -> final normed hidden states [T, hidden]; logits(hidden) -> [N, vocab]."""

    decoder_layer: type[nn.Module] = LlamaDecoderLayer
    num_kv_caches = 1
    adapter_info: dict | None = None  # set by an adapter applied in place (LoRA)

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.config = cfg
        self.model = LlamaModel(cfg, self.decoder_layer)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.rotary: RotaryEmbedding | None = None
        self.decode_plan = DecodePlan(self)  # every layer's decode step in one native call, when they allow

    def cache_spec(self) -> KVCacheSpec:
        c = self.config
        return KVCacheSpec(c.num_layers, c.num_kv_heads, c.head_dim)

    def prepare(self, max_positions: int, device: torch.device, dtype: torch.dtype) -> None:
        """Build what is not a checkpoint tensor (RoPE tables) once weights are on the device."""
        self.rotary = RotaryEmbedding(self.config.rope, max_positions, device, dtype)

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.embed_tokens(input_ids)

    def rope_tables(self, batch: AttentionBatch) -> list[Rope]:
        """The step's RoPE tables (cos, sin), computed once per step; each layer's ``rope_index`` picks one."""
        return [self.rotary.tables(batch.positions)]

    def forward(self, input_ids: torch.Tensor, batch: AttentionBatch, cache: KVCache) -> torch.Tensor:
        assert self.rotary is not None, "call prepare() after loading weights"
        x = self.embed(input_ids)
        ropes = self.rope_tables(batch)
        stack = self.decode_plan.stack() if batch.decode is not None else None
        out = stack(x, ropes, cache, batch) if stack is not None else None
        if out is None:
            for layer in self.model.layers:
                x = layer(x, ropes[layer.rope_index], cache, batch)
        return self.model.norm(x if out is None else out)

    def step(self, input_ids: torch.Tensor, batches: list[AttentionBatch], cache: KVCache, seqs=None) -> torch.Tensor:
        """The engine's call: one KV cache, so one batch; no per-sequence state."""
        (batch,) = batches
        return self(input_ids, batch, cache)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()
