"""The Mixtral family: Mistral's loading with experts, from HF or GGUF (merged or per-expert)."""

from __future__ import annotations

from typing import Any, Iterator

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.llama_base.family import ShapeRule
from mistralrs.plugins.mistral.family import MistralFamily

from mistralrs.plugins.mixtral.config import MixtralConfig, mixtral_config_from_gguf, mixtral_config_from_hf
from mistralrs.plugins.mixtral.model import MixtralForCausalLM
from mistralrs.plugins.mixtral.weights import mixtral_gguf_weights, mixtral_hf_weights


class MixtralFamily(MistralFamily):
    name = "mixtral"
    config_class = MixtralConfig
    model_class = MixtralForCausalLM

    config_from_gguf = staticmethod(mixtral_config_from_gguf)
    config_from_hf = staticmethod(mixtral_config_from_hf)

    def shape_rules(self, cfg: MixtralConfig, arch: str | None) -> list[ShapeRule]:
        """Llama's, and the router's and experts' of the first block: the router must be there, as the
        expert count it checks is the number of expert modules built."""
        e, i, h = cfg.num_experts, cfg.intermediate_size, cfg.hidden_size
        if arch is not None:
            p = f"{arch}."
            return [*super().shape_rules(cfg, arch),
                    ShapeRule(("blk.0.ffn_gate_inp.weight",), (e, h), f"{p}expert_count and {p}embedding_length",
                              required=True),
                    ShapeRule(("blk.0.ffn_up_exps.weight",), (e, i, h),
                              f"{p}expert_count, {p}feed_forward_length and {p}embedding_length"),
                    ShapeRule(("blk.0.ffn_up.0.weight",), (i, h), f"{p}feed_forward_length and {p}embedding_length")]
        return [*super().shape_rules(cfg, arch),
                ShapeRule(("model.layers.0.block_sparse_moe.gate.weight", "model.layers.0.mlp.gate.weight"), (e, h),
                          "num_local_experts and hidden_size", required=True),
                ShapeRule(("model.layers.0.block_sparse_moe.experts.0.w3.weight",), (i, h),
                          "intermediate_size and hidden_size"),
                ShapeRule(("model.layers.0.mlp.experts.gate_up_proj",), (e, 2 * i, h),
                          "num_local_experts, intermediate_size and hidden_size")]

    def gguf_weights(self, ckpt: Any, cfg: MixtralConfig) -> Iterator[tuple[str, RawTensor]]:
        return mixtral_gguf_weights(ckpt, cfg)

    def hf_weights(self, ckpt: Any, cfg: MixtralConfig) -> Iterator[tuple[str, RawTensor]]:
        return mixtral_hf_weights(ckpt, cfg)


family = MixtralFamily()
