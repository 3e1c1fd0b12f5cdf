"""The Mixtral family plugin: Mistral with a sparse mixture-of-experts MLP.

llama.cpp writes Mixtral GGUF files as ``general.architecture = llama`` with ``llama.expert_count``;
the Llama and Mistral families hand such files to this one.
"""

from mistralrs.conf.schema import ModelConfig
from mistralrs.registry import ArchitectureSpec, hookimpl


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec(
        name="mixtral",
        family="mistralrs.plugins.mixtral.family:family",
        gguf_architectures=("llama",),
        hf_architectures=("MixtralForCausalLM",),
        description="Mixtral: Mistral with top-k routed experts (sparse MoE)",
    ))


@hookimpl
def register_configs(config_store):
    config_store.store(group="model", name="mixtral", node=ModelConfig(name="mixtral", architecture="mixtral"))
