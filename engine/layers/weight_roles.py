"""What each parameter of a built model is, for in-situ quantization (engine/quant/isq.py), which
quantizes by role. It lives with the layers it inspects, so quant never imports the layers."""

from __future__ import annotations

import torch

from mistralrs.engine.layers.linear import Embedding, Linear
from mistralrs.engine.layers.moe import SparseMoE

HEAD_NAMES = ("lm_head", "output", "embed_out")  # module names of output heads


def weight_role(model: torch.nn.Module, target: str, tied: dict[str, str]) -> str:
    """What a parameter is, for ISQ: ``linear``, ``embedding`` (token embeddings, output head, or
    either of a tied pair), ``router`` (an MoE gate) or ``other`` (norms, biases, ...)."""
    owner_name, _, attr = target.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    if attr != "weight" or not isinstance(owner, (Linear, Embedding)):
        return "other"
    if isinstance(owner, Embedding) or target in tied or target in tied.values():
        return "embedding"
    parent_name, _, leaf = owner_name.rpartition(".")
    if leaf in HEAD_NAMES:
        return "embedding"
    parent = model.get_submodule(parent_name) if parent_name else model
    if isinstance(parent, SparseMoE) and owner is parent.gate:
        return "router"
    return "linear"
