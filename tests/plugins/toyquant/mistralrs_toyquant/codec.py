"""TOY_Q8 blocks: w = scale * code, the scale the block's largest magnitude / 127 (as float16)."""

import torch


def dequantize(blocks: torch.Tensor, spec) -> torch.Tensor:
    scale = blocks[:, :2].contiguous().view(torch.float16).float()
    return blocks[:, 2:].contiguous().view(torch.int8).float() * scale


def quantize(x: torch.Tensor) -> torch.Tensor:
    scale = (x.abs().amax(dim=-1, keepdim=True) / 127).to(torch.float16)
    inverse = torch.where(scale == 0, 0.0, 1.0 / scale.float())
    codes = (x * inverse).round().clamp(-127, 127).to(torch.int8)
    return torch.cat([scale.view(torch.uint8), codes.view(torch.uint8)], dim=1)
