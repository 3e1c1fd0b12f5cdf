"""The built-in families are plugins: Hydra presets, `task=plugins`, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cli_helpers import run_cli
from conftest import GEMMA3_SHA256, GEMMA3_SOURCE

FAMILIES = ("llama", "mistral", "mixtral", "gemma", "gemma2", "gemma3", "qwen2", "qwen3", "qwen3moe", "phi3")


@pytest.mark.parametrize("family", FAMILIES)
def test_preset(family):
    from mistralrs.engine.config import compose_config

    cfg = compose_config([f"model={family}"])
    assert cfg.model.name == family and cfg.model.architecture == family


def test_gemma3_preset_is_the_pypi_file():
    from mistralrs.engine.config import compose_config

    cfg = compose_config(["model=gemma3"])
    assert cfg.model.source == GEMMA3_SOURCE and cfg.model.sha256 == GEMMA3_SHA256


def test_task_plugins_lists_the_families():
    result = run_cli("task=plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for plugin in ("mistral", "mixtral", "gemma", "qwen", "phi3"):
        assert any(line.split()[:1] == [plugin] and line.rstrip().endswith("ok") for line in lines), result.stdout
    for arch, gguf in [("mistral", "llama"), ("mixtral", "llama"), ("gemma", "gemma"), ("gemma2", "gemma2"), ("gemma3", "gemma3"),
                      ("qwen2", "qwen2"), ("qwen3", "qwen3"), ("qwen3moe", "qwen3moe"),
                      ("phi3", "phi3")]:
        assert any(line.split()[:1] == [arch] and f"gguf={gguf}" in line for line in lines), result.stdout


def test_registering_the_families_imports_no_model_code():
    code = ("import sys; from mistralrs.registry import registries; r = registries(); "
            "assert {'mistral', 'mixtral', 'gemma', 'gemma2', 'gemma3', 'qwen2', 'qwen3', 'qwen3moe', 'phi3'} <= set(r.architectures.names()); "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('mistralrs.plugins.') "
            "and m.count('.') > 2))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
