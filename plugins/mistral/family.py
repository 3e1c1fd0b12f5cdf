"""The Mistral family: Llama's loading, Mistral's config and module."""

from __future__ import annotations

from typing import Any

from mistralrs.engine.llama_base.family import LlamaFamily

from mistralrs.plugins.mistral.config import MistralConfig, mistral_config_from_gguf, mistral_config_from_hf
from mistralrs.plugins.mistral.model import MistralForCausalLM


class MistralFamily(LlamaFamily):
    name = "mistral"
    config_class = MistralConfig
    model_class = MistralForCausalLM

    def config_from_gguf(self, meta: dict[str, Any], arch: str) -> MistralConfig:
        return mistral_config_from_gguf(meta, arch)

    def config_from_hf(self, cfg: dict[str, Any]) -> MistralConfig:
        return mistral_config_from_hf(cfg)


family = MistralFamily()
