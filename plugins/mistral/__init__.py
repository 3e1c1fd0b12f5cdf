"""The Mistral family plugin: Llama with sliding-window attention.

GGUF files of Mistral models say ``general.architecture = llama`` and carry no window (llama.cpp's
converter drops it), so ``model=mistral`` accepts them and runs full attention unless
``model.sliding_window`` is set — as llama.cpp does.
"""

from mistralrs.conf.schema import ModelConfig
from mistralrs.registry import ArchitectureSpec, hookimpl


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec(
        name="mistral",
        family="mistralrs.plugins.mistral.family:family",
        gguf_architectures=("llama",),
        hf_architectures=("MistralForCausalLM",),
        description="Mistral: Llama with sliding-window attention",
    ))


@hookimpl
def register_configs(config_store):
    config_store.store(group="model", name="mistral", node=ModelConfig(name="mistral", architecture="mistral"))
