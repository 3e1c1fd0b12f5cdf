"""The Mistral architecture: Llama whose every attention layer has a sliding window."""

from __future__ import annotations

from mistralrs.plugins.llama.model import LlamaForCausalLM

from .config import MistralConfig


class MistralForCausalLM(LlamaForCausalLM):
    def __init__(self, cfg: MistralConfig):
        super().__init__(cfg)
        for layer in self.model.layers:
            layer.self_attn.window = cfg.sliding_window
