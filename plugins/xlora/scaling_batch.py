"""The batch of X-LoRA's scaling pass once scalings freeze: the main pass's batch cut to the leading
positions that still need scalings (the engine's batches are built in engine/core/batch.py)."""

from __future__ import annotations

import torch

from mistralrs.engine.core.batch import AttentionBatch, DecodeSlots, SeqSegment


def leading_tokens_batch(batch: AttentionBatch, keep: list[int]) -> AttentionBatch:
    """The same sequences with only the first ``keep[i]`` of each one's new tokens (sequences
    keeping none are dropped): a pass that needs fewer positions than its sibling (X-LoRA's
    scaling pass once a sequence's scalings are frozen). :func:`kept_rows` says which rows."""
    positions, slots, segments = [], [], []
    q_start = 0
    for seg, n in zip(batch.segments, keep):
        if n <= 0:
            continue
        past = seg.ctx_len - seg.q_len
        ctx = past + n
        kv = slice(seg.kv_slots.start, seg.kv_slots.start + ctx) if isinstance(seg.kv_slots, slice) else seg.kv_slots[:ctx]
        rows = slice(seg.q_start, seg.q_start + n)
        positions.append(batch.positions[rows])
        slots.append(batch.slot_mapping[rows])
        segments.append(SeqSegment(q_start, n, ctx, kv))
        q_start += n
    decode = None
    if segments and all(s.q_len == 1 for s in segments) and not isinstance(segments[0].kv_slots, slice):
        device = batch.positions.device
        decode = DecodeSlots(torch.nn.utils.rnn.pad_sequence([s.kv_slots for s in segments], batch_first=True),
                             torch.tensor([s.ctx_len for s in segments], device=device))
    return AttentionBatch(
        positions=torch.cat(positions) if positions else batch.positions[:0],
        slot_mapping=torch.cat(slots) if slots else batch.slot_mapping[:0],
        segments=segments,
        decode=decode,
    )


def kept_rows(batch: AttentionBatch, keep: list[int]) -> torch.Tensor:
    """Rows of ``batch`` that :func:`leading_tokens_batch` keeps, in its order."""
    rows = [torch.arange(seg.q_start, seg.q_start + n) for seg, n in zip(batch.segments, keep) if n > 0]
    return torch.cat(rows).to(batch.positions.device) if rows else torch.zeros(0, dtype=torch.long)
