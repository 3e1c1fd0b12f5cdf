"""What the X-LoRA layers multiply their adapters' rank columns by during the current pass."""

from __future__ import annotations

import torch


class ScalingMixer:
    """Each user (a LoRA layer, or a fused q/k/v group) registers its concatenated rank columns:
    for each, its X-LoRA layer, its adapter and alpha/r · global weight. One gather per pass then
    gives every user its per-token column scales: ``views[slot]`` [T, its columns] (one split, no
    per-layer indexing kernels).

    Scaling pass: every adapter scaled by ``scaling_pass_value`` (0: ``views`` is None and the layers
    add nothing). Main pass: the classifier's scalings [T, n_layers, n_adapters]."""

    def __init__(self, scaling_pass_value: float):
        self.scaling_pass_value = scaling_pass_value
        self.views: tuple[torch.Tensor, ...] | None = None
        self._layer: list[torch.Tensor] = []
        self._adapter: list[torch.Tensor] = []
        self._scale: list[torch.Tensor] = []
        self._index: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def add_columns(self, layers: torch.Tensor, adapters: torch.Tensor, scales: torch.Tensor) -> int:
        self._layer.append(layers.long())
        self._adapter.append(adapters.long())
        self._scale.append(scales.float())
        self._index = None
        return len(self._adapter) - 1

    def _gather_index(self, device: torch.device, dtype: torch.dtype):
        if self._index is None or self._index[2].dtype != dtype or self._index[2].device != device:
            self._index = (torch.cat(self._layer).to(device), torch.cat(self._adapter).to(device),
                           torch.cat(self._scale).to(device=device, dtype=dtype))
            self._sizes = [len(a) for a in self._adapter]
        return self._index

    def scaling_pass(self, device: torch.device, dtype: torch.dtype) -> None:
        if self.scaling_pass_value == 0:
            self.views = None
        else:
            scale = self._gather_index(device, dtype)[2]
            self.views = (scale * self.scaling_pass_value).unsqueeze(0).split(self._sizes, dim=1)

    def main_pass(self, scalings: torch.Tensor, dtype: torch.dtype) -> None:
        layer, adapter, scale = self._gather_index(scalings.device, dtype)
        self.views = scalings[:, layer, adapter].to(dtype).mul_(scale).split(self._sizes, dim=1)

    def clear(self) -> None:
        self.views = None
