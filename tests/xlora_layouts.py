"""The X-LoRA oracle (tests/data/xlora, from PEFT) laid out as each reader expects it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

DATA = Path(__file__).parent / "data" / "xlora"
BASE = DATA / "base_model"
ADAPTERS = DATA / "adapters"
VARIANTS = ["v1_default", "v2_layerwise_topk_temp"]
ATOL = 1e-4


def oracle(variant: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(DATA / "xlora" / variant / "oracle.safetensors"))


def mistralrs_layout(dest: Path, variant: str) -> Path:
    """mistral.rs: config, classifier, ordering file and the adapter folders side by side."""
    src = DATA / "xlora" / variant
    dest.mkdir(parents=True)
    for name in ("xlora_config.json", "xlora_classifier.safetensors", "ordering.json"):
        shutil.copy(src / name, dest / name)
    for adapter in json.loads((src / "ordering.json").read_text())["order"]:
        shutil.copytree(ADAPTERS / adapter, dest / adapter)
    return dest


def peft_layout(dest: Path, variant: str) -> Path:
    """PEFT: adapter_config.json (peft_type XLORA) naming the adapter folders, and the classifier."""
    src = DATA / "xlora" / variant
    dest.mkdir(parents=True)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["adapters"] = {name: str((src / path).resolve()) for name, path in cfg["adapters"].items()}
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    shutil.copy(src / "peft_classifier.safetensors", dest / "peft_classifier.safetensors")
    return dest


def load_xlora(source: Path, *overrides: str):
    import mistralrs

    return mistralrs.load("model=llama", f"model.source={BASE}", "model.dtype=float32", "model.device=cpu",
                          "adapter=xlora", f"adapter.source={source}", *overrides)
