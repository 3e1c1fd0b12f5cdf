"""An X-LoRA model: the base model with adapter-wrapped linears, run twice per step.

1. Scaling pass over cache 0: the adapters scaled by ``scaling_pass_value``; its final normed
   hidden states go to the classifier, giving each token its scalings.
2. Main pass over cache 1 with those scalings; its hidden states give the logits.

Each pass keeps its own KV cache, so a decode step runs both on the new tokens only. In the
non-granular mode (``tgt_non_granular_index = k``) a sequence's scalings freeze at its position
``prompt + k - 1``: later positions reuse them and skip the scaling pass (a call without
sequences, such as ``LLM.logits``, is granular throughout).
"""

from __future__ import annotations

import torch
from torch import nn

from mistralrs.engine.core.batch import AttentionBatch

from mistralrs.plugins.xlora.scaling_batch import kept_rows, leading_tokens_batch

from mistralrs.plugins.xlora.classifier import XLoraClassifier
from mistralrs.plugins.xlora.mixer import ScalingMixer


class XLoraModel(nn.Module):
    """The ``CausalLM`` contract (registry/interfaces.py) over a base model's."""

    num_kv_caches = 2  # 0: scaling pass, 1: main pass

    def __init__(self, base: nn.Module, classifier: XLoraClassifier, mixer: ScalingMixer,
                 adapter_info: dict, non_granular: int | None = None):
        super().__init__()
        self.base, self.classifier, self.mixer = base, classifier, mixer
        self.adapter_info = adapter_info
        self.non_granular = non_granular
        self.dtype = torch.float32  # activations; prepare() sets the loaded one

    # -- the base model's interface --------------------------------------------------------------
    @property
    def config(self):
        return self.base.config

    def cache_spec(self):
        return self.base.cache_spec()

    def prepare(self, max_positions: int, device: torch.device, dtype: torch.dtype) -> None:
        self.base.prepare(max_positions, device, dtype)
        self.dtype = dtype

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.base.logits(hidden)

    # -- the two passes --------------------------------------------------------------------------
    def step(self, input_ids: torch.Tensor, batches: list[AttentionBatch], cache, seqs=None) -> torch.Tensor:
        return self(input_ids, batches, cache, seqs)

    def forward(self, input_ids: torch.Tensor, batches: list[AttentionBatch], cache, seqs=None) -> torch.Tensor:
        scaling_batch, main_batch = batches
        if self.non_granular is None or seqs is None:
            scalings = self.scalings(input_ids, scaling_batch, cache)
        else:
            scalings = self._non_granular_scalings(input_ids, scaling_batch, cache, seqs)
        self.mixer.main_pass(scalings, self.dtype)
        try:
            return self.base(input_ids, main_batch, cache)
        finally:
            self.mixer.clear()

    def scalings(self, input_ids: torch.Tensor, batch: AttentionBatch, cache) -> torch.Tensor:
        """The scaling pass and the classifier: [T, n_layers, n_adapters]."""
        self.mixer.scaling_pass(input_ids.device, self.dtype)
        try:
            return self.classifier(self.base(input_ids, batch, cache))
        finally:
            self.mixer.clear()

    def _non_granular_scalings(self, input_ids, batch: AttentionBatch, cache, seqs) -> torch.Tensor:
        freeze_at = [len(seq.prompt_ids) + self.non_granular for seq in seqs]  # first frozen position
        keep = []
        for seq, seg, frozen in zip(seqs, batch.segments, freeze_at):
            seq.max_hashed_tokens = frozen  # later K/V depend on where the prompt ended, not just tokens
            past = seg.ctx_len - seg.q_len
            keep.append(max(0, min(seg.q_len, frozen - past)))
        out = torch.empty(input_ids.shape[0], self.classifier.n_layers, self.classifier.n_adapters,
                          device=input_ids.device)
        if any(keep):
            rows = kept_rows(batch, keep)
            out[rows] = self.scalings(input_ids[rows], leading_tokens_batch(batch, keep), cache)
        for seq, seg, n, frozen in zip(seqs, batch.segments, keep, freeze_at):
            past = seg.ctx_len - seg.q_len
            if n > 0 and past + n == frozen:  # this step computed the last granular position
                seq.adapter_state = out[seg.q_start + n - 1].clone()
            if n == seg.q_len:
                continue
            if seq.adapter_state is None:
                raise RuntimeError(f"sequence {seq.seq_id}: X-LoRA scalings to freeze were never computed")
            out[seg.q_start + n : seg.q_start + seg.q_len] = seq.adapter_state
        return out
