"""A grammar's first mask, computed before the request is admitted.

Compiling checks a grammar's syntax, but llguidance builds its lexer lazily: a pattern such as
``(a{1000}){1000}`` compiles in a millisecond, then spends a second on the first mask and ends in a
lexer error. Computing that mask here, on a worker thread with the model's tokenizer, turns such a
grammar into the request's 400 instead of a stall of the compute thread and an engine error. It also
builds the tokenizer bridge (cached) before the first constrained request reaches the engine.
"""

from __future__ import annotations

import torch

from mistralrs.engine.structured.bitmask import bitmask_words
from mistralrs.engine.structured.errors import GrammarError
from mistralrs.engine.structured.grammar_compiler import CompiledGrammar
from mistralrs.engine.structured.grammar_state import GrammarState


def probe_grammar(grammar: CompiledGrammar, tokenizer) -> None:
    """Raise GrammarError if the grammar cannot give its first masks within llguidance's limits: the
    first, then (after one allowed token) the second, where a lexer built lazily tends to give out."""
    state = GrammarState(grammar, tokenizer)
    try:
        state.fill_mask(torch.zeros((1, bitmask_words(state.vocab_size)), dtype=torch.int32))
        allowed = state.allowed_tokens() if not state.matcher.is_error() else None
        if allowed is not None and len(allowed) and not state.is_finished():
            state.advance(int(allowed[0]))
            state.allowed_tokens()
    except GrammarError as exc:
        raise GrammarError(f"the {grammar.kind} is too complex to match: {exc}") from None
    if state.matcher.is_error():
        raise GrammarError(f"the {grammar.kind} is too complex to match: {state.matcher.get_error()}")
