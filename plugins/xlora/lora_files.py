"""PEFT LoRA adapter directories: ``adapter_config.json`` + ``adapter_model.safetensors``.

Each adapter becomes per-module low-rank factors ``A`` [r, in] and ``B`` [out, r] with the scale
``alpha / r`` (``alpha / sqrt(r)`` with rsLoRA), keyed by the module path inside our model, which
uses the HF names (``model.layers.0.self_attn.q_proj``).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
# base_model.model.<module>.lora_A[.<adapter name>].weight
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<part>[AB])(?:\.[^.]+)?\.weight$")


class AdapterError(ValueError):
    pass


@dataclass
class LoraModule:
    a: torch.Tensor  # [r, in]
    b: torch.Tensor  # [out, r]
    scale: float  # alpha / r

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass
class LoraAdapter:
    name: str
    path: Path
    modules: dict[str, LoraModule] = field(default_factory=dict)


def _read_config(path: Path) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise AdapterError(f"{path}: not a PEFT adapter directory (no {CONFIG_FILE})")
    try:
        cfg = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{file}: not valid JSON ({exc})") from None
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{file}: peft_type {cfg.get('peft_type')!r}, expected LORA")
    if cfg.get("use_dora"):
        raise AdapterError(f"{file}: DoRA adapters (use_dora) are not supported")
    if cfg.get("fan_in_fan_out"):
        raise AdapterError(f"{file}: fan_in_fan_out (GPT-2 Conv1D layers) is not supported")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        raise AdapterError(f"{file}: adapters with bias terms are not supported")
    for key in ("r", "lora_alpha"):
        if not isinstance(cfg.get(key), (int, float)) or cfg[key] <= 0:
            raise AdapterError(f"{file}: {key} must be a positive number, got {cfg.get(key)!r}")
    return cfg


def _pattern_value(patterns: dict, module: str, default: float) -> float:
    """PEFT's rank_pattern / alpha_pattern: a key matches a module path ending in it (a regex)."""
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def read_lora_adapter(path: Path, name: str | None = None) -> LoraAdapter:
    path = Path(path)
    cfg = _read_config(path)
    weights_file = path / WEIGHTS_FILE
    if not weights_file.is_file():
        raise AdapterError(f"{path}: no {WEIGHTS_FILE} (only safetensors adapters are read, never pickles)")
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(str(weights_file)).items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterError(f"{weights_file}: unexpected tensor {key!r} (only lora_A / lora_B of linear layers)")
        parts.setdefault(m["module"], {})[m["part"]] = tensor.float()
    if not parts:
        raise AdapterError(f"{weights_file}: no LoRA weights")
    adapter = LoraAdapter(name or path.name, path)
    for module, ab in sorted(parts.items()):
        if set(ab) != {"A", "B"}:
            missing = ({"A", "B"} - set(ab)).pop()
            raise AdapterError(f"{weights_file}: {module} has no lora_{missing} weight")
        a, b = ab["A"], ab["B"]
        r = int(_pattern_value(cfg.get("rank_pattern"), module, cfg["r"]))
        alpha = float(_pattern_value(cfg.get("alpha_pattern"), module, cfg["lora_alpha"]))
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise AdapterError(f"{weights_file}: {module} has lora_A {list(a.shape)} and lora_B {list(b.shape)}, "
                               f"expected [r, in] and [out, r] with r = {r}")
        scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        adapter.modules[module] = LoraModule(a, b, scale)
    return adapter
