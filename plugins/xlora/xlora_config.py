"""The X-LoRA hyper-parameters, as mistral.rs's ``xlora_config.json`` and PEFT's X-LoRA
``adapter_config.json`` spell them (the same names; PEFT has no ``use_bias`` /
``enable_relu_and_dropout``, it always uses both)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from mistralrs.plugins.xlora.lora_files import AdapterError


@dataclass(frozen=True)
class XLoraConfig:
    hidden_size: int
    xlora_depth: int = 1
    xlora_size: int = 2048
    layerwise_scalings: bool = False
    enable_softmax: bool = True
    softmax_temperature: float = 1.0
    top_k_lora: int | None = None
    enable_softmax_topk: bool = False
    scaling_pass_value: float = 0.0
    global_scaling_weight: float = 1.0
    use_bias: bool = True
    enable_relu_and_dropout: bool = True
    base_model_id: str | None = None


def parse_xlora_config(raw: dict[str, Any], where: str) -> XLoraConfig:
    known = {f.name for f in fields(XLoraConfig)}
    if "hidden_size" not in raw:
        raise AdapterError(f"{where}: no hidden_size")
    cfg = XLoraConfig(**{k: v for k, v in raw.items() if k in known})
    if cfg.xlora_depth < 1:
        raise AdapterError(f"{where}: xlora_depth must be at least 1, got {cfg.xlora_depth}")
    if cfg.softmax_temperature <= 0:
        raise AdapterError(f"{where}: softmax_temperature must be positive, got {cfg.softmax_temperature}")
    if cfg.top_k_lora is not None and cfg.top_k_lora < 1:
        raise AdapterError(f"{where}: top_k_lora must be at least 1, got {cfg.top_k_lora}")
    return cfg
