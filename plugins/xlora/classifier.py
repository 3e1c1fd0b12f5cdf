"""The X-LoRA classifier: final normed hidden states -> per-token scalings for every adapter.

Depth 1 is one linear layer; depth d >= 2 is d - 1 blocks of linear + ReLU of width ``xlora_size``
then the last linear. Its output is [T, n_layers, n_adapters] (``layerwise_scalings``) or one set
shared by every X-LoRA layer; softmax with a temperature, then (per layer, as PEFT does) top-k
keeps the k largest without renormalizing, or softmaxes over them with ``enable_softmax_topk``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mistralrs.plugins.xlora.xlora_config import XLoraConfig


class XLoraClassifier(nn.Module):
    def __init__(self, cfg: XLoraConfig, layers: list[tuple[torch.Tensor, torch.Tensor | None]],
                 n_layers: int, n_adapters: int):
        super().__init__()
        self.cfg, self.n_layers, self.n_adapters = cfg, n_layers, n_adapters
        self.weights = nn.ParameterList(nn.Parameter(w, requires_grad=False) for w, _ in layers)
        self.biases = [b for _, b in layers]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """[T, hidden] -> scalings [T, n_layers, n_adapters] (float32)."""
        x = hidden.float()
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            x = F.linear(x, w, self.biases[i])
            if i < last and self.cfg.enable_relu_and_dropout:
                x = F.relu(x)  # dropout is off at inference
        t = x.shape[0]
        if self.cfg.layerwise_scalings:
            scalings = x.view(t, self.n_layers, self.n_adapters)
        else:
            scalings = x.view(t, 1, self.n_adapters).expand(t, self.n_layers, self.n_adapters)
        if self.cfg.enable_softmax:
            scalings = torch.softmax(scalings / self.cfg.softmax_temperature, dim=-1)
        return self._top_k(scalings)

    def _top_k(self, scalings: torch.Tensor) -> torch.Tensor:
        k = self.cfg.top_k_lora
        if k is not None and k < self.n_adapters:
            keep = torch.zeros_like(scalings, dtype=torch.bool)
            keep.scatter_(-1, scalings.topk(k, dim=-1).indices, True)
            scalings = scalings * keep
        if self.cfg.enable_softmax_topk:
            scalings = torch.softmax(scalings.masked_fill(scalings == 0, float("-inf")), dim=-1)
        return scalings
