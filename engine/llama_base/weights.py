"""Checkpoint tensor names -> module parameter names for the Llama family (and those built on it)."""

from __future__ import annotations

import re
from typing import Any, Iterator

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.engine.formats.transforms import unpermute_gguf_rope_rows

from mistralrs.engine.llama_base.config import LlamaConfig

# GGUF block tensor suffix -> HF-style module path inside model.layers.{i}
GGUF_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
GGUF_TOP_NAMES = {
    "token_embd": "model.embed_tokens",
    "output_norm": "model.norm",
    "output": "lm_head",
}
LONGROPE_FACTORS = ("rope_factors_short.weight", "rope_factors_long.weight")  # GGUF LongRoPE (Phi-3)
GGUF_NOT_PARAMETERS = {"rope_freqs.weight", *LONGROPE_FACTORS}  # read into the config instead
_BLOCK = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.(weight|bias)$")


def gguf_target(name: str, block_names: dict[str, str] = GGUF_BLOCK_NAMES,
                top_names: dict[str, str] = GGUF_TOP_NAMES) -> str | None:
    if m := _BLOCK.match(name):
        layer, part, kind = m.groups()
        return f"model.layers.{layer}.{block_names[part]}.{kind}" if part in block_names else None
    stem, _, kind = name.rpartition(".")
    return f"{top_names[stem]}.{kind}" if stem in top_names else None


def gguf_weights(ckpt: Any, cfg: LlamaConfig, unpermute_rope: bool = True,
                 block_names: dict[str, str] = GGUF_BLOCK_NAMES) -> Iterator[tuple[str, RawTensor]]:
    """``unpermute_rope``: llama.cpp's converter interleaves Q/K rows for the architectures it runs
    with "normal" RoPE (llama and its GGUF kin); NEOX-RoPE ones (Gemma) are stored as in HF."""
    for name in ckpt.tensor_names():
        if name in GGUF_NOT_PARAMETERS:
            continue
        raw = ckpt.tensor(name)
        target = gguf_target(name, block_names)
        if target is None:
            yield name, raw  # the loader reports it as unexpected
            continue
        if unpermute_rope and target.endswith("self_attn.q_proj.weight") and _whole_heads(raw, cfg.num_heads):
            raw = unpermute_gguf_rope_rows(raw, cfg.num_heads)
        elif unpermute_rope and target.endswith("self_attn.k_proj.weight") and _whole_heads(raw, cfg.num_kv_heads):
            raw = unpermute_gguf_rope_rows(raw, cfg.num_kv_heads)
        yield target, raw  # of any other shape: the loader refuses it, naming the shape it expected


def _whole_heads(raw: RawTensor, heads: int) -> bool:
    """A 2-D projection whose rows are ``heads`` heads of an even size (what the rows' reordering needs)."""
    return len(raw.shape) == 2 and raw.shape[0] > 0 and raw.shape[0] % (2 * heads) == 0


def hf_weights(ckpt: Any) -> Iterator[tuple[str, RawTensor]]:
    for name in ckpt.tensor_names():
        if name.endswith("rotary_emb.inv_freq"):  # a buffer some old checkpoints saved
            continue
        yield name, ckpt.tensor(name)
