"""Phi-3 hyper-parameters: Llama's plus the attention window.

- RoPE: plain (Phi-3-mini-4k) or LongRoPE (the 128k models, Phi-3.5, Phi-4-mini) with short and long
  factor sets and an attention factor (engine/layers/rope.py says which set runs when); Phi-4-mini
  rotates only the first ``partial_rotary_factor`` of each head. transformers reads an older config's
  rope type "su" or "yarn" as LongRoPE for this architecture, and so does this parser.
- ``sliding_window``: each query sees itself and the ``sliding_window - 1`` positions before it, as
  transformers runs Phi-3 (its mask keeps keys with q - k < window). Phi-3-mini-4k declares 2047;
  the 128k models and Phi-4-mini declare windows at or beyond their context, which change nothing.
  llama.cpp's converter records the window (``phi3.attention.sliding_window``, 0 for none) but its
  runtime turns Phi-3's window off (full attention, "Phi SWA is currently disabled"); this engine
  keeps it, from either format, because the model was trained with it and transformers, the
  reference, applies it. The two agree on any sequence no longer than the window.
  (Microsoft's original modeling code passed ``window_size=(W, W)`` to flash-attention, i.e. W + 1
  positions; transformers' W is the one followed here.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mistralrs.engine.llama_base.config import (
    LlamaConfig,
    int_field,
    llama_fields_from_gguf,
    llama_fields_from_hf,
    mapping_field,
    parse_hf,
)

_LONGROPE_ALIASES = ("su", "yarn")  # transformers' Phi3Config reads both as "longrope"


@dataclass
class Phi3Config(LlamaConfig):
    architecture: ClassVar[str] = "phi3"

    sliding_window: int | None = None  # each query sees itself and the window - 1 positions before it


def phi3_config_from_gguf(meta: dict[str, Any], arch: str) -> Phi3Config:
    # LongRoPE's factor sets are tensors (rope_factors_long/short.weight), read by LlamaFamily.config
    window = int_field(meta, f"{arch}.attention.sliding_window", None, minimum=0)  # 0: none
    return Phi3Config(**llama_fields_from_gguf(meta, arch), sliding_window=window or None).validate()


def phi3_config_from_hf(cfg: dict[str, Any]) -> Phi3Config:
    def build(c: dict[str, Any]) -> Phi3Config:
        c = dict(c)
        for key in ("rope_scaling", "rope_parameters"):
            rope = mapping_field(c, key)
            if rope.get("rope_type", rope.get("type")) in _LONGROPE_ALIASES:
                c[key] = {**rope, "rope_type": "longrope"}
        fields = {**llama_fields_from_hf(c), "attention_bias": False, "mlp_bias": False}  # Phi-3 has no biases
        window = int_field(c, "sliding_window", None, where="config.json", minimum=0)
        return Phi3Config(**fields, sliding_window=window or None)

    return parse_hf(build, cfg)
