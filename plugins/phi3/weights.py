"""Phi-3's fused weights, split into the module's q/k/v and gate/up projections.

HF: ``self_attn.qkv_proj`` holds [q; k; v] rows and ``mlp.gate_up_proj`` [gate; up] (transformers
chunks it in two, gate first). GGUF (llama.cpp's converter): ``blk.N.attn_qkv`` the same [q; k; v]
(newer converters may write ``attn_q/k/v`` apart, read as Llama's) and ``blk.N.ffn_up`` [gate; up]
with 2 x feed_forward_length rows (llama.cpp's SwiGLU halves it, gate first), no ``ffn_gate``. Rows
split losslessly, quantized or not. llama.cpp runs Phi-3 with NEOX RoPE: Q/K rows stay in HF order.
"""

from __future__ import annotations

from typing import Iterable, Iterator

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.formats.transforms import split_row_blocks
from mistralrs.engine.llama_base.weights import GGUF_BLOCK_NAMES

from mistralrs.plugins.phi3.config import Phi3Config

GGUF_PHI3_BLOCK_NAMES = {**GGUF_BLOCK_NAMES, "attn_qkv": "self_attn.qkv_proj", "ffn_up": "mlp.gate_up_proj"}
# fused module (HF name) -> the module's projections, in the fused weight's row order
FUSED_LINEARS = {
    "self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
}


def fused_sizes(cfg: Phi3Config) -> dict[str, tuple[list[str], tuple[int, ...]]]:
    """Fused weight suffix -> (the parts' weight suffixes, their row counts)."""
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    rows = {"self_attn.qkv_proj": (q, kv, kv), "mlp.gate_up_proj": (cfg.intermediate_size, cfg.intermediate_size)}
    return {f"{fused}.weight": ([f"{part}.weight" for part in parts], rows[fused]) for fused, parts in FUSED_LINEARS.items()}


def split_fused(named: Iterable[tuple[str, RawTensor]], cfg: Phi3Config) -> Iterator[tuple[str, RawTensor]]:
    """The fused weights of ``named`` as their parts; other tensors (and a fused one of another row
    count, which the loader then refuses by name) pass as they are."""
    fused = fused_sizes(cfg)
    for name, raw in named:
        for suffix, (parts, sizes) in fused.items():
            if name.endswith("." + suffix) and len(raw.shape) == 2 and raw.shape[0] == sum(sizes):
                stem = name[: -len(suffix)]
                yield from ((stem + part, piece) for part, piece in zip(parts, split_row_blocks(raw, sizes)))
                break
        else:
            yield name, raw
