"""One forward step's worth of sequences, flattened: what the model needs besides token ids.

Built once per step by the runner; per-layer code only indexes into it, so the Python work per
step stays O(layers).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import torch


@dataclass
class SeqSegment:
    """One sequence's share of the step: queries ``[q_start, q_start + q_len)`` of the flat batch,
    attending to its first ``ctx_len`` cached positions (the new ones included)."""

    q_start: int
    q_len: int
    ctx_len: int
    kv_slots: torch.Tensor | slice  # cache slots of positions 0..ctx_len-1; a slice when contiguous

    @property
    def q_slice(self) -> slice:
        return slice(self.q_start, self.q_start + self.q_len)


@dataclass
class DecodeSlots:
    """When every sequence of the step decodes one token: all their context slots, padded, for the
    native decode attention (one call per layer for the whole batch)."""

    slots: torch.Tensor  # int64 [B, max context]
    lens: torch.Tensor  # int64 [B]


@dataclass
class AttentionBatch:
    positions: torch.Tensor  # [T] position of each token in its sequence
    slot_mapping: torch.Tensor  # [T] cache slot each token's K/V is written to
    segments: list[SeqSegment]
    decode: DecodeSlots | None = None
    _masks: dict[int | None, list[torch.Tensor | None]] = field(default_factory=dict)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    def masks(self, window: int | None = None) -> list[torch.Tensor | None]:
        """Per segment: a bool mask [q_len, ctx_len] (True = attend), or None when plain causal with
        q_len == ctx_len (SDPA's is_causal) or a single query seeing everything. ``window`` limits
        attention to the last ``window`` positions (sliding-window layers)."""
        if window not in self._masks:
            self._masks[window] = [_segment_mask(s, window, self.positions.device) for s in self.segments]
        return self._masks[window]


def _segment_mask(seg: SeqSegment, window: int | None, device: torch.device) -> torch.Tensor | None:
    past = seg.ctx_len - seg.q_len
    if window is None or window >= seg.ctx_len:
        if seg.q_len == seg.ctx_len or seg.q_len == 1:
            return None
    q_pos = torch.arange(past, seg.ctx_len, device=device).unsqueeze(1)
    k_pos = torch.arange(seg.ctx_len, device=device).unsqueeze(0)
    mask = k_pos <= q_pos
    if window is not None:
        mask &= k_pos > q_pos - window
    return mask


def contiguous_batch(starts: list[int], q_lens: list[int], past_lens: list[int], slot_offsets: list[int],
                     device: torch.device) -> AttentionBatch:
    """A batch whose sequences each own a contiguous run of slots starting at ``slot_offsets[i]``."""
    positions, slots, segments = [], [], []
    q_start = 0
    for q_len, past, base in zip(q_lens, past_lens, slot_offsets):
        positions.append(torch.arange(past, past + q_len))
        slots.append(torch.arange(base + past, base + past + q_len))
        segments.append(SeqSegment(q_start, q_len, past + q_len, slice(base, base + past + q_len)))
        q_start += q_len
    return AttentionBatch(
        positions=torch.cat(positions).to(device),
        slot_mapping=torch.cat(slots).to(device),
        segments=segments,
    )


@functools.lru_cache(maxsize=8)
def _block_offsets(block_size: int) -> torch.Tensor:
    return torch.arange(block_size)


def paged_batch(chunks: list[tuple[list[int], int, int]], block_size: int, device: torch.device) -> AttentionBatch:
    """A batch over a paged cache. Each chunk is (block table, tokens already cached, new tokens);
    slot of position p = table[p // block_size] * block_size + p % block_size. Built every step, so
    it keeps to a few tensor ops per sequence."""
    positions, slots, segments = [], [], []
    offsets = _block_offsets(block_size)
    q_start = 0
    for table, cached, n in chunks:
        ctx = cached + n
        kv_slots = (torch.tensor(table[: -(-ctx // block_size)]).unsqueeze(1) * block_size + offsets).view(-1)[:ctx]
        positions.append(torch.arange(cached, ctx))
        slots.append(kv_slots[cached:])
        segments.append(SeqSegment(q_start, n, ctx, kv_slots if device.type == "cpu" else kv_slots.to(device)))
        q_start += n
    decode = None
    if all(seg.q_len == 1 for seg in segments):
        contexts = [seg.kv_slots for seg in segments]
        padded = contexts[0].unsqueeze(0) if len(contexts) == 1 else torch.nn.utils.rnn.pad_sequence(contexts, batch_first=True)
        decode = DecodeSlots(padded, torch.tensor([seg.ctx_len for seg in segments], device=device))
    return AttentionBatch(
        positions=(positions[0] if len(positions) == 1 else torch.cat(positions)).to(device),
        slot_mapping=(slots[0] if len(slots) == 1 else torch.cat(slots)).to(device),
        segments=segments,
        decode=decode,
    )
