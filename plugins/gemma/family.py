"""The Gemma, Gemma 2 and Gemma 3 families: Llama's loading with Gemma's configs, modules and names."""

from __future__ import annotations

from typing import Any

from mistralrs.engine.llama_base.family import LlamaFamily

from mistralrs.plugins.gemma.chat_template import GEMMA_CHAT_TEMPLATE
from mistralrs.plugins.gemma.config import (
    Gemma2Config,
    Gemma3Config,
    GemmaConfig,
    gemma2_config_from_gguf,
    gemma2_config_from_hf,
    gemma3_config_from_gguf,
    gemma3_config_from_hf,
    gemma_config_from_gguf,
    gemma_config_from_hf,
)
from mistralrs.plugins.gemma.model import Gemma2ForCausalLM, Gemma3ForCausalLM, GemmaForCausalLM
from mistralrs.plugins.gemma.weights import GGUF_GEMMA2_BLOCK_NAMES, GGUF_GEMMA3_BLOCK_NAMES, GGUF_GEMMA_BLOCK_NAMES


class GemmaFamily(LlamaFamily):
    name = "gemma"
    config_class = GemmaConfig
    model_class = GemmaForCausalLM
    gguf_block_names = GGUF_GEMMA_BLOCK_NAMES
    gguf_unpermute_rope = False
    default_chat_template = GEMMA_CHAT_TEMPLATE

    def config(self, ckpt: Any) -> GemmaConfig:
        cfg = super().config(ckpt)
        if ckpt.format == "gguf":
            # GGUF files without a template get Gemma's (the tokenizer is read after the config).
            ckpt.metadata.setdefault("tokenizer.chat_template", self.default_chat_template)
        return cfg

    config_from_gguf = staticmethod(gemma_config_from_gguf)
    config_from_hf = staticmethod(gemma_config_from_hf)


class Gemma2Family(GemmaFamily):
    name = "gemma2"
    config_class = Gemma2Config
    model_class = Gemma2ForCausalLM
    gguf_block_names = GGUF_GEMMA2_BLOCK_NAMES

    config_from_gguf = staticmethod(gemma2_config_from_gguf)
    config_from_hf = staticmethod(gemma2_config_from_hf)


class Gemma3Family(GemmaFamily):
    name = "gemma3"
    config_class = Gemma3Config
    model_class = Gemma3ForCausalLM
    gguf_block_names = GGUF_GEMMA3_BLOCK_NAMES

    config_from_gguf = staticmethod(gemma3_config_from_gguf)
    config_from_hf = staticmethod(gemma3_config_from_hf)


gemma = GemmaFamily()
gemma2 = Gemma2Family()
gemma3 = Gemma3Family()
