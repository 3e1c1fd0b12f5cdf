"""Mixtral's expert tensors -> ``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj`` and the router
-> ``model.layers.{i}.mlp.gate``; everything else is named as in Llama.

Layouts read:
- GGUF merged (llama.cpp today): ``blk.{i}.ffn_{gate,up,down}_exps.weight``, one 3-D tensor
  [experts, out, in] per projection, split here into per-expert tensors (whole rows, so quantized
  blocks split losslessly);
- GGUF per expert (older files): ``blk.{i}.ffn_{gate,up,down}.{e}.weight``;
- HF: ``block_sparse_moe.experts.{e}.w1/w3/w2`` (gate/up/down) and ``block_sparse_moe.gate``, or
  transformers 5's fused ``mlp.experts.gate_up_proj`` [experts, 2 * inter, hidden] and
  ``mlp.experts.down_proj`` [experts, hidden, inter].
"""

from __future__ import annotations

import re
from typing import Any, Iterator

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.llama_base.weights import GGUF_BLOCK_NAMES, gguf_weights, hf_weights

from mistralrs.plugins.mixtral.config import MixtralConfig

GGUF_MIXTRAL_BLOCK_NAMES = {**GGUF_BLOCK_NAMES, "ffn_gate_inp": "mlp.gate"}
_GGUF_MERGED = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$")
_GGUF_PER_EXPERT = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.(\d+)\.weight$")
_HF_EXPERT = re.compile(r"^model\.layers\.(\d+)\.block_sparse_moe\.experts\.(\d+)\.(w1|w2|w3)\.weight$")
_HF_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")
_HF_W = {"w1": "gate", "w3": "up", "w2": "down"}


def expert_target(layer: int | str, expert: int | str, proj: str) -> str:
    return f"model.layers.{layer}.mlp.experts.{expert}.{proj}_proj.weight"


def split_rows(raw: RawTensor, start: int, stop: int) -> RawTensor:
    """Rows ``start:stop`` (along dimension 0) of a float or block-quantized tensor: rows are whole
    blocks, so this is lossless either way."""
    per_row = raw.data.numel() // raw.shape[0]  # elements, or bytes when quantized
    data = raw.data.reshape(-1)[start * per_row: stop * per_row]
    return RawTensor(f"{raw.name}[{start}:{stop}]", raw.qtype, (stop - start, *raw.shape[1:]), data)


def split_experts(raw: RawTensor) -> Iterator[RawTensor]:
    """A [experts, out, in] tensor -> one [out, in] tensor per expert."""
    for e in range(raw.shape[0]):
        part = split_rows(raw, e, e + 1)
        yield RawTensor(f"{raw.name}[{e}]", raw.qtype, raw.shape[1:], part.data)


def mixtral_gguf_weights(ckpt: Any, cfg: MixtralConfig) -> Iterator[tuple[str, RawTensor]]:
    for name, raw in gguf_weights(ckpt, cfg, unpermute_rope=True, block_names=GGUF_MIXTRAL_BLOCK_NAMES):
        if m := _GGUF_MERGED.match(name):
            layer, proj = m.groups()
            for e, part in enumerate(split_experts(raw)):
                yield expert_target(layer, e, proj), part
        elif m := _GGUF_PER_EXPERT.match(name):
            layer, proj, e = m.groups()
            yield expert_target(layer, e, proj), raw
        else:
            yield name, raw


def mixtral_hf_weights(ckpt: Any, cfg: MixtralConfig) -> Iterator[tuple[str, RawTensor]]:
    inter = cfg.intermediate_size
    for name, raw in hf_weights(ckpt):
        if m := _HF_EXPERT.match(name):
            layer, e, w = m.groups()
            yield expert_target(layer, e, _HF_W[w]), raw
        elif m := _HF_FUSED.match(name):
            layer, kind = m.groups()
            for e, part in enumerate(split_experts(raw)):
                if kind == "down_proj":
                    yield expert_target(layer, e, "down"), part
                else:
                    yield expert_target(layer, e, "gate"), split_rows(part, 0, inter)
                    yield expert_target(layer, e, "up"), split_rows(part, inter, 2 * inter)
        else:
            yield name.replace(".block_sparse_moe.gate.", ".mlp.gate."), raw
