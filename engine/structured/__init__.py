"""Structured outputs: constrained decoding with llguidance.

A request's spec (JSON schema, any JSON object, regex, choice, Lark grammar) compiles to a
:class:`CompiledGrammar` (checked up front; :class:`GrammarError` names what is wrong). Each sequence
then holds a :class:`GrammarState` that masks the logits at every step (:class:`BatchMasker` for a
batch) and is advanced with the sampled token.
"""

from mistralrs.engine.structured.batch_mask import BatchMasker, apply_token_bitmask
from mistralrs.engine.structured.bitmask import bitmask_words, unpack_bitmask
from mistralrs.engine.structured.errors import GrammarError, TokenNotAllowed
from mistralrs.engine.structured.grammar_compiler import (
    GRAMMAR_KINDS,
    CompiledGrammar,
    compile_choice,
    compile_grammar,
    compile_json_object,
    compile_json_schema,
    compile_lark,
    compile_regex,
)
from mistralrs.engine.structured.grammar_state import GrammarState
from mistralrs.engine.structured.limits import MAX_CHOICES, MAX_GRAMMAR_CHARS, MAX_SCHEMA_DEPTH
from mistralrs.engine.structured.tokenizer_bridge import lltokenizer_for

__all__ = [
    "GRAMMAR_KINDS",
    "MAX_CHOICES",
    "MAX_GRAMMAR_CHARS",
    "MAX_SCHEMA_DEPTH",
    "BatchMasker",
    "CompiledGrammar",
    "GrammarError",
    "GrammarState",
    "TokenNotAllowed",
    "apply_token_bitmask",
    "bitmask_words",
    "compile_choice",
    "compile_grammar",
    "compile_json_object",
    "compile_json_schema",
    "compile_lark",
    "compile_regex",
    "lltokenizer_for",
    "unpack_bitmask",
]
