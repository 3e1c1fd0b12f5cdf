"""Sparse mixture of experts (Mixtral, Qwen3-MoE): a router picks the top-k experts per token.

Tokens are grouped by expert, so a step runs one batched matmul per active expert and projection
(never a Python loop over tokens). Experts are ordinary gated MLPs of ``Linear`` layers, so they
load, and may be quantized, like any other linear layer.
"""

from __future__ import annotations

import torch
from torch import nn

from mistralrs.engine.layers.linear import Linear
from mistralrs.engine.layers.mlp import GatedMLP


class SparseMoE(nn.Module):
    """sum over the k chosen experts e of w_e * expert_e(x), w = softmax(router logits) over all experts
    at the chosen ones, renormalized to sum 1 (``normalize_top_k``: Mixtral, and Qwen3-MoE's
    ``norm_topk_prob``; the same as a softmax over the chosen logits) or not."""

    routes_tokens = True  # each expert sees only its tokens' rows (per-token adapter scalings cannot follow)

    def __init__(self, hidden: int, intermediate: int, num_experts: int, top_k: int,
                 activation: str = "silu", bias: bool = False, normalize_top_k: bool = True):
        super().__init__()
        if not 1 <= top_k <= num_experts:
            raise ValueError(f"top_k {top_k} must be between 1 and the number of experts {num_experts}")
        self.top_k = top_k
        self.normalize_top_k = normalize_top_k
        self.gate = Linear(hidden, num_experts, bias=False)  # the router
        self.experts = nn.ModuleList(GatedMLP(hidden, intermediate, activation, bias) for _ in range(num_experts))

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights [T, k] in x's dtype, expert ids [T, k]) for each token."""
        router = self.gate(x).float()
        if self.normalize_top_k:
            logits, chosen = router.topk(self.top_k, dim=-1)
            return logits.softmax(dim=-1).to(x.dtype), chosen
        weights, chosen = router.softmax(dim=-1).topk(self.top_k, dim=-1)
        return weights.to(x.dtype), chosen

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, chosen = self.route(x)
        flat = chosen.flatten()  # [T*k]: row r is token r // k's choice r % k
        order = flat.argsort(stable=True)  # rows grouped by expert
        counts = torch.bincount(flat, minlength=len(self.experts)).tolist()
        rows = order.split(counts)
        out = torch.zeros_like(x)
        flat_weights = weights.flatten()
        for expert, idx in zip(self.experts, rows):
            if idx.numel() == 0:
                continue
            tokens = idx // self.top_k
            out.index_add_(0, tokens, expert(x[tokens]) * flat_weights[idx].unsqueeze(-1))
        return out
