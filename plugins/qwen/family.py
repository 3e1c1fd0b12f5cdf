"""The Qwen2 and Qwen3 families: Llama's loading with Qwen's configs, modules and names."""

from __future__ import annotations

from typing import Any, Iterator

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.llama_base.expert_weights import gguf_expert_tensors, hf_fused_expert_tensors
from mistralrs.engine.llama_base.family import LlamaFamily, ShapeRule
from mistralrs.engine.llama_base.weights import gguf_weights, hf_weights

from mistralrs.plugins.qwen.config import (
    Qwen2Config,
    Qwen3Config,
    Qwen3MoeConfig,
    qwen2_config_from_gguf,
    qwen2_config_from_hf,
    qwen3_config_from_gguf,
    qwen3_config_from_hf,
    qwen3moe_config_from_gguf,
    qwen3moe_config_from_hf,
)
from mistralrs.plugins.qwen.model import Qwen2ForCausalLM, Qwen3ForCausalLM, Qwen3MoeForCausalLM
from mistralrs.plugins.qwen.weights import GGUF_QWEN2_BLOCK_NAMES, GGUF_QWEN3_BLOCK_NAMES, GGUF_QWEN3MOE_BLOCK_NAMES


class Qwen2Family(LlamaFamily):
    name = "qwen2"
    config_class = Qwen2Config
    model_class = Qwen2ForCausalLM
    gguf_block_names = GGUF_QWEN2_BLOCK_NAMES
    gguf_unpermute_rope = False

    config_from_gguf = staticmethod(qwen2_config_from_gguf)
    config_from_hf = staticmethod(qwen2_config_from_hf)


class Qwen3Family(LlamaFamily):
    name = "qwen3"
    config_class = Qwen3Config
    model_class = Qwen3ForCausalLM
    gguf_block_names = GGUF_QWEN3_BLOCK_NAMES
    gguf_unpermute_rope = False

    config_from_gguf = staticmethod(qwen3_config_from_gguf)
    config_from_hf = staticmethod(qwen3_config_from_hf)


class Qwen3MoeFamily(Qwen3Family):
    name = "qwen3moe"
    config_class = Qwen3MoeConfig
    model_class = Qwen3MoeForCausalLM
    gguf_block_names = GGUF_QWEN3MOE_BLOCK_NAMES

    config_from_gguf = staticmethod(qwen3moe_config_from_gguf)
    config_from_hf = staticmethod(qwen3moe_config_from_hf)

    def shape_rules(self, cfg: Qwen3MoeConfig, arch: str | None) -> list[ShapeRule]:
        """Llama's (their MLP rule only where layer 0 is dense), and the first sparse layer's router
        and experts: the router must be there, as the expert count it checks is what gets built."""
        dense_mlp = ("ffn_up.weight", "mlp.up_proj.weight")
        rules = [r for r in super().shape_rules(cfg, arch) if not (cfg.is_sparse(0) and r.names[0].endswith(dense_mlp))]
        sparse = next((i for i in range(cfg.num_layers) if cfg.is_sparse(i)), None)
        if sparse is None:
            return rules
        e, i, h = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
        if arch is not None:
            p = f"{arch}."
            return [*rules,
                    ShapeRule((f"blk.{sparse}.ffn_gate_inp.weight",), (e, h), f"{p}expert_count and {p}embedding_length",
                              required=True),
                    ShapeRule((f"blk.{sparse}.ffn_up_exps.weight",), (e, i, h),
                              f"{p}expert_count, {p}expert_feed_forward_length and {p}embedding_length")]
        return [*rules,
                ShapeRule((f"model.layers.{sparse}.mlp.gate.weight",), (e, h), "num_experts and hidden_size", required=True),
                ShapeRule((f"model.layers.{sparse}.mlp.experts.0.up_proj.weight",), (i, h),
                          "moe_intermediate_size and hidden_size"),
                ShapeRule((f"model.layers.{sparse}.mlp.experts.gate_up_proj",), (e, 2 * i, h),
                          "num_experts, moe_intermediate_size and hidden_size")]

    def gguf_weights(self, ckpt: Any, cfg: Qwen3MoeConfig) -> Iterator[tuple[str, RawTensor]]:
        for name, raw in gguf_weights(ckpt, cfg, unpermute_rope=False, block_names=self.gguf_block_names):
            experts = gguf_expert_tensors(name, raw)
            yield from experts if experts is not None else [(name, raw)]

    def hf_weights(self, ckpt: Any, cfg: Qwen3MoeConfig) -> Iterator[tuple[str, RawTensor]]:
        for name, raw in hf_weights(ckpt):
            fused = hf_fused_expert_tensors(name, raw, cfg.moe_intermediate_size)
            yield from fused if fused is not None else [(name, raw)]


qwen2 = Qwen2Family()
qwen3 = Qwen3Family()
qwen3moe = Qwen3MoeFamily()
