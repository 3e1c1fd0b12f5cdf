"""Rotary position embeddings (rotate-half layout) with plain, linear and llama3-style scaling."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class RopeConfig:
    dim: int
    theta: float = 10000.0
    scaling: str = "none"  # none | linear | llama3
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position: int = 8192
    freq_factors: list[float] | None = None  # GGUF rope_freqs: per-frequency divisors


def inverse_frequencies(cfg: RopeConfig) -> torch.Tensor:
    inv_freq = 1.0 / (cfg.theta ** (torch.arange(0, cfg.dim, 2, dtype=torch.int64).float() / cfg.dim))
    if cfg.freq_factors is not None:
        return inv_freq / torch.tensor(cfg.freq_factors, dtype=torch.float32)
    if cfg.scaling == "linear":
        return inv_freq / cfg.factor
    if cfg.scaling == "llama3":
        return _llama3_scale(inv_freq, cfg)
    if cfg.scaling != "none":
        raise ValueError(f"unsupported rope scaling {cfg.scaling!r} (supported: none, linear, llama3)")
    return inv_freq


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
        inv_freq = inverse_frequencies(cfg).to(device)
        t = torch.arange(max_positions, device=device, dtype=torch.int64).float()
        freqs = torch.outer(t, inv_freq)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(dtype)
        self.sin = emb.sin().to(dtype)

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
