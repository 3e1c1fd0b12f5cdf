"""The Mistral family: Llama's loading, Mistral's config and module."""

from __future__ import annotations

from mistralrs.engine.llama_base.family import LlamaFamily

from mistralrs.plugins.mistral.config import MistralConfig, mistral_config_from_gguf, mistral_config_from_hf
from mistralrs.plugins.mistral.model import MistralForCausalLM


class MistralFamily(LlamaFamily):
    name = "mistral"
    config_class = MistralConfig
    model_class = MistralForCausalLM

    config_from_gguf = staticmethod(mistral_config_from_gguf)
    config_from_hf = staticmethod(mistral_config_from_hf)


family = MistralFamily()
