"""A third-party family: Llama's architecture under its own name, with its own Hydra preset."""

from mistralrs.conf.schema import ModelConfig
from mistralrs.registry import ArchitectureSpec, hookimpl


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec(
        name="toy",
        family="mistralrs_toy.family:family",
        hf_architectures=("ToyForCausalLM",),
        description="out-of-tree test family",
    ))


@hookimpl
def register_configs(config_store):
    config_store.store(group="model", name="toy", node=ModelConfig(name="toy", architecture="toy"))
