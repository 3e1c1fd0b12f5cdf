"""Rotary position embeddings (rotate-half layout) with plain, linear, llama3, YaRN and LongRoPE scaling.

YaRN and LongRoPE are computed as transformers computes them (``modeling_rope_utils``), including
the attention factor both multiply cos and sin by. LongRoPE's two factor sets are chosen once, by
the context the tables are built for (see :func:`inverse_frequencies`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class RopeConfig:
    dim: int
    theta: float = 10000.0
    scaling: str = "none"  # none | linear | llama3 | yarn | longrope
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    freq_factors: list[float] | None = None  # GGUF rope_freqs: per-frequency divisors
    # YaRN: the ramp between interpolated and extrapolated frequencies (in rotations over the
    # original context), floored/ceiled to whole dimensions unless ``truncate`` is off
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    truncate: bool = True
    mscale: float | None = None  # YaRN's default attention factor, as DeepSeek configs give it
    mscale_all_dim: float | None = None
    # LongRoPE: per-frequency divisors for contexts up to original_max_position (short) and beyond (long)
    short_factors: list[float] | None = None
    long_factors: list[float] | None = None
    attention_factor: float | None = None  # cos and sin are multiplied by it; None: the scaling's default


def inverse_frequencies(cfg: RopeConfig, context: int | None = None) -> torch.Tensor:
    """The rotary frequencies for tables of ``context`` positions per sequence.

    LongRoPE takes its long factors when ``context`` exceeds ``original_max_position``, else its short
    ones, for every position. transformers picks per forward call by the longest position it holds
    (so a sequence growing past the original context keeps keys rotated the short way in its cache
    beside new ones rotated the long way); llama.cpp picks once per context, by its per-sequence size
    against ``rope.scaling.original_context_length``, as here. For a paged engine only a fixed choice is
    sound: cached keys (shared by prefix reuse across requests) must not depend on how long a sequence
    later grows or on what else is in the batch. With the context at most the original one (the
    default for Phi-3/4 128k models: 4096), every position agrees with transformers; above it, every
    sequence longer than the original context does."""
    shape = torch.arange(0, cfg.dim, 2, dtype=torch.int64).float() / cfg.dim
    if cfg.scaling == "yarn":
        return _yarn_frequencies(cfg, shape)
    if cfg.scaling == "longrope":
        long = context is not None and context > cfg.original_max_position
        factors = torch.tensor(cfg.long_factors if long else cfg.short_factors, dtype=torch.float32)
        return 1.0 / (factors * cfg.theta ** shape)
    inv_freq = 1.0 / (cfg.theta ** shape)
    if cfg.freq_factors is not None:
        return inv_freq / torch.tensor(cfg.freq_factors, dtype=torch.float32)
    if cfg.scaling == "linear":
        return inv_freq / cfg.factor
    if cfg.scaling == "llama3":
        return _llama3_scale(inv_freq, cfg)
    if cfg.scaling != "none":
        raise ValueError(f"unsupported rope scaling {cfg.scaling!r} (supported: none, linear, llama3, yarn, longrope)")
    return inv_freq


def attention_scale(cfg: RopeConfig) -> float:
    """What cos and sin are multiplied by (so attention logits by its square): the configured
    ``attention_factor``, else YaRN's 0.1 ln(factor) + 1 (or DeepSeek's mscale ratio) and LongRoPE's
    sqrt(1 + ln(factor) / ln(original context)), 1 for the other scalings."""
    if cfg.attention_factor is not None:
        return float(cfg.attention_factor)
    if cfg.scaling == "yarn":
        if cfg.mscale and cfg.mscale_all_dim:
            return _yarn_mscale(cfg.factor, cfg.mscale) / _yarn_mscale(cfg.factor, cfg.mscale_all_dim)
        return _yarn_mscale(cfg.factor)
    if cfg.scaling == "longrope" and cfg.factor > 1.0:
        return math.sqrt(1 + math.log(cfg.factor) / math.log(cfg.original_max_position))
    return 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def yarn_correction_range(cfg: RopeConfig) -> tuple[float, float]:
    """The dimensions (in pairs) between which YaRN ramps from extrapolation to interpolation."""

    def dim_of(rotations: float) -> float:  # the dimension that turns ``rotations`` times over the original context
        return cfg.dim * math.log(cfg.original_max_position / (rotations * 2 * math.pi)) / (2 * math.log(cfg.theta))

    low, high = dim_of(cfg.beta_fast), dim_of(cfg.beta_slow)
    if cfg.truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, cfg.dim - 1)


def _yarn_frequencies(cfg: RopeConfig, shape: torch.Tensor) -> torch.Tensor:
    # the operations of transformers' _compute_yarn_parameters, in its order (same float32 roundings)
    pos_freqs = cfg.theta ** shape
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (cfg.factor * pos_freqs)
    low, high = yarn_correction_range(cfg)
    if low == high:
        high += 0.001  # no zero-width ramp
    ramp = torch.clamp((torch.arange(cfg.dim // 2, dtype=torch.float32) - low) / (high - low), 0, 1)
    keep = 1 - ramp  # 1: extrapolate (high frequencies), 0: interpolate (low ones)
    return interpolation * (1 - keep) + extrapolation * keep


def _llama3_scale(inv_freq: torch.Tensor, cfg: RopeConfig) -> torch.Tensor:
    # Long wavelengths are slowed by `factor`, short ones kept, the band between interpolated.
    low_wavelen = cfg.original_max_position / cfg.low_freq_factor
    high_wavelen = cfg.original_max_position / cfg.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / cfg.factor, inv_freq)
    smooth = (cfg.original_max_position / wavelen - cfg.low_freq_factor) / (cfg.high_freq_factor - cfg.low_freq_factor)
    smoothed = (1 - smooth) * scaled / cfg.factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryEmbedding:
    """Holds cos/sin tables for every position up to ``max_positions`` on the model's device."""

    def __init__(self, cfg: RopeConfig, max_positions: int, device: torch.device, dtype: torch.dtype):
        self.cfg = cfg
        inv_freq = inverse_frequencies(cfg, max_positions).to(device)
        t = torch.arange(max_positions, device=device, dtype=torch.int64).float()
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        scale = attention_scale(cfg)
        cos, sin = emb.cos(), emb.sin()
        if scale != 1.0:  # YaRN / LongRoPE: the native stack and the module path both take the scaled tables
            cos, sin = cos * scale, sin * scale
        self.cos = cos.to(dtype)
        self.sin = sin.to(dtype)

    def tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [T, 1, dim] for the given positions (computed once per step)."""
        # index_select rather than ``cos[positions]``: measured on the 2-core CPU, advanced indexing of a
        # few rows stalls for milliseconds (thread wake-ups) whenever the cores are busy; this does not
        return self.cos.index_select(0, positions).unsqueeze(1), self.sin.index_select(0, positions).unsqueeze(1)


def apply_rope_(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``apply_rope`` in place (one native call on CPU float32); returns x."""
    from mistralrs.engine.kernels import fast_ops

    ops = fast_ops(x, cos)
    if ops is not None and x.stride(-1) == 1:
        ops.rope_(x, cos, sin)
    else:
        x.copy_(apply_rope(x, cos, sin))
    return x


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [T, heads, head_dim]; rotates the first ``cos.shape[-1]`` dims (partial rotary allowed)."""
    rot = cos.shape[-1]
    x_rot, x_pass = (x, None) if rot == x.shape[-1] else (x[..., :rot], x[..., rot:])
    half = rot // 2
    rotated = torch.cat([-x_rot[..., half:], x_rot[..., :half]], dim=-1)
    out = x_rot * cos + rotated * sin
    return out if x_pass is None else torch.cat([out, x_pass], dim=-1)
