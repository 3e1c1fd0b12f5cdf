"""A low-rank term added to a linear layer's output (LoRA and its relatives), in the form both the
module path and the native decode stack apply.

    out[:, c_b : c_b + N_b] += ((x @ at)[:, r_b : r_b + R_b] * s) @ bt_b        for each block b

``at`` [in, R] stacks the A factors of every adapter of the layer (or of layers sharing an input:
q/k/v, gate/up); each adapted layer keeps its B factors as one block written into its own output
columns. ``s``: per rank column, 1 (scales folded into B), or read each pass from a shared source
of column scales (X-LoRA's per-token mix): ``source.flat`` [T or 1, C], columns ``offset .. offset + R``,
None while a pass adds no term.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mistralrs.engine.kernels import fast_ops

NATIVE_ROWS = 16  # up to this many tokens (decode) one native call; prefill keeps BLAS matmuls


@dataclass
class LowRankTerm:
    at: torch.Tensor  # [in, R], contiguous
    bts: list[torch.Tensor]  # [R_b, N_b] each, contiguous
    rank_starts: list[int]
    col_starts: list[int]
    offset: int | None = None  # first column in the source's scales; None: constant (folded into B)
    source: Any = None  # has ``flat``

    @property
    def rank(self) -> int:
        return self.at.shape[1]

    def scales(self) -> torch.Tensor | None | bool:
        """This pass's column scales [T or 1, R]; None for 1; False when the pass adds no term."""
        if self.offset is None:
            return None
        flat = self.source.flat
        return False if flat is None else flat[:, self.offset : self.offset + self.rank]

    def add_(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``out`` (the layer's, or the group's concatenated, output) += the term."""
        scales = self.scales()
        if scales is False:
            return out
        x = x if x.dtype == self.at.dtype else x.to(self.at.dtype)
        ops = fast_ops(out, x, self.at) if x.shape[0] <= NATIVE_ROWS and out.is_contiguous() else None
        if ops is not None:
            ops.lora_add_(out, x.contiguous(), self.at, self.bts, self.rank_starts, self.col_starts, scales)
            return out
        down = x @ self.at
        if scales is not None:
            down.mul_(scales)
        for bt, r, c in zip(self.bts, self.rank_starts, self.col_starts):
            out[:, c : c + bt.shape[1]] += (down[:, r : r + bt.shape[0]] @ bt).to(out.dtype)
        return out
