"""Mistral hyper-parameters: Llama's plus the attention window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mistralrs.engine.llama_base.config import LlamaConfig, llama_fields_from_gguf, llama_fields_from_hf, parse_hf


@dataclass
class MistralConfig(LlamaConfig):
    architecture: ClassVar[str] = "mistral"

    sliding_window: int | None = None  # each query sees itself and the window - 1 positions before it


def mistral_config_from_gguf(meta: dict[str, Any], arch: str) -> MistralConfig:
    window = meta.get(f"{arch}.attention.sliding_window")  # llama.cpp's converter does not write it
    return MistralConfig(**llama_fields_from_gguf(meta, arch), sliding_window=int(window) if window else None).validate()


def mistral_config_from_hf(cfg: dict[str, Any]) -> MistralConfig:
    return parse_hf(lambda c: MistralConfig(**llama_fields_from_hf(c), sliding_window=c.get("sliding_window")), cfg)
