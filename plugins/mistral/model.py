"""The Mistral architecture: Llama whose every attention layer has a sliding window."""

from __future__ import annotations

from mistralrs.engine.llama_base.model import LlamaForCausalLM

from mistralrs.plugins.mistral.config import MistralConfig


class MistralForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: MistralConfig):
        super().__init__(cfg)
        for layer in self.model.layers:
            layer.self_attn.window = cfg.sliding_window
