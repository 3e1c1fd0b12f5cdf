"""The Mixtral family plugin: Mistral with a sparse mixture-of-experts MLP.

llama.cpp writes Mixtral GGUF files as ``general.architecture = llama`` with ``llama.expert_count``;
this family claims such files (``gguf_claim``) whichever preset loads them.
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
        gguf_claim="mistralrs.plugins.mixtral:has_experts",
    ))


def has_experts(metadata: dict) -> bool:
    """A GGUF file whose architecture declares an expert count is a mixture of experts. A count that
    is not a number is claimed too, so that the Mixtral config refuses it by name."""
    arch = metadata.get("general.architecture")
    return metadata.get(f"{arch}.expert_count") not in (None, 0)


@hookimpl
def register_configs(config_store):
    config_store.store(group="model", name="mixtral", node=ModelConfig(name="mixtral", architecture="mixtral"))
