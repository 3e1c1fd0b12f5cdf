"""The engine core: requests in, one scheduled step at a time, events out. Single-threaded; the
async wrapper (async_engine.py) runs it in its own thread."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch

from mistralrs.conf.schema import EngineConfig

from mistralrs.engine.core.block_manager import KVBlockPool
from mistralrs.engine.core.context_policy import ContextLengthExceeded, check_fits
from mistralrs.engine.core.kv_cache import KVCache, KVDType, check_kv_head_dims, kv_cache_dtype, kv_row_bytes
from mistralrs.engine.loading.loader import LoadedModel
from mistralrs.engine.core.model_runner import ModelRunner
from mistralrs.engine.core.sampler import SamplingParams, make_generator
from mistralrs.engine.core.scheduler import Scheduler
from mistralrs.engine.core.sequence import Sequence, SeqEvent, TokenLogprob


def _prompt_logprob_mark(seq: Sequence) -> int | None:
    return None if seq.prompt_logprobs is None else len(seq.prompt_logprobs)


def _rewind_prompt_logprobs(seq: Sequence, mark: int | None) -> None:
    """Drop prompt logprobs a failed run appended (the retry computes them again)."""
    if mark is None:
        seq.prompt_logprobs = None
    elif seq.prompt_logprobs is not None:
        del seq.prompt_logprobs[mark:]


log = logging.getLogger(__name__)


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_blocks_total: int
    kv_blocks_free: int
    prefix_hit_tokens: int
    prefix_queried_tokens: int
    prompt_tokens: int
    generated_tokens: int
    preemptions: int


def kv_bytes_per_token(model: torch.nn.Module, dtype: KVDType, num_caches: int) -> int:
    spec = model.cache_spec()
    rows = kv_row_bytes(dtype, spec.head_dim) + kv_row_bytes(dtype, spec.v_head_dim or spec.head_dim)
    return spec.num_layers * spec.num_kv_heads * rows * num_caches


class LLMEngine:
    def __init__(self, loaded: LoadedModel, cfg: EngineConfig, exact: bool = True):
        """``exact``: the model runs in the exact reference mode (dense weights), which keeps an
        ``engine.kv_cache_dtype=auto`` cache at the activations' precision."""
        self.loaded = loaded
        self.cfg = cfg
        model = loaded.model
        self.num_caches = model.num_kv_caches
        # Slots of the one pool that every cache's blocks come from (X-LoRA: two per token).
        self.kv_dtype = kv_cache_dtype(cfg.kv_cache_dtype, loaded.dtype, exact)
        spec = model.cache_spec()
        check_kv_head_dims(self.kv_dtype, (spec.head_dim, spec.v_head_dim or spec.head_dim))
        per_slot = kv_bytes_per_token(model, self.kv_dtype, 1)
        tokens = cfg.kv_cache_tokens or min(cfg.max_seqs * loaded.max_seq_len * self.num_caches,
                                            int(cfg.kv_cache_memory_gb * 2**30 // per_slot))
        num_blocks = max(1, tokens // cfg.block_size)
        self.pool = KVBlockPool(num_blocks, cfg.block_size, self.num_caches)
        self.cache = KVCache(model.cache_spec(), num_blocks * cfg.block_size, self.kv_dtype, loaded.device)
        self.scheduler = Scheduler(self.pool, cfg.max_seqs, cfg.max_batch_tokens, cfg.max_waiting)
        self.runner = ModelRunner(model, self.cache, self.pool, loaded.device)
        self.prompt_tokens = 0
        self.generated_tokens = 0

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def max_seq_len(self) -> int:
        return self.loaded.max_seq_len

    # -- requests -----------------------------------------------------------------------------
    def check_request(self, prompt_ids: list[int], params: SamplingParams) -> None:
        params.validate(self.loaded.config.vocab_size)
        if not prompt_ids:
            raise ValueError("the prompt is empty (no tokens to condition on)")
        vocab = self.loaded.config.vocab_size
        if min(prompt_ids) < 0 or max(prompt_ids) >= vocab:
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        check_fits(len(prompt_ids), params.max_tokens, self.max_seq_len)
        total = len(prompt_ids) + params.max_tokens
        blocks = self.pool.blocks_for(total) * self.num_caches
        if blocks > self.pool.num_blocks:
            raise ContextLengthExceeded(
                f"the request needs {blocks} KV blocks but the cache has {self.pool.num_blocks} "
                f"(raise engine.kv_cache_tokens or engine.kv_cache_memory_gb)")

    def add_request(self, prompt_ids: list[int], params: SamplingParams,
                    emit: Callable[[SeqEvent], None]) -> list[Sequence]:
        """Queue ``params.n`` sequences for one prompt; ``emit`` receives every event of each."""
        from mistralrs.engine.tokenizer.detokenizer import IncrementalDetokenizer

        self.check_request(prompt_ids, params)
        seqs = []
        for i in range(params.n):
            seed = None if params.seed is None else params.seed + i
            seqs.append(Sequence(list(prompt_ids), params, emit, index=i,
                                 detokenizer=IncrementalDetokenizer(self.tokenizer, prompt_ids=prompt_ids),
                                 generator=make_generator(seed, self.loaded.device),
                                 block_tables=[[] for _ in range(self.num_caches)],
                                 grammar=self._grammar_state(params.grammar)))
        self.scheduler.add(seqs)
        self.prompt_tokens += len(prompt_ids) * params.n
        return seqs

    def _grammar_state(self, grammar):
        """A fresh matcher for one sequence (None when unconstrained); the masker comes with the first."""
        if grammar is None:
            return None
        from mistralrs.engine.structured import BatchMasker, GrammarState

        if self.runner.masker is None:
            self.runner.masker = BatchMasker(self.tokenizer, max_batch=self.cfg.max_seqs)
        return GrammarState(grammar, self.tokenizer)

    def abort(self, seq: Sequence) -> None:
        if not seq.is_finished:
            seq.finish_reason = "abort"
            self.scheduler.remove(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    # -- the step -------------------------------------------------------------------------------
    def step(self) -> int:
        """One scheduled step. A step that raises is retried one sequence at a time, so a sequence
        whose request breaks the model or the sampler ends alone (``finish_reason: "error"``) and the
        others go on decoding."""
        scheduled = self.scheduler.schedule()
        if not scheduled:
            return 0
        marks = [_prompt_logprob_mark(s.seq) for s in scheduled]
        try:
            self._run(scheduled)
        except Exception:
            log.exception("engine step over %d sequence(s) failed; running them one at a time", len(scheduled))
            for s, mark in zip(scheduled, marks):
                _rewind_prompt_logprobs(s.seq, mark)
                if len(scheduled) == 1 or not self._run_alone(s):
                    _rewind_prompt_logprobs(s.seq, mark)
                    self._fail(s.seq)
        return len(scheduled)

    def _run(self, scheduled: list) -> None:
        sampled, due = self.runner.run(scheduled)
        for s in scheduled:
            s.seq.num_cached += s.num_new
            self.pool.register_full_blocks(s.seq)
        for s, token, logprob in zip(due, sampled.tokens, sampled.logprobs):
            self._append(s.seq, token, logprob)

    def _run_alone(self, s) -> bool:
        try:
            self._run([s])
            return True
        except Exception as exc:  # this sequence alone fails; the error reaches its client
            log.error("sequence %d failed and was ended: %s: %s", s.seq.seq_id, type(exc).__name__, exc)
            return False

    def _fail(self, seq: Sequence) -> None:
        if seq.is_finished:
            return
        seq.finish_reason = "error"
        self.scheduler.remove(seq)
        seq.emit(SeqEvent(seq.seq_id, seq.index, None, "", finish_reason="error"))

    def _append(self, seq: Sequence, token: int, logprob) -> None:
        seq.output_ids.append(token)
        self.generated_tokens += 1
        lp = TokenLogprob(token, *logprob) if logprob is not None else None
        prompt_lp = seq.prompt_logprobs if len(seq.output_ids) == 1 and seq.params.prompt_logprobs is not None else None
        params = seq.params
        finish = None
        if seq.grammar is not None and not self._advance_grammar(seq, token):
            return
        grammar_done = seq.grammar is not None and seq.grammar.is_finished()
        if not params.ignore_eos and (token in self.tokenizer.eog_ids or token in params.stop_token_ids):
            finish, text = "stop", seq.stops.push(seq.detokenizer.flush()) + seq.stops.flush()
        else:
            text = seq.stops.push(seq.detokenizer.push(token))
            if seq.stops.stopped:
                finish = "stop"
            elif grammar_done:  # the grammar is complete: nothing but the end may follow
                finish = "stop"
                text += seq.stops.push(seq.detokenizer.flush()) + seq.stops.flush()
            elif len(seq.output_ids) >= params.max_tokens or seq.num_tokens >= self.max_seq_len:
                finish = "length"
                text += seq.stops.push(seq.detokenizer.flush()) + seq.stops.flush()
        if finish:
            seq.finish_reason = finish
            self.scheduler.remove(seq)
        seq.emit(SeqEvent(seq.seq_id, seq.index, token, text, lp, finish, prompt_lp))

    def _advance_grammar(self, seq: Sequence, token: int) -> bool:
        """Feed the sampled token to the sequence's grammar. The mask allowed only fitting tokens, so a
        refusal means the matcher failed (e.g. a lexer over its limits): it ends this sequence alone
        (raising here would rerun the step of sequences that already took their token)."""
        try:
            seq.grammar.advance(token)
            return True
        except Exception as exc:  # noqa: BLE001 - the library's own errors too: this sequence alone ends
            log.error("sequence %d: token %d breaks its grammar (%s); ending it", seq.seq_id, token, exc)
            self._fail(seq)
            return False

    def stats(self) -> EngineStats:
        b = self.pool.stats()
        return EngineStats(len(self.scheduler.running), len(self.scheduler.waiting), b.total, b.free,
                           b.prefix_hit_tokens, b.prefix_queried_tokens, self.prompt_tokens,
                           self.generated_tokens, self.scheduler.preemptions)

    # -- synchronous driving (Python API, CLI, bench) ---------------------------------------------
    def run_until_done(self, seqs: list[Sequence]) -> None:
        while any(not s.is_finished for s in seqs):
            if not self.step():
                time.sleep(0)  # nothing schedulable this instant; cannot happen without other users
