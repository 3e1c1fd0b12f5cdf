"""Llama hyper-parameters from GGUF metadata or an HF config.json.

The other Llama-shaped families (Mistral, Mixtral, Gemma) subclass :class:`LlamaConfig` and build on
``llama_fields_from_gguf`` / ``llama_fields_from_hf``, adding only what their architecture adds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from mistralrs.engine.layers.mlp import hf_activation
from mistralrs.engine.layers.rope import RopeConfig


class ConfigError(ValueError):
    pass


@dataclass
class LlamaConfig:
    architecture: ClassVar[str] = "llama"  # the registered family that runs this config

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
    hidden_act: str = "silu"  # engine activation name (engine.layers.mlp.ACTIVATIONS)
    norm_offset: float = 0.0  # RMSNorm scales by (offset + weight); Gemma's HF checkpoints store weight - 1
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> "LlamaConfig":
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        # NaN fails every comparison, so "not (x > 0)" refuses it along with zero and negatives
        for name, value in (("rms_norm_eps", self.rms_norm_eps), ("rope theta (freq_base)", self.rope.theta)):
            if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        return self


def need(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise ConfigError(f"GGUF metadata lacks {key!r}")
    return meta[key]



def gguf_rope(meta: dict[str, Any], arch: str, head_dim: int, theta_key: str = "rope.freq_base",
              default_theta: float = 10000.0) -> RopeConfig:
    p = f"{arch}."
    scaling_type = meta.get(p + "rope.scaling.type", "none")
    if scaling_type not in ("none", "linear"):
        raise ConfigError(f"unsupported rope scaling type {scaling_type!r} in GGUF metadata")
    return RopeConfig(
        dim=int(meta.get(p + "rope.dimension_count", head_dim)),
        theta=float(meta.get(p + theta_key, default_theta)),
        scaling="linear" if scaling_type == "linear" else "none",
        factor=float(meta.get(p + "rope.scaling.factor", 1.0) or 1.0),
    )


def llama_fields_from_gguf(meta: dict[str, Any], arch: str = "llama") -> dict[str, Any]:
    p = f"{arch}."
    hidden = int(need(meta, p + "embedding_length"))
    heads = int(need(meta, p + "attention.head_count"))
    kv_heads = meta.get(p + "attention.head_count_kv", heads)
    head_dim = int(meta.get(p + "attention.key_length", hidden // heads))
    vocab = meta.get(p + "vocab_size") or len(meta.get("tokenizer.ggml.tokens") or [])
    return dict(
        vocab_size=int(vocab),
        hidden_size=hidden,
        intermediate_size=int(need(meta, p + "feed_forward_length")),
        num_layers=int(need(meta, p + "block_count")),
        num_heads=heads,
        num_kv_heads=int(kv_heads),
        head_dim=head_dim,
        rms_norm_eps=float(meta.get(p + "attention.layer_norm_rms_epsilon", 1e-5)),
        rope=gguf_rope(meta, arch, head_dim),
        max_position_embeddings=int(meta.get(p + "context_length", 4096)),
    )


def config_from_gguf(meta: dict[str, Any], arch: str = "llama") -> LlamaConfig:
    return LlamaConfig(**llama_fields_from_gguf(meta, arch)).validate()


def hf_rope(cfg: dict[str, Any], head_dim: int, params: dict[str, Any] | None = None) -> RopeConfig:
    """transformers < 5 keeps rope_theta / rope_scaling at the top level; 5 nests them in rope_parameters.
    ``params`` picks one entry of a per-layer-type ``rope_parameters`` (Gemma 3)."""
    if params is None:
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


def llama_fields_from_hf(cfg: dict[str, Any]) -> dict[str, Any]:
    """The Llama hyper-parameters of an HF config.json (KeyError when a required one is absent)."""
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    head_dim = int(cfg.get("head_dim") or hidden // heads)
    return dict(
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
        hidden_act=hf_activation(cfg.get("hidden_act") or cfg.get("hidden_activation") or "silu"),
    )


def parse_hf(build, cfg: dict[str, Any]):
    """Run ``build(cfg)``, turning a missing key or a bad value into a ConfigError that names it."""
    try:
        return build(cfg).validate()
    except KeyError as exc:
        raise ConfigError(f"config.json lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config.json has a bad value: {exc}") from None


def config_from_hf(cfg: dict[str, Any]) -> LlamaConfig:
    return parse_hf(lambda c: LlamaConfig(**llama_fields_from_hf(c)), cfg)
