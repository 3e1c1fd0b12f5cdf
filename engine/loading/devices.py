"""Device and dtype choice for ``model.device`` / ``model.dtype``."""

from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16,
          "f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("model.device=cuda but no CUDA device is available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("model.device=mps but MPS is not available")
    return device


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        # CPU keeps float32 until the quantized bf16 kernels land; GPUs get bf16 when supported.
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32 if device.type == "cpu" else torch.float16
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"model.dtype={name!r} is not one of auto, {', '.join(DTYPES)}") from None
