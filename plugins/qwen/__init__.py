"""The Qwen family plugin: Qwen2 / Qwen2.5, Qwen3 and Qwen3-MoE, all Llama-shaped.

Importing this module is cheap: families are named by lazy paths, torch is not imported.
"""

from mistralrs.conf.schema import ModelConfig
from mistralrs.registry import ArchitectureSpec, hookimpl


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec(
        name="qwen2",
        family="mistralrs.plugins.qwen.family:qwen2",
        gguf_architectures=("qwen2",),
        hf_architectures=("Qwen2ForCausalLM",),
        description="Qwen2 / Qwen2.5: Llama with biases on the q/k/v projections",
    ))
    register(ArchitectureSpec(
        name="qwen3",
        family="mistralrs.plugins.qwen.family:qwen3",
        gguf_architectures=("qwen3",),
        hf_architectures=("Qwen3ForCausalLM",),
        description="Qwen3: Llama with RMSNorm on each query and key head, head_dim set on its own",
    ))
    register(ArchitectureSpec(
        name="qwen3moe",
        family="mistralrs.plugins.qwen.family:qwen3moe",
        gguf_architectures=("qwen3moe",),
        hf_architectures=("Qwen3MoeForCausalLM",),
        description="Qwen3-MoE: Qwen3 with top-k routed SwiGLU experts, no shared expert",
    ))


@hookimpl
def register_configs(config_store):
    for name in ("qwen2", "qwen3", "qwen3moe"):
        config_store.store(group="model", name=name, node=ModelConfig(name=name, architecture=name))
