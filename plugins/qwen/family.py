"""The Qwen2 and Qwen3 families: Llama's loading with Qwen's configs, modules and names."""

from __future__ import annotations

from typing import Any

from mistralrs.engine.llama_base.family import LlamaFamily

from mistralrs.plugins.qwen.config import (
    Qwen2Config,
    Qwen3Config,
    qwen2_config_from_gguf,
    qwen2_config_from_hf,
    qwen3_config_from_gguf,
    qwen3_config_from_hf,
)
from mistralrs.plugins.qwen.model import Qwen2ForCausalLM, Qwen3ForCausalLM
from mistralrs.plugins.qwen.weights import GGUF_QWEN2_BLOCK_NAMES, GGUF_QWEN3_BLOCK_NAMES


class Qwen2Family(LlamaFamily):
    name = "qwen2"
    config_class = Qwen2Config
    model_class = Qwen2ForCausalLM
    gguf_block_names = GGUF_QWEN2_BLOCK_NAMES
    gguf_unpermute_rope = False

    def config_from_gguf(self, meta: dict[str, Any], arch: str) -> Qwen2Config:
        return qwen2_config_from_gguf(meta, arch)

    def config_from_hf(self, cfg: dict[str, Any]) -> Qwen2Config:
        return qwen2_config_from_hf(cfg)


class Qwen3Family(LlamaFamily):
    name = "qwen3"
    config_class = Qwen3Config
    model_class = Qwen3ForCausalLM
    gguf_block_names = GGUF_QWEN3_BLOCK_NAMES
    gguf_unpermute_rope = False

    def config_from_gguf(self, meta: dict[str, Any], arch: str) -> Qwen3Config:
        return qwen3_config_from_gguf(meta, arch)

    def config_from_hf(self, cfg: dict[str, Any]) -> Qwen3Config:
        return qwen3_config_from_hf(cfg)


qwen2 = Qwen2Family()
qwen3 = Qwen3Family()
