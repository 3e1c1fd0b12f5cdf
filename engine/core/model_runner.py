"""Runs one scheduled step: builds the flat batch, calls the model, samples where due."""

from __future__ import annotations

import torch

from mistralrs.registry.interfaces import CausalLM

from mistralrs.engine.core.batch import paged_batch
from mistralrs.engine.core.block_manager import KVBlockPool
from mistralrs.engine.core.kv_cache import KVCache
from mistralrs.engine.core.sampler import Sampled, Sampler, SampleRow, token_logprobs
from mistralrs.engine.core.scheduler import ScheduledSeq
from mistralrs.engine.core.sequence import TokenLogprob


class ModelRunner:
    def __init__(self, model: CausalLM, cache: KVCache, pool: KVBlockPool, device: torch.device):
        self.model, self.cache, self.pool, self.device = model, cache, pool, device
        self.sampler = Sampler()
        self.masker = None  # engine.structured.BatchMasker, set by the engine with the first grammar

    @torch.inference_mode()
    def run(self, scheduled: list[ScheduledSeq]) -> tuple[Sampled, list[ScheduledSeq]]:
        """Returns the sampled tokens of the sequences that reached their last token (in order)."""
        ids: list[int] = []
        for s in scheduled:
            ids.extend(s.seq.all_ids[s.seq.num_cached : s.seq.num_cached + s.num_new])
        # One batch per KV cache the model keeps (X-LoRA: scaling pass, main pass); the last one is
        # the pass whose hidden states give the logits.
        batches = [paged_batch([(s.seq.block_tables[c], s.seq.num_cached, s.num_new) for s in scheduled],
                               self.pool.block_size, self.device) for c in range(self.pool.num_caches)]
        batch = batches[-1]
        # the grammar masks of the rows sampled this step are computed while the forward pass runs
        grammars = [s.seq.grammar for s in scheduled if s.sample]
        masks = (self.masker.start(grammars)
                 if self.masker is not None and any(g is not None for g in grammars) else None)
        input_ids = torch.tensor(ids, device=self.device)
        hidden = self.model.step(input_ids, batches, self.cache, [s.seq for s in scheduled])
        self._prompt_logprobs(scheduled, batch, hidden)
        due = [(s, seg) for s, seg in zip(scheduled, batch.segments) if s.sample]
        if not due:
            return Sampled([], []), []
        last = torch.tensor([seg.q_start + seg.q_len - 1 for _, seg in due], device=self.device)
        logits = self.model.logits(hidden[last])
        if masks is not None:
            masks.apply(logits)  # before sampling, so logprobs see the mask too
        rows = [SampleRow(s.seq.params, s.seq.generator, s.seq.prompt_ids, s.seq.output_ids) for s, _ in due]
        return self.sampler(logits, rows), [s for s, _ in due]

    def _prompt_logprobs(self, scheduled: list[ScheduledSeq], batch, hidden: torch.Tensor) -> None:
        """For echo with logprobs: the logprob of each prompt token given the ones before it."""
        for s, seg in zip(scheduled, batch.segments):
            seq = s.seq
            k = seq.params.prompt_logprobs
            if k is None or seq.output_ids or seq.num_cached >= len(seq.prompt_ids):
                continue
            if seq.num_cached == 0:
                seq.prompt_logprobs = [None]  # the first token has no context
            logprobs = self.model.logits(hidden[seg.q_slice]).log_softmax(dim=-1)
            start = seq.num_cached
            for j in range(seg.q_len):
                nxt = start + j + 1
                if nxt < len(seq.prompt_ids):
                    chosen, top = token_logprobs(logprobs[j], seq.prompt_ids[nxt], k)
                    seq.prompt_logprobs.append(TokenLogprob(seq.prompt_ids[nxt], chosen, top))


@torch.inference_mode()
def full_logits(model: CausalLM, ids: list[int], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Logits at every position of one sequence ([len, vocab] float32), with a throwaway cache so
    the engine's pool is untouched."""
    from mistralrs.engine.core.batch import contiguous_batch

    caches = model.num_kv_caches
    cache = KVCache(model.cache_spec(), len(ids) * caches, dtype, device)
    batches = [contiguous_batch([0], [len(ids)], [0], [c * len(ids)], device) for c in range(caches)]
    return model.logits(model.step(torch.tensor(ids, device=device), batches, cache))
