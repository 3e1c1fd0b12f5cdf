"""What the X-LoRA layers multiply their adapters' rank columns by during the current pass."""

from __future__ import annotations

import torch


class ScalingMixer:
    """Each user (a LoRA layer, or a fused q/k/v group) registers its concatenated rank columns:
    for each, its X-LoRA layer, its adapter and alpha/r · global weight. One gather per pass then
    gives every column its per-token scale: ``flat`` [T or 1, all columns], a user's columns starting
    at the offset ``add_columns`` returned (the source of engine ``LowRankTerm`` scales).

    Scaling pass: every adapter scaled by ``scaling_pass_value`` (0: ``flat`` is None and the layers
    add nothing). Main pass: the classifier's scalings [T, n_layers, n_adapters]."""

    def __init__(self, scaling_pass_value: float):
        self.scaling_pass_value = scaling_pass_value
        self.flat: torch.Tensor | None = None
        self._columns = 0
        self._layer: list[torch.Tensor] = []
        self._adapter: list[torch.Tensor] = []
        self._scale: list[torch.Tensor] = []
        self._index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def add_columns(self, layers: torch.Tensor, adapters: torch.Tensor, scales: torch.Tensor) -> int:
        """Registers a user's columns; returns where they start in ``flat``."""
        self._layer.append(layers.long())
        self._adapter.append(adapters.long())
        self._scale.append(scales.float())
        self._index = None
        self._columns += len(adapters)
        return self._columns - len(adapters)

    def _gather_index(self, device: torch.device, dtype: torch.dtype):
        if self._index is None or self._index[2].dtype != dtype or self._index[2].device != device:
            self._index = (torch.cat(self._layer).to(device), torch.cat(self._adapter).to(device),
                           torch.cat(self._scale).to(device=device, dtype=dtype))
        return self._index

    def scaling_pass(self, device: torch.device, dtype: torch.dtype) -> None:
        if self.scaling_pass_value == 0:
            self.flat = None
        else:
            scale = self._gather_index(device, dtype)[2]
            self.flat = (scale * self.scaling_pass_value).unsqueeze(0)

    def main_pass(self, scalings: torch.Tensor, dtype: torch.dtype) -> None:
        layer, adapter, scale = self._gather_index(scalings.device, dtype)
        self.flat = scalings[:, layer, adapter].to(dtype).mul_(scale)

    def clear(self) -> None:
        self.flat = None
