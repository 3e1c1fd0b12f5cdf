"""Mistral hyper-parameters: Llama's plus the attention window."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mistralrs.engine.llama_base.config import (
    ConfigError,
    LlamaConfig,
    int_field,
    llama_fields_from_gguf,
    llama_fields_from_hf,
    parse_hf,
)


@dataclass
class MistralConfig(LlamaConfig):
    architecture: ClassVar[str] = "mistral"

    sliding_window: int | None = None  # each query sees itself and the window - 1 positions before it

    def validate(self) -> "MistralConfig":
        super().validate()
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ConfigError(f"sliding_window must be a positive number of tokens, got {window!r}")
        return self


def mistral_config_from_gguf(meta: dict[str, Any], arch: str) -> MistralConfig:
    # llama.cpp's converter does not write the window; 0 means none too
    window = int_field(meta, f"{arch}.attention.sliding_window", None, minimum=0)
    return MistralConfig(**llama_fields_from_gguf(meta, arch), sliding_window=window or None).validate()


def mistral_config_from_hf(cfg: dict[str, Any]) -> MistralConfig:
    return parse_hf(lambda c: MistralConfig(**llama_fields_from_hf(c), sliding_window=hf_window(c)), cfg)


def hf_window(cfg: dict[str, Any]) -> int | None:
    """config.json's sliding_window: null, absent or 0 for none."""
    return int_field(cfg, "sliding_window", None, where="config.json", minimum=0) or None
