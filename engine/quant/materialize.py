"""Turn a stored tensor into what a module holds.

Today every weight becomes a dense tensor of the model dtype; keeping blocks quantized behind fast
kernels is a change to this file (and to the Linear the family builds), not to the loader.
"""

from __future__ import annotations

import torch

from ..formats.checkpoint import RawTensor


def dense(raw: RawTensor, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    if raw.qtype in ("F32", "F16", "BF16") and raw.data.dtype != torch.uint8:
        t = raw.data.reshape(raw.shape)
    else:
        from .dequant import dequantize

        t = dequantize(raw.data, raw.qtype, raw.shape)
    out = t.to(device=device, dtype=dtype)
    if out.data_ptr() == raw.data.data_ptr():  # still a view of the read-only file map
        out = out.clone()
    return out
