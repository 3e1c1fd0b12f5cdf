"""The Phi-3 family plugin: Phi-3, Phi-3.5 and Phi-4-mini (``Phi3ForCausalLM``), Llama-shaped.

Importing this module is cheap: the family is named by a lazy path, torch is not imported.
"""

from mistralrs.conf.schema import ModelConfig
from mistralrs.registry import ArchitectureSpec, hookimpl


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec(
        name="phi3",
        family="mistralrs.plugins.phi3.family:phi3",
        gguf_architectures=("phi3",),
        hf_architectures=("Phi3ForCausalLM",),
        description="Phi-3 / 3.5 / 4-mini: Llama with fused qkv and gate/up weights, LongRoPE, partial rotary, "
                    "sliding window",
    ))


@hookimpl
def register_configs(config_store):
    config_store.store(group="model", name="phi3", node=ModelConfig(name="phi3", architecture="phi3"))
