"""The token bitmask layout llguidance writes: int32 words, bit ``i % 32`` of word ``i // 32`` = token ``i``."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["bitmask_words", "unpack_bitmask"]


def bitmask_words(vocab_size: int) -> int:
    """int32 words in one bitmask row for a vocabulary of ``vocab_size`` tokens."""
    return (vocab_size + 31) // 32


def unpack_bitmask(bitmask: torch.Tensor, vocab: int) -> torch.Tensor:
    """``[rows, words]`` int32 bitmask (CPU) -> ``[rows, vocab]`` bool, True = allowed; ids past
    ``32 * words`` come out False."""
    # bytes of little-endian words: byte k of word w holds tokens 32w+8k .. 32w+8k+7, least significant bit first
    as_bytes = bitmask.numpy().astype("<i4", copy=False).view(np.uint8)
    bits = np.unpackbits(as_bytes, axis=-1, count=vocab, bitorder="little")  # count pads with zeros
    return torch.from_numpy(bits.view(np.bool_))
