"""The plugin system: entry points, duplicate names, broken plugins, out-of-tree families."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from cli_helpers import run_cli
from plugin_helpers import install_plugins
from mistralrs.registry import (ArchitectureSpec, DuplicateRegistration, PluginHost, PluginLoadError, UnknownName,
                                hookimpl)


def test_builtins_come_through_entry_points():
    regs = PluginHost().registries
    assert "llama" in regs.architectures
    assert {"gguf", "safetensors"} <= set(regs.formats.names())
    assert {"Q4_0", "Q4_1", "Q8_0", "Q4_K", "Q6_K", "F16"} <= set(regs.quant_types.names())
    entry = regs.architectures.registered("llama")
    assert entry.plugin == "llama" and entry.origin.startswith("mistralrs-py")


def test_duplicate_registration_names_both_plugins():
    impostor = types.ModuleType("impostor")

    @hookimpl
    def register_architectures(register):
        register(ArchitectureSpec(name="llama", family="x:y", gguf_architectures=("llama",)))

    impostor.register_architectures = register_architectures
    host = PluginHost(extra_plugins=[("impostor", impostor)])
    with pytest.raises(DuplicateRegistration) as err:
        host.registries
    assert "'llama'" in str(err.value) and "'impostor'" in str(err.value)


def test_unknown_architecture_lists_known_ones():
    regs = PluginHost().registries
    with pytest.raises(UnknownName) as err:
        regs.architecture_for(gguf="falcon")
    assert "falcon" in str(err.value) and "llama" in str(err.value)


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory) -> Path:
    """The out-of-tree plugin packages in tests/plugins, pip-installed into a private directory."""
    return install_plugins(tmp_path_factory.mktemp("site"), "toy", "broken")


def test_out_of_tree_plugin_is_listed_and_broken_one_skipped(plugin_site):
    result = run_cli("task=plugins", extra_path=plugin_site)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "toy" in out and "mistralrs-toy 0.0.1" in out and "ToyForCausalLM" in out
    assert "broken" in out and "FAILED" in out and "broken on purpose" in out
    assert "Traceback" not in result.stderr


def test_strict_mode_makes_a_broken_plugin_fatal(plugin_site):
    result = run_cli("task=plugins", "engine.strict_plugins=true", extra_path=plugin_site)
    assert result.returncode == 2
    assert "plugin 'broken' failed to load" in result.stderr
    assert "Traceback" not in result.stderr


def test_strict_host_raises_plugin_load_error(plugin_site, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin_site))
    with pytest.raises(PluginLoadError, match="broken"):
        PluginHost(strict=True)


def test_out_of_tree_family_generates(plugin_site, tmp_path):
    pytest.importorskip("transformers")
    import json

    from tiny_models import make_tiny_llama

    model_dir = tmp_path / "toy-model"
    make_tiny_llama(model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    config["architectures"] = ["ToyForCausalLM"]
    (model_dir / "config.json").write_text(json.dumps(config))
    result = run_cli("task=generate", "model=toy", f"model.source={model_dir}", "prompt=hi",
                     "sampling.max_tokens=4", "sampling.temperature=0", "log_level=INFO", extra_path=plugin_site)
    assert result.returncode == 0, result.stderr
    assert "(toy, safetensors)" in result.stderr
