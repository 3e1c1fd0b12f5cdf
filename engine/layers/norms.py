"""Normalization layers shared by the families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mistralrs.engine.kernels import fast_ops


class RMSNorm(nn.Module):
    """x / rms(x) * (offset + weight), computed in float32 as the reference implementations do.

    ``offset`` is 1 for Gemma's HF checkpoints, which store weight - 1.
    """

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim, device="meta"), requires_grad=False)
        self.eps = eps
        self.offset = offset
        self._scale: torch.Tensor | None = None

    def scale(self) -> torch.Tensor:
        """float32 (offset + weight), made once: weights never change after loading."""
        if self._scale is None:
            self._scale = self.weight.detach().float() + self.offset
        return self._scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale()
        ops = fast_ops(x)
        if ops is not None:
            return ops.rms_norm(x, scale, self.eps)
        return F.rms_norm(x.float(), scale.shape, scale, self.eps).to(x.dtype)
