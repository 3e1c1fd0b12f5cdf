"""Vectorized torch quantizers for the K-types (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K).

gguf-py cannot produce these, so there is no bit-exact reference; the algorithms are llama.cpp's
published ones (ggml/src/ggml-quants.c), re-expressed as whole-tensor torch ops over every
sub-block at once instead of loops over elements:

* Q4_K, Q5_K, Q2_K (``scale * q - min``): per sub-block, llama.cpp's ``make_qkx2_quants`` search —
  start from the (max - min) / nmax grid, then try ``nstep + 1`` slightly different grid spacings,
  fit the weighted least-squares scale and min for each trial's codes, and keep the best fit.
  Weights and search parameters as in ``quantize_row_q{4,5,2}_K_ref``: Q4_K (32 per sub-block,
  weights rms + |x|, rmin -1, step 0.1, 20 steps), Q5_K (same weights, rmin -0.5, 15 steps), Q2_K
  (16 per sub-block, weights |x|, rmin -0.5, 15 steps, absolute rather than squared error).
  The 8 (16) sub-block scales and mins are then quantized to 6 (4) bits against the block's
  largest, and the codes recomputed against the scales as stored.
* Q6_K, Q3_K (``scale * (q - offset)``, symmetric): llama.cpp's ``make_qx_quants`` weighted scale
  search (weights x²): the grid set by the largest-magnitude element, plus 18 scaled variants,
  keeping the best least-squares fit. Q6_K then quantizes the 16 sub-block scales to int8 against
  the largest as ``quantize_row_q6_K_ref``. For Q3_K we follow ``quantize_row_q3_K_impl`` without
  an importance matrix (weights x², then the same weighted search for the unit of the 6-bit
  sub-block scales); llama.cpp's reference Q3_K path instead refines codes one element at a time
  (``make_q3_quants``), a sequential loop that does not vectorize.
* Every type then recomputes its codes against the scales as stored (f16 super-scales times the
  quantized sub-block scales), as llama.cpp does.

Differences from llama.cpp, none of which changes the format: the sums are reduced in torch's order
(not left to right); the search's squared error is computed from the sums it already has
(s²Σwl² + 2smΣwl − 2sΣwlx + m²Σw − 2mΣwx + Σwx², exact algebra, float32 rounding differs); Q3_K's
sub-block scale codes are the nearest multiples of the stored unit (llama.cpp keeps the search's
codes, which are never closer); a sub-block whose stored scale is 0 gets codes 0 (llama.cpp leaves
the search's codes, which decode to the same values); scale codes are clamped to their field. So
the blocks are not byte-identical to llama-quantize's, but they decode with any GGUF reader to
weights of the same quality.
"""

from __future__ import annotations

import numpy as np
import torch

from mistralrs.engine.quant.block_packing import pack_fields, pack_nibbles

__all__ = [
    "quantize_q2_k_blocks",
    "quantize_q3_k_blocks",
    "quantize_q4_k_blocks",
    "quantize_q5_k_blocks",
    "quantize_q6_k_blocks",
]

GROUP_MAX_EPS = 1e-15  # llama.cpp: a group whose largest magnitude is below this is all zero


def _f32(value: float) -> float:
    """A Python float holding the float32 value C would compute (for grid-spacing constants)."""
    return float(np.float32(value))


def _codes(v: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """nearest_int (round half to even, as ggml's magic-number trick) of v clamped to [lo, hi],
    in place on the temporary ``v``; stays float32. (Clamping first gives the same integers.)"""
    return v.clamp_(lo, hi).round_()


# ------------------------------------------------------------------ searches
# Every trial of a search runs at once, along an extra dimension (..., trial, element), so a chunk
# costs a few dozen large ops instead of a few per trial. The searches return scales only: every
# caller recomputes the codes against the scales as they are finally stored (as llama.cpp does),
# so the search's own codes never reach a block.


def _first_best(score: torch.Tensor, largest: bool) -> torch.Tensor:
    """Index (..., 1) of the first best trial along the last dimension, NaN never best — the
    choice llama.cpp's sequential ``if (better) take`` loops make (trial 0 is the starting point)."""
    if largest:
        return score.nan_to_num(nan=-torch.inf).argmax(dim=-1, keepdim=True)
    return score.nan_to_num(nan=torch.inf).argmin(dim=-1, keepdim=True)


def affine_search(x: torch.Tensor, w: torch.Tensor, nmax: int, rmin: float, rdelta: float, nstep: int,
                  use_mad: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``make_qkx2_quants`` over the last dimension: x ~ scale * L - the_min, L in [0, nmax].

    Trial 0 spreads [min(x, 0), max(x)] over the nmax steps; trials 1..nstep+1 use the grids
    (nmax + rmin + rdelta * k) / span, each refitted by weighted least squares (min pinned at 0
    when the fit wants it positive). The lowest weighted error wins (squared, or absolute with
    ``use_mad``). Returns (scale (..., 1), the_min (..., 1) >= 0); scale 0 for a one-valued group.
    """
    mn = x.amin(dim=-1, keepdim=True).clamp_(max=0.0)
    span = x.amax(dim=-1, keepdim=True) - mn
    flat = span == 0  # all equal (and <= 0): codes 0, the value is the min
    span.masked_fill_(flat, 1.0)  # keeps the trials finite; masked out at the end
    wx = w * x
    sum_w = w.sum(dim=-1, keepdim=True)
    sum_x = wx.sum(dim=-1, keepdim=True)

    steps = [_f32(_f32(rmin + _f32(_f32(rdelta) * k)) + nmax) for k in range(nstep + 1)]
    grid = torch.tensor(steps, dtype=torch.float32, device=x.device)
    iscale0 = nmax / span
    iscale = torch.cat([iscale0, grid / span], dim=-1)  # (..., trials)
    codes = _codes((x - mn).unsqueeze(-2) * iscale.unsqueeze(-1), 0, nmax)  # (..., trials, n)
    wl = w.unsqueeze(-2) * codes
    s_l = wl.sum(dim=-1)
    s_l2 = (wl * codes).sum(dim=-1)
    s_xl = (codes * wx.unsqueeze(-2)).sum(dim=-1)

    det = sum_w * s_l2 - s_l * s_l
    scale = (sum_w * s_xl - sum_x * s_l) / det
    minimum = (s_l2 * sum_x - s_l * s_xl) / det
    clipped = minimum > 0  # the fit wants a positive offset: pin min at 0, refit the scale
    minimum = minimum.masked_fill_(clipped, 0.0)
    scale = torch.where(clipped, s_xl / s_l2, scale)
    scale[..., 0:1] = 1 / iscale0  # trial 0 is not refitted
    minimum[..., 0:1] = mn
    if use_mad:  # sum w |scale * L + min - x|
        diff = (codes * scale.unsqueeze(-1)).add_(minimum.unsqueeze(-1)).sub_(x.unsqueeze(-2)).abs_()
        err = (diff * w.unsqueeze(-2)).sum(dim=-1)
    else:  # sum w (scale * L + min - x)^2, expanded over the sums at hand
        sum_x2 = (wx * x).sum(dim=-1, keepdim=True)
        err = (scale * scale * s_l2 + 2 * scale * minimum * s_l - 2 * scale * s_xl
               + minimum * minimum * sum_w - 2 * minimum * sum_x + sum_x2)
    err[..., 1:].masked_fill_(det[..., 1:] <= 0, torch.inf)
    best = _first_best(err, largest=False)
    scale = scale.gather(-1, best).masked_fill_(flat, 0.0)
    minimum = torch.where(flat, mn, minimum.gather(-1, best))
    return scale, -minimum


def symmetric_search(x: torch.Tensor, nmax: int, w: torch.Tensor) -> torch.Tensor:
    """``make_qx_quants`` (rmse_type 1, weights ``w``) over the last dimension: x ~ scale * l with
    l in [-nmax, nmax - 1].

    Trial 0 maps the largest-magnitude element to -nmax; 18 more use nmax + 0.1 k (k = -9..9, not
    0). Each gets the least-squares scale sum(w x l) / sum(w l^2); the best fit (largest
    sum(w x l)^2 / sum(w l^2)) wins. Returns scale (..., 1), 0 for an all-zero group."""
    extreme = x.gather(-1, x.abs().argmax(dim=-1, keepdim=True))  # first of largest magnitude, signed
    zero = extreme.abs() < GROUP_MAX_EPS
    extreme = extreme.masked_fill(zero, 1.0)  # keeps the trials finite; masked out at the end
    steps = [float(nmax)] + [_f32(nmax + _f32(_f32(0.1) * k)) for k in range(-9, 10) if k != 0]
    grid = torch.tensor(steps, dtype=torch.float32, device=x.device)
    iscale = -grid / extreme  # (..., trials)
    codes = _codes(x.unsqueeze(-2) * iscale.unsqueeze(-1), -nmax, nmax - 1)  # (..., trials, n)
    sumlx = (codes * (w * x).unsqueeze(-2)).sum(dim=-1)
    suml2 = (codes * codes * w.unsqueeze(-2)).sum(dim=-1)
    scale = sumlx / suml2
    fit = scale * sumlx  # sum(w x l)^2 / sum(w l^2): larger is a better fit
    fit[..., 1:].masked_fill_(suml2[..., 1:] <= 0, -torch.inf)
    scale[..., 0:1].masked_fill_(suml2[..., 0:1] == 0, 0.0)
    fit[..., 0:1].masked_fill_(suml2[..., 0:1] == 0, 0.0)
    return scale.gather(-1, _first_best(fit, largest=True)).masked_fill_(zero, 0.0)


# ------------------------------------------------------------------ packing


def _k_scale_bytes(ls: torch.Tensor, lm: torch.Tensor) -> torch.Tensor:
    """Eight 6-bit scales and mins (n, 8) uint8 -> the 12-byte Q4_K/Q5_K field."""
    lo_s, hi_s, lo_m, hi_m = ls[:, :4], ls[:, 4:], lm[:, :4], lm[:, 4:]
    return torch.cat([lo_s | ((hi_s >> 4) << 6), lo_m | ((hi_m >> 4) << 6), (hi_s & 0x0F) | ((hi_m & 0x0F) << 4)], dim=1)


def _two_bit_planes(codes: torch.Tensor) -> torch.Tensor:
    """(n, 256) codes < 4 -> (n, 64): byte 32h + k holds element 128h + 32j + k at bits 2j."""
    return pack_fields(codes.view(-1, 2, 4, 32), 2).flatten(1)


def _requantize(x: torch.Tensor, d: torch.Tensor, offset: torch.Tensor | None, lo: int, hi: int) -> torch.Tensor:
    """Codes against the scales as stored: nearest_int((x + offset) / d) clamped to [lo, hi]; 0
    where d is 0 (every code decodes to the same value there). Float32."""
    dead = d == 0
    v = (x + offset if offset is not None else x) / d.masked_fill(dead, 1.0)
    return _codes(v, lo, hi).masked_fill_(dead, 0.0)


def _affine_k(x: torch.Tensor, nmax: int, rmin: float, nstep: int) -> tuple[torch.Tensor, ...]:
    """Q4_K/Q5_K: (d/dmin f16 bytes (n, 4), scale bytes (n, 12), codes (n, 256) uint8)."""
    n = x.shape[0]
    sub = x.view(n, 8, 32)
    rms = (sub * sub).sum(dim=-1, keepdim=True).div_(32).sqrt_()
    scale, the_min = affine_search(sub, rms + sub.abs(), nmax, rmin, 0.1, nstep, False)
    scale, the_min = scale.squeeze(-1), the_min.squeeze(-1)
    max_scale = scale.amax(dim=-1, keepdim=True).clamp_(min=0.0)
    max_min = the_min.amax(dim=-1, keepdim=True).clamp_(min=0.0)
    inv_scale = torch.where(max_scale > 0, 63 / max_scale, 0.0)
    inv_min = torch.where(max_min > 0, 63 / max_min, 0.0)
    ls = _codes(inv_scale * scale, 0, 63)
    lm = _codes(inv_min * the_min, 0, 63)
    d = (max_scale / 63).to(torch.float16)
    dmin = (max_min / 63).to(torch.float16)
    dq = (d.float() * ls).unsqueeze(-1)
    mq = (dmin.float() * lm).unsqueeze(-1)
    codes = _requantize(sub, dq, mq, 0, nmax).to(torch.uint8).view(n, 256)
    head = torch.cat([d.view(torch.uint8), dmin.view(torch.uint8)], dim=1)
    return head, _k_scale_bytes(ls.to(torch.uint8), lm.to(torch.uint8)), codes


# ------------------------------------------------------------------ block kernels
# Each takes (n, 256) float32 super-blocks and returns (n, type_size) uint8 blocks.


def quantize_q4_k_blocks(x: torch.Tensor) -> torch.Tensor:
    head, scales, codes = _affine_k(x, 15, -1.0, 20)
    return torch.cat([head, scales, pack_nibbles(codes.view(-1, 4, 2, 32)).flatten(1)], dim=1)


def quantize_q5_k_blocks(x: torch.Tensor) -> torch.Tensor:
    head, scales, codes = _affine_k(x, 31, -0.5, 15)
    qh = pack_fields((codes >> 4).view(-1, 8, 32), 1)  # bit c of byte k: element 32c + k
    ql = pack_nibbles((codes & 0x0F).view(-1, 4, 2, 32)).flatten(1)
    return torch.cat([head, scales, qh, ql], dim=1)


def quantize_q2_k_blocks(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    sub = x.view(n, 16, 16)
    scale, the_min = affine_search(sub, sub.abs(), 3, -0.5, 0.1, 15, True)
    scale, the_min = scale.squeeze(-1), the_min.squeeze(-1)
    max_scale = scale.amax(dim=-1, keepdim=True).clamp_(min=0.0)
    max_min = the_min.amax(dim=-1, keepdim=True).clamp_(min=0.0)
    ls = _codes(torch.where(max_scale > 0, 15 / max_scale, 0.0) * scale, 0, 15)
    lm = _codes(torch.where(max_min > 0, 15 / max_min, 0.0) * the_min, 0, 15)
    d = (max_scale / 15).to(torch.float16)
    dmin = (max_min / 15).to(torch.float16)
    dq = (d.float() * ls).unsqueeze(-1)
    mq = (dmin.float() * lm).unsqueeze(-1)
    codes = _requantize(sub, dq, mq, 0, 3).to(torch.uint8).view(n, 256)
    scale_bytes = ls.to(torch.uint8) | (lm.to(torch.uint8) << 4)
    return torch.cat([scale_bytes, _two_bit_planes(codes), d.view(torch.uint8), dmin.view(torch.uint8)], dim=1)


def quantize_q3_k_blocks(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    sub = x.view(n, 16, 16)
    w = sub * sub
    scale = symmetric_search(sub, 4, w).squeeze(-1)  # (n, 16)
    # The 16 sub-block scales as 6-bit multiples of one f16 unit, found by the same weighted search
    # (weights: the sub-blocks' sums of x^2); codes are the nearest multiples of the unit as stored.
    d = symmetric_search(scale, 32, w.sum(dim=-1)).to(torch.float16)  # (n, 1)
    ls = _codes(scale / d.float().masked_fill(d == 0, 1.0), -32, 31)
    dq = (d.float() * ls).unsqueeze(-1)
    codes = (_requantize(sub, dq, None, -4, 3) + 4).to(torch.uint8).view(n, 256)
    ls = (ls + 32).to(torch.uint8)
    hmask = pack_fields((codes >> 2).view(n, 8, 32), 1)  # bit e // 32 of byte e % 32
    qs = _two_bit_planes(codes & 3)
    low = (ls[:, :8] & 0x0F) | ((ls[:, 8:] & 0x0F) << 4)
    high = pack_fields((ls >> 4).view(n, 4, 4), 2)  # byte 8 + j % 4, bits 2 (j // 4)
    return torch.cat([hmask, qs, low, high, d.view(torch.uint8)], dim=1)


def quantize_q6_k_blocks(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    sub = x.view(n, 16, 16)
    scale = symmetric_search(sub, 32, sub * sub).squeeze(-1)  # (n, 16)
    max_scale = scale.gather(-1, scale.abs().argmax(dim=-1, keepdim=True))
    zero = max_scale.abs() < GROUP_MAX_EPS  # llama.cpp writes an all-zero block
    iscale = -128 / max_scale.masked_fill(zero, 1.0)
    d = (1 / iscale).masked_fill_(zero, 0.0).to(torch.float16)
    sc = _codes(iscale * scale, -128, 127).masked_fill_(zero, 0.0)
    dq = (d.float() * sc).unsqueeze(-1)
    codes = (_requantize(sub, dq, None, -32, 31) + 32).to(torch.uint8).view(n, 256)
    ql = pack_nibbles((codes & 0x0F).view(n, 2, 2, 64)).flatten(1)  # byte 64h + k: elements 128h + k, + 64
    qh = pack_fields((codes >> 4).view(n, 2, 4, 32), 2).flatten(1)
    block = torch.cat([ql, qh, sc.to(torch.int8).view(torch.uint8), d.view(torch.uint8)], dim=1)
    return block.masked_fill_(zero, 0)
