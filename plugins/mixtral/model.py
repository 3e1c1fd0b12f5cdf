"""The Mixtral architecture: Mistral whose MLPs are sparse mixtures of SwiGLU experts."""

from __future__ import annotations

from mistralrs.engine.layers.moe import SparseMoE
from mistralrs.engine.llama_base.model import LlamaDecoderLayer
from mistralrs.plugins.mistral.model import MistralForCausalLM

from mistralrs.plugins.mixtral.config import MixtralConfig


class MixtralDecoderLayer(LlamaDecoderLayer):
    def make_mlp(self, cfg: MixtralConfig) -> SparseMoE:
        return SparseMoE(cfg.hidden_size, cfg.intermediate_size, cfg.num_experts, cfg.num_experts_per_tok,
                         cfg.hidden_act, cfg.mlp_bias)


class MixtralForCausalLM(MistralForCausalLM):
    decoder_layer = MixtralDecoderLayer
