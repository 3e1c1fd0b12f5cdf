"""Hydra plumbing shared by the CLI and the Python API: registration and composition."""

from __future__ import annotations

import threading
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from mistralrs.conf.schema import BenchConfig, Config, ServeConfig, register_schema

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


def validate_config(config: Config) -> None:
    """Reject bad values of the composed config before anything loads (a bad sampling value found
    after minutes of loading is a bad first experience). Raises ValueError naming the setting."""
    from mistralrs.conf.schema import SamplingConfig
    from mistralrs.engine.tools.parsers import TOOL_PARSERS

    checks = [
        ("model.dtype", config.model.dtype in ("auto", "float32", "bfloat16", "float16", "f32", "bf16", "f16"),
         "auto, float32, bfloat16 or float16"),
        ("model.weights", config.model.weights in ("auto", "packed", "dense"), "auto, packed or dense"),
        ("model.max_seq_len", config.model.max_seq_len is None or config.model.max_seq_len >= 1, ">= 1"),
        ("engine.threads", config.engine.threads is None or config.engine.threads >= 1, ">= 1 (or unset: all cores)"),
        ("engine.max_seqs", config.engine.max_seqs >= 1, ">= 1"),
        ("engine.max_batch_tokens", config.engine.max_batch_tokens >= 1, ">= 1"),
        ("engine.block_size", config.engine.block_size >= 1, ">= 1"),
        ("engine.kv_cache_memory_gb", config.engine.kv_cache_memory_gb > 0, "> 0"),
        ("engine.kv_cache_dtype", config.engine.kv_cache_dtype in ("auto", "float32", "float16", "bfloat16", "q8_0"),
         "auto, float32, float16, bfloat16 or q8_0"),
        ("serve.port", 0 <= config.serve.port <= 65535, "in [0, 65535]"),
        ("bench.mode", config.bench.mode in ("engine", "served"), "engine or served"),
        ("serve.tool_parser", config.serve.tool_parser in ("auto", *TOOL_PARSERS), f"auto, {', '.join(TOOL_PARSERS)}"),
        ("serve.backend", config.serve.backend in ("local", "ray"), "local or ray"),
        ("serve.replicas", config.serve.replicas >= 1, ">= 1"),
        ("serve.replicas", config.serve.replicas == 1 or config.serve.backend == "ray",
         "1 with serve.backend=local (replicas need serve.backend=ray)"),
        ("serve.replica_cpus", config.serve.replica_cpus > 0, "> 0"),
        ("serve.replica_gpus", config.serve.replica_gpus >= 0, ">= 0"),
        ("serve.ray_app_name", bool(config.serve.ray_app_name.strip()), "a non-empty name"),
        ("serve.ray_startup_timeout_seconds", config.serve.ray_startup_timeout_seconds > 0, "> 0"),
        ("serve.ray_failover_seconds", config.serve.ray_failover_seconds > 0, "> 0"),
        ("serve.affinity_max_imbalance", config.serve.affinity_max_imbalance >= 0, ">= 0"),
        # a replica without GPUs reserved sees every GPU of its node: all would load onto cuda:0
        ("model.device", config.serve.backend != "ray" or config.serve.replica_gpus > 0
         or not config.model.device.startswith("cuda"),
         "cpu or auto with serve.backend=ray and serve.replica_gpus=0 (set serve.replica_gpus, e.g. 1 for one "
         "GPU per replica)"),
    ]
    for key, ok, allowed in checks:
        if not ok:
            raise ValueError(f"{key}={_value_of(config, key)!r} is invalid: it must be {allowed}")
    _refuse_unused(config)
    from mistralrs.engine.quant.quantize_types import resolve_isq_type

    resolve_isq_type(config.quant.type)  # raises naming the type and the known ones
    from mistralrs.engine.core.sampler import InvalidSamplingParam, SamplingParams

    sampling: SamplingConfig = config.sampling
    given = {name: getattr(sampling, name) for name in ("temperature", "top_k", "top_p", "min_p")
             if getattr(sampling, name) is not None}  # unset: the model's recommendation, checked at load
    try:
        SamplingParams(max_tokens=sampling.max_tokens, stop=list(sampling.stop), **given).validate()
    except InvalidSamplingParam as exc:
        raise ValueError(f"sampling.{exc.param}={getattr(sampling, exc.param)!r} is invalid: {exc}") from None


# settings that only serve.backend=ray (or the served benchmark) reads: given elsewhere, they are an error
RAY_ONLY_SERVE = ("ray_address", "replica_cpus", "replica_gpus", "ray_app_name", "ray_startup_timeout_seconds",
                  "ray_failover_seconds", "affinity_max_imbalance")


def _refuse_unused(config: Config) -> None:
    ray_rows = config.task == "bench" and bool(config.bench.ray_replicas)  # the bench's Ray servers take them
    if config.serve.backend != "ray" and not ray_rows:
        defaults = ServeConfig()
        for name in RAY_ONLY_SERVE:
            if getattr(config.serve, name) != getattr(defaults, name):
                raise ValueError(f"serve.{name}={getattr(config.serve, name)!r} applies to serve.backend=ray only "
                                 f"(serve.backend is {config.serve.backend!r})")
    if config.bench.ray_replicas and config.bench.mode != "served":
        raise ValueError("bench.ray_replicas applies to bench.mode=served only")
    if not config.bench.ray_replicas and config.bench.ray_replica_threads != BenchConfig().ray_replica_threads:
        raise ValueError("bench.ray_replica_threads applies to the rows of bench.ray_replicas, which is empty")


def _value_of(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def resolve_sampling(sampling: Any, recommended: dict[str, Any], source: str) -> Any:
    """``sampling.*`` with its unset values filled: the model file's recommendation, else the built-in
    default. Logs what the model recommended and was taken."""
    import dataclasses
    import logging

    from mistralrs.conf.schema import BUILTIN_SAMPLING

    taken = {name: value for name, value in recommended.items() if getattr(sampling, name, 0) is None}
    if taken:
        logging.getLogger(__name__).info("sampling from %s: %s", source,
                                         ", ".join(f"{k}={v}" for k, v in sorted(taken.items())))
    filled = {name: taken.get(name, default) for name, default in BUILTIN_SAMPLING.items()
              if getattr(sampling, name) is None}
    return dataclasses.replace(sampling, **filled)
