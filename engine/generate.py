"""Prefill-then-decode generation for a handful of sequences over one preallocated KV cache.

Each sequence owns a contiguous run of cache slots; the prompt is run once (prefill), then every
step feeds only the new token of each live sequence (decode), all sequences in one forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from .batch import contiguous_batch
from .kv_cache import KVCache
from .loader import LoadedModel
from .sampler import Sampler, SamplingParams, make_generator
from .stop_strings import StopStringFilter


class PromptTooLong(ValueError):
    pass


@dataclass
class GenerationEvent:
    index: int  # which prompt
    text: str  # newly completed text (may be empty while a UTF-8 char or stop string is pending)
    token: int | None
    finish_reason: str | None = None  # "stop" | "length" when the sequence ends


@dataclass
class _Seq:
    index: int
    prompt_len: int
    params: SamplingParams
    slot_base: int
    generator: torch.Generator
    detok: object
    stops: StopStringFilter
    generated: int = 0
    last_token: int = -1
    done: bool = False


class Generator:
    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.sampler = Sampler()
        self._cache: KVCache | None = None

    def _cache_for(self, slots: int) -> KVCache:
        if self._cache is None or self._cache.num_slots < slots:
            self._cache = None  # free the old pool before allocating the new one
            self._cache = KVCache(self.loaded.model.cache_spec(), slots, self.loaded.dtype, self.loaded.device)
        return self._cache

    def check_prompt(self, ids: list[int]) -> None:
        if not ids:
            raise ValueError("the prompt is empty (no tokens to condition on)")
        if len(ids) >= self.loaded.max_seq_len:
            raise PromptTooLong(f"the prompt has {len(ids)} tokens; the context holds {self.loaded.max_seq_len} "
                                f"(raise model.max_seq_len if the model allows more)")

    @torch.inference_mode()
    def logits(self, ids: list[int]) -> torch.Tensor:
        """Logits at every position of one sequence: [len, vocab] float32."""
        self.check_prompt(ids)
        cache = self._cache_for(len(ids))
        batch = contiguous_batch([0], [len(ids)], [0], [0], self.loaded.device)
        tokens = torch.tensor(ids, device=self.loaded.device)
        return self.loaded.model.logits(self.loaded.model(tokens, batch, cache))

    @torch.inference_mode()
    def run(self, prompts: list[list[int]], params: list[SamplingParams]) -> Iterator[GenerationEvent]:
        from .tokenizer.detokenizer import IncrementalDetokenizer

        model, device, tok = self.loaded.model, self.loaded.device, self.loaded.tokenizer
        for ids in prompts:
            self.check_prompt(ids)
        span = self.loaded.max_seq_len
        cache = self._cache_for(span * len(prompts))
        seqs = [
            _Seq(i, len(ids), p.validate(), i * span, make_generator(p.seed, device),
                 IncrementalDetokenizer(tok, prompt_ids=ids), StopStringFilter(p.stop))
            for i, (ids, p) in enumerate(zip(prompts, params))
        ]
        # prefill: every prompt in one forward, logits only at each prompt's last position
        batch = contiguous_batch([0] * len(seqs), [s.prompt_len for s in seqs], [0] * len(seqs),
                                 [s.slot_base for s in seqs], device)
        hidden = model(torch.tensor([t for ids in prompts for t in ids], device=device), batch, cache)
        last = torch.tensor([seg.q_start + seg.q_len - 1 for seg in batch.segments], device=device)
        live = seqs
        logits = model.logits(hidden[last])
        while live:
            next_tokens = self.sampler(logits, [s.params for s in live], [s.generator for s in live]).tolist()
            for seq, token in zip(live, next_tokens):
                yield from self._accept(seq, token)
            live = [s for s in live if not s.done]
            if not live:
                break
            batch = contiguous_batch([0] * len(live), [1] * len(live), [s.prompt_len + s.generated - 1 for s in live],
                                     [s.slot_base for s in live], device)
            hidden = model(torch.tensor([s.last_token for s in live], device=device), batch, cache)
            logits = model.logits(hidden)

    def _accept(self, seq: _Seq, token: int) -> Iterator[GenerationEvent]:
        seq.generated += 1
        seq.last_token = token
        if token in self.loaded.tokenizer.eog_ids and not seq.params.ignore_eos:
            seq.done = True
            yield GenerationEvent(seq.index, seq.stops.push(seq.detok.flush()) + seq.stops.flush(), token, "stop")
            return
        text = seq.stops.push(seq.detok.push(token))
        if seq.stops.stopped:
            seq.done = True
            yield GenerationEvent(seq.index, text, token, "stop")
            return
        out_of_room = seq.prompt_len + seq.generated >= self.loaded.max_seq_len
        if seq.generated >= seq.params.max_tokens or out_of_room:
            seq.done = True
            yield GenerationEvent(seq.index, text + seq.stops.push(seq.detok.flush()) + seq.stops.flush(), token, "length")
            return
        yield GenerationEvent(seq.index, text, token)
