"""``adapter=lora`` and ``adapter=xlora``: what the loader calls once the base weights are in."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from mistralrs.plugins.xlora.classifier import XLoraClassifier
from mistralrs.plugins.xlora.lora_files import AdapterError, LoraAdapter, read_lora_adapter
from mistralrs.plugins.xlora.lora_linear import (AdapterTerm, LoraLinear, check_shapes, merge_into, reset_linear_groups, routed_ancestor,
                          target_linear, wrap_linear)
from mistralrs.plugins.xlora.mixer import ScalingMixer
from mistralrs.plugins.xlora.xlora_files import XLoraFiles, read_xlora
from mistralrs.plugins.xlora.xlora_model import XLoraModel

log = logging.getLogger(__name__)


def _split_fused(model: nn.Module, adapters: list[LoraAdapter]) -> dict[str, str]:
    """Adapters trained on a checkpoint's fused projections (Phi-3's ``qkv_proj``, ``gate_up_proj``)
    target a module the model holds as its parts: the family splits the weight at load and names the
    parts in ``fused_linears`` (fused suffix -> parts' suffixes). A LoRA on the fused weight is exactly
    LoRAs on its parts with ``A`` shared and ``B`` split by rows, so the adapters are rewritten so.
    Returns part path -> the fused path the adapter named (X-LoRA numbers its layers by the latter)."""
    fused = getattr(model, "fused_linears", None) or {}
    origin: dict[str, str] = {}
    for adapter in adapters:
        for path, lora in list(adapter.modules.items()):
            suffix = next((s for s in fused if path.endswith("." + s)), None)
            if suffix is None:
                continue
            parts = [path[: -len(suffix)] + part for part in fused[suffix]]
            rows = [target_linear(model, part, adapter.name).out_features for part in parts]
            if lora.b.shape[0] != sum(rows):
                raise AdapterError(f"adapter {adapter.name!r}: {path} has lora_B {list(lora.b.shape)}, but its parts "
                                   f"{', '.join(parts)} have {sum(rows)} outputs")
            del adapter.modules[path]
            for part, b in zip(parts, lora.b.split(rows)):
                adapter.modules[part] = replace(lora, b=b.contiguous())
                origin[part] = path
    return origin


def _terms_by_module(model: nn.Module, adapters: list[LoraAdapter]) -> dict[str, list[AdapterTerm]]:
    """Module path -> the adapters targeting it, checked against the model's layers."""
    terms: dict[str, list[AdapterTerm]] = {}
    for index, adapter in enumerate(adapters):
        for path, lora in adapter.modules.items():
            check_shapes(path, target_linear(model, path, adapter.name), lora, adapter.name)
            terms.setdefault(path, []).append(AdapterTerm(index, lora))
    return terms


def apply_lora(model: nn.Module, cfg, device: torch.device, dtype: torch.dtype) -> nn.Module:
    if not cfg.source:
        raise AdapterError("adapter=lora needs adapter.source=<PEFT adapter directory>[,<another>...]")
    adapters = [read_lora_adapter(Path(p.strip())) for p in str(cfg.source).split(",") if p.strip()]
    _split_fused(model, adapters)
    merged = unmerged = 0
    for path, terms in _terms_by_module(model, adapters).items():
        layer = target_linear(model, path)
        if cfg.merge and merge_into(layer, terms):
            merged += 1
            continue
        wrap_linear(model, path, LoraLinear(layer, terms, device, dtype))
        unmerged += 1
    reset_linear_groups(model)
    if cfg.merge and unmerged:
        log.info("LoRA: %d quantized layers get the adapter per call (their blocks cannot take a merge)", unmerged)
    model.adapter_info = {"kind": "lora", "adapters": [a.name for a in adapters], "merged": merged,
                          "unmerged": unmerged}
    return model


def apply_xlora(model: nn.Module, cfg, device: torch.device, dtype: torch.dtype) -> nn.Module:
    if not cfg.source:
        raise AdapterError("adapter=xlora needs adapter.source=<X-LoRA directory>")
    if cfg.tgt_non_granular_index is not None and cfg.tgt_non_granular_index < 0:
        raise AdapterError(f"adapter.tgt_non_granular_index must be >= 0, got {cfg.tgt_non_granular_index}")
    files = read_xlora(Path(cfg.source), cfg.ordering, cfg.adapters_dir)
    hidden = _hidden_size(model)
    if files.config.hidden_size != hidden:
        raise AdapterError(f"the X-LoRA config's hidden_size is {files.config.hidden_size}, the model's {hidden}")
    origin = _split_fused(model, files.adapters)
    terms = _terms_by_module(model, files.adapters)
    for path in terms:
        routed = routed_ancestor(model, path)
        if routed is not None:
            raise AdapterError(f"X-LoRA scales adapters per token, but {path} is an expert of the mixture {routed}, "
                               "which sees only its routed tokens; X-LoRA adapters may target the other layers")
    layer_of = _xlora_layers(model, files, terms, origin)
    n_layers = len(set(layer_of.values())) if files.layers is None else len(files.layers)
    classifier = _classifier(files, n_layers, device)
    mixer = ScalingMixer(files.config.scaling_pass_value)
    weight = files.config.global_scaling_weight
    for path, module_terms in terms.items():
        scaled = [AdapterTerm(t.adapter, replace(t.lora, scale=t.lora.scale * weight)) for t in module_terms]
        wrap_linear(model, path, LoraLinear(target_linear(model, path), scaled, device, dtype, mixer, layer_of[path]))
    reset_linear_groups(model)
    info = {"kind": "xlora", "layout": files.layout, "adapters": [a.name for a in files.adapters],
            "xlora_layers": n_layers, "preload_adapters": [p["name"] for p in files.preload],
            "non_granular_index": cfg.tgt_non_granular_index}
    return XLoraModel(model, classifier, mixer, info, cfg.tgt_non_granular_index)


def _hidden_size(model: nn.Module) -> int:
    return int(model.config.hidden_size)


def _xlora_layers(model: nn.Module, files: XLoraFiles, terms: dict, origin: dict[str, str]) -> dict[str, int]:
    """Module path -> X-LoRA layer; the parts of a fused module the adapters named share its layer."""
    named = {name: origin.get(name, name) for name in terms}
    if files.layers is None:  # PEFT numbers the targeted modules in traversal order
        order = {fused: i for i, fused in enumerate(dict.fromkeys(
            named[name] for name, _ in model.named_modules() if name in terms))}
        return {name: order[named[name]] for name in terms}
    missing = sorted(set(named.values()) - set(files.layers))
    if missing:
        raise AdapterError(f"the ordering file's 'layers' lacks {missing[:4]}{' ...' if len(missing) > 4 else ''}, "
                           "which the adapters target")
    indices = sorted(files.layers.values())
    if indices != list(range(len(indices))):
        raise AdapterError("the ordering file's 'layers' must number the X-LoRA layers 0, 1, 2, ... once each")
    return {name: files.layers[named[name]] for name in terms}


def _classifier(files: XLoraFiles, n_layers: int, device: torch.device) -> XLoraClassifier:
    cfg, layers = files.config, files.classifier
    n_adapters = len(files.adapters)
    if len(layers) != cfg.xlora_depth:
        raise AdapterError(f"the X-LoRA classifier has {len(layers)} linear layers; xlora_depth is {cfg.xlora_depth}")
    outputs = n_adapters * (n_layers if cfg.layerwise_scalings else 1)
    width = cfg.hidden_size
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        want = (outputs if last else cfg.xlora_size, width)
        if tuple(w.shape) != want or (b is not None and tuple(b.shape) != want[:1]):
            what = "scalings for " + (f"{n_layers} layers x " if cfg.layerwise_scalings else "") + f"{n_adapters} adapters"
            raise AdapterError(f"X-LoRA classifier layer {i} has weight {list(w.shape)}, expected {list(want)}"
                               + (f" ({what})" if last else ""))
        width = want[0]
    placed = [(w.to(device), None if b is None else b.to(device)) for w, b in layers]
    return XLoraClassifier(cfg, placed, n_layers, n_adapters)
