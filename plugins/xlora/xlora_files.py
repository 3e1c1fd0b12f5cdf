"""X-LoRA directories in the two layouts that exist.

- mistral.rs: ``xlora_config.json``, ``xlora_classifier.safetensors`` (``inner.{j}.*``, ``last.*``),
  the adapters as PEFT folders named after them, and an ordering file (``order``: adapter names in
  training order = the classifier's columns; ``layers``: module path -> X-LoRA layer index;
  ``base_model_id``, which must agree with the config's; optional ``preload_adapters``).
- PEFT: ``adapter_config.json`` with ``peft_type: XLORA`` (``adapters``: name -> folder, in column
  order) and the classifier as ``…internal_xlora_classifier.layers.{k}.*`` (k steps by 2 or 3,
  as dropout adds a module between ReLU blocks). X-LoRA layers are the targeted modules in the
  model's traversal order.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from mistralrs.plugins.xlora.lora_files import AdapterError, LoraAdapter, read_lora_adapter
from mistralrs.plugins.xlora.xlora_config import XLoraConfig, parse_xlora_config

MISTRALRS_CONFIG = "xlora_config.json"
MISTRALRS_CLASSIFIER = "xlora_classifier.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_CLASSIFIERS = ("peft_classifier.safetensors", "adapter_model.safetensors")
_PEFT_LAYER = re.compile(r"(?:^|\.)internal_xlora_classifier\.layers\.(\d+)\.(weight|bias)$")

ClassifierLayers = list[tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class XLoraFiles:
    layout: str  # mistral.rs | peft
    config: XLoraConfig
    adapters: list[LoraAdapter]  # in the classifier's column order
    classifier: ClassifierLayers  # (weight, bias) per linear layer, the last one last
    layers: dict[str, int] | None  # module path -> X-LoRA layer; None: traversal order
    preload: list[dict[str, Any]] = field(default_factory=list)  # ordering's preload_adapters


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise AdapterError(f"{path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise AdapterError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise AdapterError(f"{path}: expected a JSON object")
    return data


def read_xlora(source: Path, ordering: str | None = None, adapters_dir: str | None = None) -> XLoraFiles:
    source = Path(source)
    if not source.is_dir():
        raise AdapterError(f"adapter.source={source}: not a directory")
    if (source / MISTRALRS_CONFIG).is_file():
        return _read_mistralrs(source, ordering, adapters_dir)
    if (source / PEFT_CONFIG).is_file():
        return _read_peft(source, adapters_dir)
    raise AdapterError(f"{source}: not an X-LoRA directory (expected {MISTRALRS_CONFIG} or a PEFT "
                       f"{PEFT_CONFIG} with peft_type XLORA)")


# -- mistral.rs --------------------------------------------------------------------------------
def _read_mistralrs(source: Path, ordering: str | None, adapters_dir: str | None) -> XLoraFiles:
    raw = read_json(source / MISTRALRS_CONFIG)
    cfg = parse_xlora_config(raw, str(source / MISTRALRS_CONFIG))
    order_file = _ordering_path(source, ordering)
    order = read_json(order_file) if order_file else {}
    names = order.get("order") or _config_adapter_names(raw)
    if not names:
        raise AdapterError(f"{source}: no adapter order (give adapter.ordering=<ordering.json> with an 'order' list)")
    declared = _config_adapter_names(raw)
    if declared and set(declared) != set(names):
        raise AdapterError(f"{order_file}: 'order' {names} does not name the adapters of {MISTRALRS_CONFIG} {declared}")
    ordering_id, config_id = order.get("base_model_id"), cfg.base_model_id
    if ordering_id and config_id and ordering_id != config_id:
        raise AdapterError(f"{order_file}: base_model_id {ordering_id!r} does not match {MISTRALRS_CONFIG}'s "
                           f"{config_id!r}: the ordering was made for another X-LoRA model")
    paths = raw.get("adapters") if isinstance(raw.get("adapters"), dict) else {}
    adapters = [read_lora_adapter(_adapter_dir(source, name, paths.get(name), adapters_dir), name) for name in names]
    layers = order.get("layers")
    if layers is not None and not (isinstance(layers, dict) and all(isinstance(v, int) for v in layers.values())):
        raise AdapterError(f"{order_file}: 'layers' must map module paths to X-LoRA layer numbers")
    classifier = _mistralrs_classifier(source / MISTRALRS_CLASSIFIER, cfg)
    preload = _preload(order.get("preload_adapters") or [], order_file)
    return XLoraFiles("mistral.rs", cfg, adapters, classifier, layers, preload)


def _ordering_path(source: Path, ordering: str | None) -> Path | None:
    if ordering is None:
        default = source / "ordering.json"
        return default if default.is_file() else None
    path = Path(ordering)
    return path if path.is_absolute() or path.exists() else source / path


def _config_adapter_names(raw: dict[str, Any]) -> list[str]:
    adapters = raw.get("adapters") or []
    return list(adapters) if isinstance(adapters, (list, dict)) else []


def _adapter_dir(source: Path, name: str, listed: str | None, adapters_dir: str | None) -> Path:
    candidates = [source / listed] if listed else []
    candidates.append(source / name)
    if adapters_dir:
        candidates.append(Path(adapters_dir) / name)
    for path in candidates:
        if (path / "adapter_config.json").is_file():
            return path
    tried = ", ".join(str(p) for p in candidates)
    raise AdapterError(f"adapter {name!r} not found (looked in {tried}); set adapter.adapters_dir to the folder "
                       "holding the adapter folders")


def _mistralrs_classifier(path: Path, cfg: XLoraConfig) -> ClassifierLayers:
    if not path.is_file():
        raise AdapterError(f"{path}: no such file (the X-LoRA classifier)")
    tensors = load_file(str(path))
    layers = []
    for j in range(cfg.xlora_depth - 1):
        layers.append(_linear(tensors, f"inner.{j}", path, cfg.use_bias))
    layers.append(_linear(tensors, "last", path, cfg.use_bias))
    unused = set(tensors) - {f"{p}.{k}" for p in [*(f"inner.{j}" for j in range(cfg.xlora_depth - 1)), "last"]
                             for k in ("weight", "bias")}
    if unused:
        raise AdapterError(f"{path}: unexpected tensors {sorted(unused)} for xlora_depth {cfg.xlora_depth}")
    return layers


def _linear(tensors: dict[str, torch.Tensor], prefix: str, path: Path, bias: bool):
    if f"{prefix}.weight" not in tensors:
        raise AdapterError(f"{path}: no {prefix}.weight")
    b = tensors.get(f"{prefix}.bias")
    if bias and b is None:
        raise AdapterError(f"{path}: no {prefix}.bias (the config says use_bias)")
    return tensors[f"{prefix}.weight"].float(), None if b is None else b.float()


def _preload(entries: list, order_file: Path | None) -> list[dict[str, Any]]:
    """mistral.rs's adapters to load beside the X-LoRA ones (for LoRA activation per request);
    checked and listed, not applied."""
    out = []
    for entry in entries:
        if not isinstance(entry, dict) or "name" not in entry or "adapter_model_id" not in entry:
            raise AdapterError(f"{order_file}: preload_adapters entries need 'name' and 'adapter_model_id'")
        out.append(dict(entry))
    return out


# -- PEFT ----------------------------------------------------------------------------------------
def _read_peft(source: Path, adapters_dir: str | None) -> XLoraFiles:
    raw = read_json(source / PEFT_CONFIG)
    if raw.get("peft_type") != "XLORA":
        raise AdapterError(f"{source / PEFT_CONFIG}: peft_type {raw.get('peft_type')!r}, expected XLORA "
                           "(a plain LoRA adapter loads with adapter=lora)")
    cfg = parse_xlora_config(raw, str(source / PEFT_CONFIG))
    listed = raw.get("adapters")
    if not isinstance(listed, dict) or not listed:
        raise AdapterError(f"{source / PEFT_CONFIG}: 'adapters' must map adapter names to folders")
    adapters = [read_lora_adapter(_adapter_dir(source, name, path, adapters_dir), name) for name, path in listed.items()]
    return XLoraFiles("peft", cfg, adapters, _peft_classifier(source), None)


def _peft_classifier(source: Path) -> ClassifierLayers:
    for name in PEFT_CLASSIFIERS:
        path = source / name
        if not path.is_file():
            continue
        found: dict[int, dict[str, torch.Tensor]] = {}
        for key, tensor in load_file(str(path)).items():
            if m := _PEFT_LAYER.search(key):
                found.setdefault(int(m[1]), {})[m[2]] = tensor.float()
        if found:
            layers = []
            for k in sorted(found):
                if "weight" not in found[k]:
                    raise AdapterError(f"{path}: classifier layer {k} has no weight")
                layers.append((found[k]["weight"], found[k].get("bias")))
            return layers
    raise AdapterError(f"{source}: no X-LoRA classifier weights (internal_xlora_classifier.layers.*) in "
                       f"{' or '.join(PEFT_CLASSIFIERS)}")
