"""The plugin contracts (registry/interfaces.py): the built-in objects implement them, and a plugin's
object that lacks a member is refused at first use with an error naming each missing member."""

from __future__ import annotations

import types

import pytest

from mistralrs.registry import ArchitectureSpec, PluginHost, hookimpl
from mistralrs.registry.interfaces import (AdaptedLinear, CausalLM, Checkpoint, ContractError, Family,
                                           missing_members)

pytest.importorskip("transformers")


class HalfAFamily:
    """Names and parses, but cannot build a model or say its weights."""

    name = "half"

    def config(self, ckpt):
        return {}


half_family = HalfAFamily()


def test_missing_members_are_named():
    assert missing_members(half_family, Family) == ["build", "configure", "tied", "weights"]


def test_builtin_objects_implement_their_contracts(tmp_path):
    from tiny_models import make_tiny_llama

    from mistralrs.engine.formats.safetensors_dir import SafetensorsCheckpoint
    from mistralrs.engine.llama_base.family import LlamaFamily

    make_tiny_llama(tmp_path / "m")
    ckpt = SafetensorsCheckpoint(tmp_path / "m")
    family = LlamaFamily()
    cfg = family.config(ckpt)
    assert isinstance(ckpt, Checkpoint) and isinstance(family, Family)
    assert isinstance(family.build(cfg), CausalLM)


def test_lora_wrapped_linear_is_an_adapted_linear():
    import torch

    from mistralrs.engine.layers.linear import Linear, base_layer
    from mistralrs.plugins.xlora.lora_files import LoraModule
    from mistralrs.plugins.xlora.lora_linear import AdapterTerm, LoraLinear

    base = Linear(4, 3)
    base.weight = torch.nn.Parameter(torch.zeros(3, 4), requires_grad=False)
    term = AdapterTerm(0, LoraModule(torch.zeros(2, 4), torch.zeros(3, 2), 1.0))
    wrapped = LoraLinear(base, [term], torch.device("cpu"), torch.float32)
    assert isinstance(wrapped, AdaptedLinear) and not isinstance(base, AdaptedLinear)
    assert base_layer(wrapped) is base and base_layer(base) is base


def test_a_family_lacking_members_is_refused_naming_them(tmp_path):
    """Through the loader, as a user meets it: one error naming the plugin's family and what it lacks."""
    from tiny_models import make_tiny_llama

    from mistralrs.conf.schema import ModelConfig
    from mistralrs.engine.errors import user_facing
    from mistralrs.engine.loading.loader import load_model

    plugin = types.ModuleType("halfplugin")

    @hookimpl
    def register_architectures(register):
        register(ArchitectureSpec(name="half", family=f"{__name__}:half_family", hf_architectures=("HalfForCausalLM",)))

    plugin.register_architectures = register_architectures
    regs = PluginHost(extra_plugins=[("halfplugin", plugin)]).registries
    make_tiny_llama(tmp_path / "m")
    config = tmp_path / "m" / "config.json"
    config.write_text(config.read_text().replace("LlamaForCausalLM", "HalfForCausalLM"))
    with pytest.raises(ContractError) as err:
        load_model(ModelConfig(source=str(tmp_path / "m"), architecture="half", dtype="float32"), regs)
    message = user_facing(err.value)
    assert message is not None and "'half'" in message
    assert "missing build, configure, tied, weights" in message
