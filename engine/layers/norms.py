"""Normalization layers shared by the families."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..kernels import fast_ops


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

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._scale is None:  # float32 (offset + weight), once: weights never change after loading
            self._scale = self.weight.detach().float() + self.offset
        ops = fast_ops(x)
        if ops is not None:
            return ops.rms_norm(x, self._scale, self.eps)
        return F.rms_norm(x.float(), self._scale.shape, self._scale, self.eps).to(x.dtype)
