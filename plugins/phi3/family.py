"""The Phi-3 family: Llama's loading with Phi-3's config, window and fused weights."""

from __future__ import annotations

from typing import Any, Iterator

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.llama_base.family import LlamaFamily, ShapeRule

from mistralrs.plugins.phi3.config import Phi3Config, phi3_config_from_gguf, phi3_config_from_hf
from mistralrs.plugins.phi3.model import Phi3ForCausalLM
from mistralrs.plugins.phi3.weights import GGUF_PHI3_BLOCK_NAMES, split_fused


class Phi3Family(LlamaFamily):
    name = "phi3"
    config_class = Phi3Config
    model_class = Phi3ForCausalLM
    gguf_block_names = GGUF_PHI3_BLOCK_NAMES
    gguf_unpermute_rope = False  # llama.cpp runs Phi-3 with NEOX RoPE

    config_from_gguf = staticmethod(phi3_config_from_gguf)
    config_from_hf = staticmethod(phi3_config_from_hf)

    def shape_rules(self, cfg: Phi3Config, arch: str | None) -> list[ShapeRule]:
        """Llama's, with the fused q/k/v and gate/up weights in place of the up projection's."""
        h, hd, inter = cfg.hidden_size, cfg.head_dim, cfg.intermediate_size
        qkv = ((cfg.num_heads + 2 * cfg.num_kv_heads) * hd, h)
        rules = [r for r in super().shape_rules(cfg, arch) if not r.names[0].endswith(("ffn_up.weight", "up_proj.weight"))]
        if arch is not None:
            p = f"{arch}."
            return rules + [
                ShapeRule(("blk.0.attn_qkv.weight",), qkv, f"({p}attention.head_count + 2 x {p}attention.head_count_kv) "
                          f"x {p}attention.key_length and {p}embedding_length"),
                ShapeRule(("blk.0.ffn_up.weight",), (2 * inter, h), f"2 x {p}feed_forward_length and {p}embedding_length"),
            ]
        return rules + [
            ShapeRule(("model.layers.0.self_attn.qkv_proj.weight",), qkv,
                      "(num_attention_heads + 2 x num_key_value_heads) x head_dim and hidden_size"),
            ShapeRule(("model.layers.0.mlp.gate_up_proj.weight",), (2 * inter, h), "2 x intermediate_size and hidden_size"),
        ]

    def gguf_weights(self, ckpt: Any, cfg: Phi3Config) -> Iterator[tuple[str, RawTensor]]:
        return split_fused(super().gguf_weights(ckpt, cfg), cfg)

    def hf_weights(self, ckpt: Any, cfg: Phi3Config) -> Iterator[tuple[str, RawTensor]]:
        return split_fused(super().hf_weights(ckpt, cfg), cfg)


phi3 = Phi3Family()
