"""Mixture-of-experts tensors, for every family with experts (Mixtral, Qwen3-MoE): split into
``model.layers.{i}.mlp.experts.{e}.{gate,up,down}_proj.weight``, the names of
:class:`~mistralrs.engine.layers.moe.SparseMoE`'s expert MLPs.

Layouts read:
- GGUF merged (llama.cpp today): ``blk.{i}.ffn_{gate,up,down}_exps.weight``, one 3-D tensor
  [experts, out, in] per projection, split here into per-expert tensors (whole rows, so quantized
  blocks split losslessly);
- GGUF per expert (older files): ``blk.{i}.ffn_{gate,up,down}.{e}.weight``;
- HF fused (transformers 5): ``mlp.experts.gate_up_proj`` [experts, 2 * inter, hidden] and
  ``mlp.experts.down_proj`` [experts, hidden, inter].
"""

from __future__ import annotations

import re
from typing import Iterator

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.formats.transforms import split_row_blocks

__all__ = ["expert_target", "gguf_expert_tensors", "hf_fused_expert_tensors", "split_experts"]

_GGUF_MERGED = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)_exps\.weight$")
_GGUF_PER_EXPERT = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.(\d+)\.weight$")
_HF_FUSED = re.compile(r"^model\.layers\.(\d+)\.mlp\.experts\.(gate_up_proj|down_proj)$")


def expert_target(layer: int | str, expert: int | str, proj: str) -> str:
    return f"model.layers.{layer}.mlp.experts.{expert}.{proj}_proj.weight"


def split_experts(raw: RawTensor) -> Iterator[RawTensor]:
    """A [experts, out, in] tensor -> one [out, in] tensor per expert (whole rows of blocks: lossless
    for quantized tensors too)."""
    for e, part in enumerate(split_row_blocks(raw, (1,) * raw.shape[0])):
        yield RawTensor(f"{raw.name}[{e}]", raw.qtype, raw.shape[1:], part.data)


def gguf_expert_tensors(name: str, raw: RawTensor) -> Iterator[tuple[str, RawTensor]] | None:
    """The per-expert tensors of a GGUF expert tensor (merged or per expert), or None for another."""
    if m := _GGUF_MERGED.match(name):
        layer, proj = m.groups()
        return ((expert_target(layer, e, proj), part) for e, part in enumerate(split_experts(raw)))
    if m := _GGUF_PER_EXPERT.match(name):
        layer, proj, e = m.groups()
        return iter([(expert_target(layer, e, proj), raw)])
    return None


def hf_fused_expert_tensors(name: str, raw: RawTensor, inter: int) -> Iterator[tuple[str, RawTensor]] | None:
    """The per-expert tensors of transformers 5's fused expert tensors (``inter``: each expert's
    intermediate size), or None for another tensor."""
    m = _HF_FUSED.match(name)
    if m is None:
        return None
    layer, kind = m.groups()

    def parts() -> Iterator[tuple[str, RawTensor]]:
        for e, part in enumerate(split_experts(raw)):
            if kind == "down_proj":
                yield expert_target(layer, e, "down"), part
            else:
                gate, up = split_row_blocks(part, (inter, part.shape[0] - inter))
                yield expert_target(layer, e, "gate"), gate
                yield expert_target(layer, e, "up"), up

    return parts()
