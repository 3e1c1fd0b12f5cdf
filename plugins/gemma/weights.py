"""GGUF tensor names of Gemma, Gemma 2 and Gemma 3 (HF names are the module names already).

llama.cpp runs Gemma with NEOX-style RoPE, so its converter leaves Q/K rows in HF order: nothing
to un-permute.
"""

from __future__ import annotations

from mistralrs.engine.llama_base.weights import GGUF_BLOCK_NAMES

GGUF_GEMMA_BLOCK_NAMES = GGUF_BLOCK_NAMES
GGUF_GEMMA2_BLOCK_NAMES = {
    **GGUF_BLOCK_NAMES,
    "post_attention_norm": "post_attention_layernorm",  # applied to the attention output
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}
GGUF_GEMMA3_BLOCK_NAMES = {
    **GGUF_GEMMA2_BLOCK_NAMES,
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
}
