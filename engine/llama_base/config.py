"""Llama hyper-parameters from GGUF metadata or an HF config.json.

The other Llama-shaped families (Mistral, Mixtral, Gemma) subclass :class:`LlamaConfig` and build on
``llama_fields_from_gguf`` / ``llama_fields_from_hf``, adding only what their architecture adds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from mistralrs.engine.layers.mlp import hf_activation
from mistralrs.engine.layers.rope import RopeConfig, attention_scale, inverse_frequencies


class ConfigError(ValueError):
    pass


# Sizes and counts above this are refused: no model comes near, and products of two of them still
# fit torch's int64 sizes (the meta-device build would overflow, not refuse, beyond).
MAX_SIZE = 2**31 - 1
# Layer counts above this are refused before anything per layer is made (the deepest models have a
# few hundred); below it, the family checks the count against the blocks the file holds.
MAX_LAYERS = 16384
_REQUIRED = object()
ROPE_SCALINGS = ("none", "linear", "llama3", "yarn", "longrope")
# HF names of the scalings above (older configs' "su" is LongRoPE); "default" is none
HF_ROPE_TYPES = {"default": "none", "su": "longrope"}
# GGUF rope.scaling.type values. llama.cpp's converter writes "longrope" from its generic path and
# nothing from Phi-3's own; either way LongRoPE's factor sets are tensors, read by the family
GGUF_ROPE_TYPES = {"none": "none", "linear": "linear", "yarn": "yarn", "longrope": "longrope"}


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def int_field(source: Mapping[str, Any], key: str, default: Any = _REQUIRED, *, where: str = "GGUF metadata",
              minimum: int = 1, maximum: int = MAX_SIZE) -> int:
    """An integer hyper-parameter, refused with ``where`` and ``key`` named when it is absent (and
    required), not an integer (an integral float passes) or outside ``minimum..maximum``. A value
    equal to ``default`` (e.g. None for "not given") passes unchecked."""
    if key not in source:
        if default is _REQUIRED:
            raise ConfigError(f"{where} lacks {key!r}")
        return default
    value = source[key]
    if default is not _REQUIRED and value is default:
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} {key!r} must be an integer, got {_shown(value)}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{where} {key!r} is {value}, outside {minimum}..{maximum}")
    return value


def float_field(source: Mapping[str, Any], key: str, default: Any, *, where: str = "GGUF metadata") -> Any:
    """A real-valued hyper-parameter (ranges are the config's ``validate``'s business); a value
    equal to ``default`` passes unchecked."""
    value = source.get(key, default)
    if value is default:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where} {key!r} must be a number, got {_shown(value)}")
    return float(value)


def mapping_field(source: Mapping[str, Any], key: str, *, where: str = "config.json") -> dict[str, Any]:
    """A JSON object (absent or null: empty)."""
    value = source.get(key)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where} {key!r} must be an object, got {_shown(value)}")
    return dict(value)


def _positive_finite(name: str, value: Any) -> None:
    # NaN fails every comparison, so "not (x > 0)" refuses it along with zero and negatives
    if isinstance(value, bool) or not (isinstance(value, (int, float)) and 0 < value < float("inf")):
        raise ConfigError(f"{name} must be a positive finite number, got {_shown(value)}")


def validate_rope(rope: RopeConfig, head_dim: int, what: str = "rope") -> None:
    """What RotaryEmbedding needs to build its tables: an even dimension within the head, a positive
    finite base and factor, and, for llama3 scaling, bands that divide."""
    if isinstance(rope.dim, bool) or not isinstance(rope.dim, int) or not (2 <= rope.dim <= head_dim and rope.dim % 2 == 0):
        raise ConfigError(f"{what} dimension {_shown(rope.dim)} (GGUF rope.dimension_count, HF head_dim x "
                          f"partial_rotary_factor) must be even and between 2 and head_dim {head_dim}")
    _positive_finite(f"{what} theta (freq_base)", rope.theta)
    if rope.scaling not in ROPE_SCALINGS:
        raise ConfigError(f"unsupported {what} scaling {_shown(rope.scaling)} (supported: {', '.join(ROPE_SCALINGS)})")
    if rope.scaling != "none":
        _positive_finite(f"{what} scaling factor", rope.factor)
    if rope.attention_factor is not None:
        _positive_finite(f"{what} attention_factor", rope.attention_factor)
    if rope.scaling == "llama3":
        _positive_finite(f"{what} low_freq_factor", rope.low_freq_factor)
        _positive_finite(f"{what} high_freq_factor", rope.high_freq_factor)
        if not rope.high_freq_factor > rope.low_freq_factor:
            raise ConfigError(f"{what} high_freq_factor {rope.high_freq_factor} must exceed low_freq_factor "
                              f"{rope.low_freq_factor}")
    if rope.scaling in ("llama3", "yarn", "longrope") and not 1 <= rope.original_max_position <= MAX_SIZE:
        raise ConfigError(f"{what} original_max_position_embeddings {rope.original_max_position} must be positive")
    if rope.freq_factors is not None and len(rope.freq_factors) != rope.dim // 2:
        raise ConfigError(f"{what} has {len(rope.freq_factors)} frequency factors (rope_freqs.weight) for "
                          f"{rope.dim // 2} frequencies")
    if rope.scaling in ("yarn", "longrope"):
        _validate_long_context_rope(rope, what)


def _validate_long_context_rope(rope: RopeConfig, what: str) -> None:
    """YaRN and LongRoPE: their parameters, then the frequencies and attention factor they give (all
    positive and finite: e.g. a base of 1 or an original context of 1 would divide by ln 1)."""
    if rope.scaling == "yarn":
        _positive_finite(f"{what} beta_fast", rope.beta_fast)
        _positive_finite(f"{what} beta_slow", rope.beta_slow)
        for name in ("mscale", "mscale_all_dim"):
            if getattr(rope, name) is not None:
                _positive_finite(f"{what} {name}", getattr(rope, name))
    else:
        for name in ("short_factors", "long_factors"):
            factors = getattr(rope, name)
            if not isinstance(factors, list) or len(factors) != rope.dim // 2:
                count = len(factors) if isinstance(factors, list) else "no"
                raise ConfigError(f"{what} LongRoPE has {count} {name} (rope_scaling {name[:-1]}, GGUF "
                                  f"rope_factors_{name.split('_')[0]}.weight) for {rope.dim // 2} frequencies")
            for value in factors:
                _positive_finite(f"{what} LongRoPE {name[:-1]}", value)
    try:
        scale = attention_scale(rope)
        finite = all(bool(inverse_frequencies(rope, c).isfinite().all()) for c in (None, rope.original_max_position + 1))
    except (ArithmeticError, ValueError) as exc:
        raise ConfigError(f"{what} {rope.scaling} parameters give no frequencies: {exc}") from None
    if not finite or not 0 < scale < float("inf"):
        raise ConfigError(f"{what} {rope.scaling} parameters (theta {rope.theta}, factor {rope.factor}, original "
                          f"context {rope.original_max_position}) give non-finite frequencies or attention factor")


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
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIZE:
                raise ConfigError(f"{name} must be a positive integer up to {MAX_SIZE}, got {_shown(value)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads} "
                              "(GGUF attention.head_count / head_count_kv, HF num_attention_heads / num_key_value_heads)")
        _positive_finite("rms_norm_eps", self.rms_norm_eps)
        validate_rope(self.rope, self.head_dim)
        window = getattr(self, "sliding_window", None)  # of the families that have one
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ConfigError(f"sliding_window must be a positive number of tokens, got {_shown(window)}")
        return self


def need(meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise ConfigError(f"GGUF metadata lacks {key!r}")
    return meta[key]



def gguf_rope(meta: dict[str, Any], arch: str, head_dim: int, theta_key: str = "rope.freq_base",
              default_theta: float = 10000.0) -> RopeConfig:
    """RoPE from ``{arch}.rope.*``. YaRN reads llama.cpp's ``rope.scaling.yarn_*`` keys, which its
    converter copies from config.json (``yarn_attn_factor`` is transformers' ``attention_factor``;
    llama.cpp's runtime recomputes that factor as 0.1 ln(factor) + 1 instead, ignoring the key: this
    follows transformers). ``rope.scaling.attn_factor`` (Phi-3's LongRoPE factor) multiplies cos and
    sin, as in llama.cpp. LongRoPE's factor sets are tensors, read by the family (``config``)."""
    p = f"{arch}."
    scaling_type = meta.get(p + "rope.scaling.type", "none")
    if scaling_type not in GGUF_ROPE_TYPES:
        raise ConfigError(f"unsupported rope scaling type {_shown(scaling_type)} in GGUF metadata")
    scaling = GGUF_ROPE_TYPES[scaling_type]
    context = int_field(meta, p + "context_length", 4096)
    original = int_field(meta, p + "rope.scaling.original_context_length", context)
    factor = float_field(meta, p + "rope.scaling.factor", None)
    attention_key = "rope.scaling.yarn_attn_factor" if scaling == "yarn" else "rope.scaling.attn_factor"
    return RopeConfig(
        dim=int_field(meta, p + "rope.dimension_count", head_dim),
        theta=float_field(meta, p + theta_key, default_theta),
        scaling=scaling,
        factor=factor or (context / original if scaling in ("yarn", "longrope") else 1.0),
        original_max_position=original,
        beta_fast=float_field(meta, p + "rope.scaling.yarn_beta_fast", None) or 32.0,
        beta_slow=float_field(meta, p + "rope.scaling.yarn_beta_slow", None) or 1.0,
        attention_factor=float_field(meta, p + attention_key, None),
    )


def gguf_vocab_size(meta: dict[str, Any], arch: str) -> int:
    """``{arch}.vocab_size``, else the tokenizer's token count (as llama.cpp takes it)."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if f"{arch}.vocab_size" not in meta and not (isinstance(tokens, list) and tokens):
        raise ConfigError(f"GGUF metadata lacks {arch}.vocab_size and tokenizer.ggml.tokens (to count)")
    return int_field(meta, f"{arch}.vocab_size", len(tokens) if isinstance(tokens, list) else None)


def llama_fields_from_gguf(meta: dict[str, Any], arch: str = "llama") -> dict[str, Any]:
    p = f"{arch}."
    hidden = int_field(meta, p + "embedding_length")
    heads = int_field(meta, p + "attention.head_count")
    head_dim = int_field(meta, p + "attention.key_length", hidden // heads)
    return dict(
        vocab_size=gguf_vocab_size(meta, arch),
        hidden_size=hidden,
        intermediate_size=int_field(meta, p + "feed_forward_length"),
        num_layers=int_field(meta, p + "block_count", maximum=MAX_LAYERS),
        num_heads=heads,
        num_kv_heads=int_field(meta, p + "attention.head_count_kv", heads),
        head_dim=head_dim,
        rms_norm_eps=float_field(meta, p + "attention.layer_norm_rms_epsilon", 1e-5),
        rope=gguf_rope(meta, arch, head_dim),
        max_position_embeddings=int_field(meta, p + "context_length", 4096),
    )


def config_from_gguf(meta: dict[str, Any], arch: str = "llama") -> LlamaConfig:
    return LlamaConfig(**llama_fields_from_gguf(meta, arch)).validate()


def hf_rope(cfg: dict[str, Any], head_dim: int, params: dict[str, Any] | None = None) -> RopeConfig:
    """transformers < 5 keeps rope_theta / rope_scaling at the top level; 5 nests them in rope_parameters.
    ``params`` picks one entry of a per-layer-type ``rope_parameters`` (Gemma 3)."""
    if params is None:
        params = mapping_field(cfg, "rope_parameters")
    merged = {**mapping_field(cfg, "rope_scaling"), **params}
    where = "config.json rope_scaling/rope_parameters"
    theta = float_field(merged, "rope_theta", None, where=where)
    kind = merged.get("rope_type", merged.get("type", "default")) or "default"
    if not isinstance(kind, str):
        raise ConfigError(f"{where} 'rope_type' must be a name, got {_shown(kind)}")
    kind = HF_ROPE_TYPES.get(kind, kind)
    partial = float_field(merged, "partial_rotary_factor", None, where=where)  # transformers 5 keeps it here
    if partial is None:
        partial = float_field(cfg, "partial_rotary_factor", 1.0, where="config.json")
    if not 0 < partial <= 1:
        raise ConfigError(f"config.json 'partial_rotary_factor' must be in (0, 1], got {_shown(partial)}")
    max_positions = int_field(cfg, "max_position_embeddings", 8192, where="config.json")
    # transformers: a top-level original_max_position_embeddings (Phi-3's) wins over rope_scaling's
    original = int_field(cfg, "original_max_position_embeddings", None, where="config.json")
    if original is None:
        original = int_field(merged, "original_max_position_embeddings", max_positions, where=where)
    factor = float_field(merged, "factor", None, where=where)
    if factor is None:  # YaRN and LongRoPE without one: the context's growth over the original
        factor = max_positions / original if kind in ("yarn", "longrope") else 1.0
    return RopeConfig(
        dim=int(head_dim * partial),
        theta=float_field(cfg, "rope_theta", 10000.0, where="config.json") if theta is None else theta,
        scaling=kind,
        factor=factor,
        low_freq_factor=float_field(merged, "low_freq_factor", 1.0, where=where),
        high_freq_factor=float_field(merged, "high_freq_factor", 4.0, where=where),
        original_max_position=original,
        beta_fast=float_field(merged, "beta_fast", None, where=where) or 32.0,  # transformers: `or` its defaults
        beta_slow=float_field(merged, "beta_slow", None, where=where) or 1.0,
        truncate=_flag(merged, "truncate", True, where),
        mscale=float_field(merged, "mscale", None, where=where),
        mscale_all_dim=float_field(merged, "mscale_all_dim", None, where=where),
        short_factors=_factor_list(merged, "short_factor", where),
        long_factors=_factor_list(merged, "long_factor", where),
        attention_factor=float_field(merged, "attention_factor", None, where=where),
    )


def _flag(source: Mapping[str, Any], key: str, default: bool, where: str) -> bool:
    value = source.get(key, default)
    if not isinstance(value, bool):
        raise ConfigError(f"{where} {key!r} must be true or false, got {_shown(value)}")
    return value


def _factor_list(source: Mapping[str, Any], key: str, where: str) -> list[float] | None:
    """A list of numbers (LongRoPE's factors), or None when absent."""
    value = source.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or len(value) > MAX_SIZE:
        raise ConfigError(f"{where} {key!r} must be a list of numbers, got {_shown(value)}")
    return [float_field({key: x}, key, None, where=where) for x in value]


def llama_fields_from_hf(cfg: dict[str, Any]) -> dict[str, Any]:
    """The Llama hyper-parameters of an HF config.json (a ConfigError names a missing or bad key)."""
    where = "config.json"
    hidden = int_field(cfg, "hidden_size", where=where)
    heads = int_field(cfg, "num_attention_heads", where=where)
    head_dim = int_field(cfg, "head_dim", None, where=where) or hidden // heads
    return dict(
        vocab_size=int_field(cfg, "vocab_size", where=where),
        hidden_size=hidden,
        intermediate_size=int_field(cfg, "intermediate_size", where=where),
        num_layers=int_field(cfg, "num_hidden_layers", where=where, maximum=MAX_LAYERS),
        num_heads=heads,
        num_kv_heads=int_field(cfg, "num_key_value_heads", None, where=where) or heads,
        head_dim=head_dim,
        rms_norm_eps=float_field(cfg, "rms_norm_eps", 1e-6, where=where),
        rope=hf_rope(cfg, head_dim),
        max_position_embeddings=int_field(cfg, "max_position_embeddings", 4096, where=where),
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", False)),
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        hidden_act=hf_activation(cfg.get("hidden_act") or cfg.get("hidden_activation") or "silu"),
    )


def parse_hf(build, cfg: dict[str, Any]):
    """Run ``build(cfg)``, turning a missing key or a bad value into a ConfigError that names it."""
    if not isinstance(cfg, Mapping):
        raise ConfigError(f"config.json must hold a JSON object, got {type(cfg).__name__}")
    try:
        return build(cfg).validate()
    except KeyError as exc:
        raise ConfigError(f"config.json lacks {exc.args[0]!r}") from None
    except (TypeError, ValueError, ArithmeticError) as exc:  # a value no check above anticipated
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"config.json has a bad value: {exc}") from None


def config_from_hf(cfg: dict[str, Any]) -> LlamaConfig:
    return parse_hf(lambda c: LlamaConfig(**llama_fields_from_hf(c)), cfg)
