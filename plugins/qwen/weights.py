"""GGUF tensor names of Qwen2 and Qwen3 (HF names are the module names already).

llama.cpp runs both with NEOX-style RoPE, so its converter leaves Q/K rows in HF order: nothing to
un-permute. Biases use the weights' names with ``.bias``.
"""

from __future__ import annotations

from mistralrs.engine.llama_base.weights import GGUF_BLOCK_NAMES

GGUF_QWEN2_BLOCK_NAMES = GGUF_BLOCK_NAMES
GGUF_QWEN3_BLOCK_NAMES = {**GGUF_BLOCK_NAMES, "attn_q_norm": "self_attn.q_norm", "attn_k_norm": "self_attn.k_norm"}
GGUF_QWEN3MOE_BLOCK_NAMES = {**GGUF_QWEN3_BLOCK_NAMES, "ffn_gate_inp": "mlp.gate"}
