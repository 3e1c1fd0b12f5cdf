"""Llama hyper-parameters from GGUF metadata or an HF config.json."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mistralrs.engine.layers.rope import RopeConfig


class ConfigError(ValueError):
    pass


@dataclass
class LlamaConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope: RopeConfig
    max_position_embeddings: int
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "LlamaConfig":
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        return self


def _need(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise ConfigError(f"GGUF metadata lacks {key!r}")
    return meta[key]


def config_from_gguf(meta: dict[str, Any], arch: str = "llama") -> LlamaConfig:
    p = f"{arch}."
    hidden = int(_need(meta, p + "embedding_length"))
    heads = int(_need(meta, p + "attention.head_count"))
    kv_heads = meta.get(p + "attention.head_count_kv", heads)
    head_dim = int(meta.get(p + "attention.key_length", hidden // heads))
    vocab = meta.get(p + "vocab_size") or len(meta.get("tokenizer.ggml.tokens") or [])
    scaling_type = meta.get(p + "rope.scaling.type", "none")
    rope = RopeConfig(
        dim=int(meta.get(p + "rope.dimension_count", head_dim)),
        theta=float(meta.get(p + "rope.freq_base", 10000.0)),
        scaling="linear" if scaling_type == "linear" else "none",
        factor=float(meta.get(p + "rope.scaling.factor", 1.0) or 1.0),
    )
    if scaling_type not in ("none", "linear"):
        raise ConfigError(f"unsupported rope scaling type {scaling_type!r} in GGUF metadata")
    return LlamaConfig(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(_need(meta, p + "feed_forward_length")),
        num_layers=int(_need(meta, p + "block_count")),
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=head_dim,
        rms_norm_eps=float(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
        rope=rope,
        max_position_embeddings=int(meta.get(p + "context_length", 4096)),
    ).validate()


def hf_rope(cfg: dict[str, Any], head_dim: int) -> RopeConfig:
    """transformers < 5 keeps rope_theta / rope_scaling at the top level; 5 nests them in rope_parameters."""
    params = dict(cfg.get("rope_parameters") or {})
    scaling = dict(cfg.get("rope_scaling") or {})
    merged = {**scaling, **params}
    theta = merged.get("rope_theta", cfg.get("rope_theta", 10000.0))
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    kind = {"default": "none"}.get(kind, kind)
    partial = float(cfg.get("partial_rotary_factor", 1.0))
    return RopeConfig(
        dim=int(head_dim * partial),
        theta=float(theta),
        scaling=kind,
        factor=float(merged.get("factor", 1.0)),
        low_freq_factor=float(merged.get("low_freq_factor", 1.0)),
        high_freq_factor=float(merged.get("high_freq_factor", 4.0)),
        original_max_position=int(merged.get("original_max_position_embeddings", cfg.get("max_position_embeddings", 8192))),
    )


def config_from_hf(cfg: dict[str, Any]) -> LlamaConfig:
    try:
        hidden = int(cfg["hidden_size"])
        heads = int(cfg["num_attention_heads"])
        head_dim = int(cfg.get("head_dim") or hidden // heads)
        return LlamaConfig(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=hidden,
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=head_dim,
            rms_norm_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            rope=hf_rope(cfg, head_dim),
            max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)),
            tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
        ).validate()
    except KeyError as exc:
        raise ConfigError(f"config.json lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config.json has a bad value: {exc}") from None
