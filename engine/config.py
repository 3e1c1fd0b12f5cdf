"""Hydra plumbing shared by the CLI and the Python API: registration and composition."""

from __future__ import annotations

import threading
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from mistralrs.conf.schema import Config, register_schema

_registered = False
_lock = threading.Lock()


def register_configs(strict_plugins: bool = False) -> None:
    """Put the schema and every plugin's presets into Hydra's ConfigStore (once per process)."""
    global _registered
    from hydra.core.config_store import ConfigStore

    from mistralrs.registry import plugin_host

    with _lock:
        if _registered:
            return
        store = ConfigStore.instance()
        register_schema(store)
        plugin_host(strict=strict_plugins).register_configs(store)
        _registered = True


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The same configuration ``mistralrs <overrides>`` would run with."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    if GlobalHydra.instance().is_initialized():
        raise RuntimeError("mistralrs.load() cannot compose its config inside a running Hydra app; "
                           "pass the composed config to mistralrs.engine.api.LLM.from_config instead")
    from mistralrs.engine.quant.quantize_types import quote_width_overrides

    with initialize_config_module(config_module="mistralrs.conf", version_base="1.3"):
        return compose(config_name="config", overrides=quote_width_overrides(list(overrides)))


def to_schema(cfg: DictConfig | Any) -> Config:
    """A typed view (dataclass instance) of a composed config; raises on missing mandatory values."""
    return OmegaConf.to_object(cfg) if isinstance(cfg, DictConfig) else cfg
