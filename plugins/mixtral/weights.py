"""Mixtral's expert tensors -> ``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj`` and the router
-> ``model.layers.{i}.mlp.gate``; everything else is named as in Llama. GGUF files hold merged or
per-expert tensors, HF ones ``block_sparse_moe.experts.{e}.w1/w3/w2`` (gate/up/down) and
``block_sparse_moe.gate``, or transformers 5's fused tensors (engine/llama_base/expert_weights.py).
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.llama_base.expert_weights import expert_target, gguf_expert_tensors, hf_fused_expert_tensors
from mistralrs.engine.llama_base.weights import GGUF_BLOCK_NAMES, gguf_weights, hf_weights

from mistralrs.plugins.mixtral.config import MixtralConfig

GGUF_MIXTRAL_BLOCK_NAMES = {**GGUF_BLOCK_NAMES, "ffn_gate_inp": "mlp.gate"}
_HF_EXPERT = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_HF_W = {"w1": "gate", "w3": "up", "w2": "down"}


def mixtral_gguf_weights(ckpt: Any, cfg: MixtralConfig) -> Iterator[tuple[str, RawTensor]]:
    for name, raw in gguf_weights(ckpt, cfg, unpermute_rope=True, block_names=GGUF_MIXTRAL_BLOCK_NAMES):
        experts = gguf_expert_tensors(name, raw)
        yield from experts if experts is not None else [(name, raw)]


def mixtral_hf_weights(ckpt: Any, cfg: MixtralConfig) -> Iterator[tuple[str, RawTensor]]:
    for name, raw in hf_weights(ckpt):
        if m := _HF_EXPERT.match(name):
            layer, e, w = m.groups()
            yield expert_target(layer, e, _HF_W[w]), raw
        elif (fused := hf_fused_expert_tensors(name, raw, cfg.intermediate_size)) is not None:
            yield from fused
        else:
            yield name.replace(".block_sparse_moe.gate.", ".mlp.gate."), raw
