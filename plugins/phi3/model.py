"""The Phi-3 architecture: Llama with a sliding window on every attention layer.

The fused ``qkv_proj`` and ``gate_up_proj`` weights are split into q/k/v and gate/up at load
(plugins/phi3/weights.py): the engine's linear groups fuse them back into one product per group (on
the module path and in the native decode stack), so nothing else differs. LongRoPE, its attention
factor and partial rotary are all in the RoPE tables (engine/layers/rope.py), which both decode paths
take as they are.
"""

from __future__ import annotations

from mistralrs.engine.llama_base.model import LlamaAttention, LlamaDecoderLayer, LlamaForCausalLM

from mistralrs.plugins.phi3.config import Phi3Config
from mistralrs.plugins.phi3.weights import FUSED_LINEARS


class Phi3Attention(LlamaAttention):
    def __init__(self, cfg: Phi3Config, layer: int):
        super().__init__(cfg, layer)
        self.window = cfg.sliding_window
        # HF's Phi-3 holds o_proj before qkv_proj: PEFT numbers X-LoRA layers in that traversal order
        rest = {name: m for name, m in self._modules.items() if name != "o_proj"}
        self._modules = {"o_proj": self.o_proj, **rest}


class Phi3DecoderLayer(LlamaDecoderLayer):
    attention = Phi3Attention


class Phi3ForCausalLM(LlamaForCausalLM):
    decoder_layer = Phi3DecoderLayer
    # adapters trained on the checkpoint's fused modules apply to these parts (plugins/xlora)
    fused_linears = FUSED_LINEARS
