"""Qwen2 and Qwen3 hyper-parameters: Llama's, with what each adds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mistralrs.engine.llama_base.config import ConfigError, LlamaConfig, llama_fields_from_gguf, llama_fields_from_hf, parse_hf


@dataclass
class Qwen2Config(LlamaConfig):
    """Biases on q/k/v (never on the output projection); no sliding window is run."""

    architecture: ClassVar[str] = "qwen2"


@dataclass
class Qwen3Config(LlamaConfig):
    """Per-head RMSNorm on queries and keys before RoPE; ``attention_bias`` as config.json says."""

    architecture: ClassVar[str] = "qwen3"


def _refuse_sliding_window(cfg: dict[str, Any]) -> None:
    # Qwen2's config.json carries sliding_window but only honours it with use_sliding_window, which
    # released models leave off; a model that turns it on would need per-layer windows we do not run
    if cfg.get("use_sliding_window"):
        raise ConfigError("config.json use_sliding_window=true is not supported for Qwen models "
                          "(their released checkpoints run full attention)")


def qwen2_config_from_gguf(meta: dict[str, Any], arch: str) -> Qwen2Config:
    return Qwen2Config(**llama_fields_from_gguf(meta, arch), attention_bias=True).validate()


def qwen2_config_from_hf(cfg: dict[str, Any]) -> Qwen2Config:
    def build(c: dict[str, Any]) -> Qwen2Config:
        _refuse_sliding_window(c)
        return Qwen2Config(**{**llama_fields_from_hf(c), "attention_bias": True})

    return parse_hf(build, cfg)


def qwen3_config_from_gguf(meta: dict[str, Any], arch: str) -> Qwen3Config:
    return Qwen3Config(**llama_fields_from_gguf(meta, arch)).validate()


def qwen3_config_from_hf(cfg: dict[str, Any]) -> Qwen3Config:
    def build(c: dict[str, Any]) -> Qwen3Config:
        _refuse_sliding_window(c)
        return Qwen3Config(**llama_fields_from_hf(c))

    return parse_hf(build, cfg)
