"""One sequence's position in its grammar: which tokens may come next, and feeding it the chosen ones."""

from __future__ import annotations

from collections.abc import Sequence

import llguidance
import torch

from mistralrs.engine.structured.bitmask import bitmask_words, unpack_bitmask
from mistralrs.engine.structured.errors import GrammarError, TokenNotAllowed
from mistralrs.engine.structured.grammar_compiler import CompiledGrammar
from mistralrs.engine.structured.limits import parser_limits
from mistralrs.engine.structured.tokenizer_bridge import lltokenizer_for
from mistralrs.engine.tokenizer.text_tokenizer import TextTokenizer

__all__ = ["GrammarState"]


class GrammarState:
    """An llguidance matcher for one sequence.

    Per decoding step: :meth:`fill_mask` (or :class:`~.batch_mask.BatchMasker` for a whole batch),
    sample, :meth:`advance` with the sampled token, then stop the sequence (finish_reason "stop") if
    :meth:`is_finished`. The mask allows the end-of-generation tokens exactly where the grammar may end,
    so a sampled EOS is the other way a constrained output finishes.
    """

    def __init__(self, grammar: CompiledGrammar, tokenizer: TextTokenizer):
        self.grammar = grammar
        self._tokenizer = tokenizer
        self._lltokenizer = lltokenizer_for(tokenizer)
        self.vocab_size = self._lltokenizer.vocab_size
        self._eos_ids = frozenset(self._lltokenizer.eos_tokens)
        self._matcher = self._new_matcher()
        self._consumed = 0

    def _new_matcher(self) -> llguidance.LLMatcher:
        matcher = llguidance.LLMatcher(self._lltokenizer, self.grammar.grammar, log_level=0, limits=parser_limits())
        if matcher.is_error():  # e.g. a lexer over its limits once the vocabulary is known
            raise GrammarError(f"invalid {self.grammar.kind}: {matcher.get_error()}")
        return matcher

    @property
    def matcher(self) -> llguidance.LLMatcher:
        """The llguidance matcher, for filling many masks at once (:mod:`.batch_mask`); do not advance it."""
        return self._matcher

    @property
    def num_tokens(self) -> int:
        """Tokens consumed since the start (or the last replay)."""
        return self._consumed

    def fill_mask(self, bitmask: torch.Tensor, row: int = 0) -> None:
        """Write the next-token mask into ``bitmask[row]``: a CPU, C-contiguous int32 tensor with
        ``bitmask_words(self.vocab_size)`` columns (exactly: llguidance checks the size)."""
        if bitmask.dtype != torch.int32 or not bitmask.is_cpu or bitmask.dim() != 2:
            raise ValueError("bitmask must be a 2-D int32 CPU tensor")
        target = bitmask[row]
        if not target.is_contiguous():
            raise ValueError("bitmask rows must be contiguous")
        self._matcher.unsafe_compute_mask_ptr(target.data_ptr(), target.numel() * target.element_size())

    def allowed_tokens(self) -> torch.Tensor:
        """Ids the grammar allows next (1-D int64): a convenience for tests and debugging, not the hot path."""
        bitmask = torch.zeros((1, bitmask_words(self.vocab_size)), dtype=torch.int32)
        self.fill_mask(bitmask)
        return unpack_bitmask(bitmask, self.vocab_size)[0].nonzero().flatten()

    def advance(self, token_id: int) -> None:
        """Feed the sampled token. Raises TokenNotAllowed (state unchanged) if the mask forbade it."""
        token_id = int(token_id)
        if not self._allows(token_id):
            raise self._not_allowed(token_id)
        if not self._matcher.consume_token(token_id):
            raise GrammarError(f"grammar matcher failed: {self._matcher.get_error()}")
        self._consumed += 1

    def _allows(self, token_id: int) -> bool:
        """Whether ``token_id`` may come next, without changing the state. Checked before consuming
        because a rejected consume_token leaves the matcher in a permanent error state."""
        if not 0 <= token_id < self.vocab_size:
            return False
        if self._matcher.is_stopped():
            # the grammar is complete: its mask allows the EOS tokens (validate_tokens says no to them)
            return token_id in self._eos_ids and not self._matcher.is_error()
        return self._matcher.validate_tokens([token_id]) == 1

    def _not_allowed(self, token_id: int) -> TokenNotAllowed:
        in_vocab = 0 <= token_id < self._tokenizer.vocab_size
        return TokenNotAllowed(token_id, self._tokenizer.id_to_bytes(token_id) if in_vocab else b"")

    def is_finished(self) -> bool:
        """Nothing but end-of-generation may follow (the grammar is complete, or an EOS was consumed):
        stop the sequence with finish_reason "stop"."""
        return self._matcher.is_stopped()

    def is_accepting(self) -> bool:
        """The output so far is a complete sentence of the grammar (it may still go on)."""
        return self._matcher.is_accepting()

    def rollback(self, num_tokens: int) -> None:
        """Forget the last ``num_tokens`` advanced tokens (e.g. rejected speculative tokens)."""
        if not 0 <= num_tokens <= self._consumed:
            raise ValueError(f"cannot roll back {num_tokens} tokens: {self._consumed} were consumed")
        if num_tokens and not self._matcher.rollback(num_tokens):
            raise GrammarError(f"grammar matcher failed to roll back: {self._matcher.get_error()}")
        self._consumed -= num_tokens

    def replay(self, token_ids: Sequence[int]) -> None:
        """Reset to the grammar's start and consume ``token_ids`` (the output so far), e.g. when a
        preempted sequence is recomputed. Raises TokenNotAllowed if they do not fit the grammar."""
        if self._matcher.is_error():
            self._matcher = self._new_matcher()
        else:
            self._matcher.reset()
        self._consumed = 0
        for token_id in token_ids:
            self.advance(token_id)
