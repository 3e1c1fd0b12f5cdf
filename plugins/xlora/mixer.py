"""What the X-LoRA layers multiply their adapters by during the current pass."""

from __future__ import annotations

import torch


class ScalingMixer:
    """Scaling pass: every adapter scaled by ``scaling_pass_value`` (0: the layers add nothing).
    Main pass: ``scalings`` [T, n_layers, n_adapters] from the classifier, one row per token."""

    def __init__(self, scaling_pass_value: float):
        self.scaling_pass_value = scaling_pass_value
        self.scalings: torch.Tensor | None = None

    def column_scalings(self, layer: int, column_adapter: torch.Tensor,
                        column_scale: torch.Tensor) -> torch.Tensor | None:
        """Per rank column of a layer's concatenated adapters: [T, Σr], [Σr], or None for zero."""
        if self.scalings is None:
            return None if self.scaling_pass_value == 0 else column_scale * self.scaling_pass_value
        return self.scalings[:, layer].index_select(-1, column_adapter) * column_scale
