"""LoRA and X-LoRA adapters as a plugin: ``adapter=lora`` and ``adapter=xlora``.

Importing this module is cheap: the adapters are named by lazy paths, torch is not imported.
"""

from mistralrs.conf.schema import AdapterConfig
from mistralrs.registry import AdapterSpec, hookimpl


@hookimpl
def register_adapters(register):
    register(AdapterSpec(name="lora", apply="mistralrs.plugins.xlora.apply:apply_lora",
                         description="PEFT LoRA adapters on any linear layer, merged at load or applied per call"))
    register(AdapterSpec(name="xlora", apply="mistralrs.plugins.xlora.apply:apply_xlora",
                         description="X-LoRA: LoRA adapters mixed per token by a classifier (dual KV cache)"))


@hookimpl
def register_configs(config_store):
    config_store.store(group="adapter", name="lora", node=AdapterConfig(kind="lora"))
    config_store.store(group="adapter", name="xlora", node=AdapterConfig(kind="xlora"))
