"""Request-level structured-output specs -> llguidance grammars, checked before any decoding starts.

Every function validates its result with llguidance (syntax, unimplemented JSON-schema keywords,
unsatisfiable constraints) and raises :class:`GrammarError` with llguidance's reason, so a bad request
fails at admission rather than mid-generation. Compiling needs no tokenizer: a grammar can be checked
by the server before the engine sees it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import llguidance

from mistralrs.engine.structured.errors import GrammarError
from mistralrs.engine.structured.limits import (
    JSON_WHITESPACE_RUN,
    MAX_CHOICES,
    check_size,
    parser_limits,
)
from mistralrs.engine.structured.schema_check import check_schema_keywords

__all__ = [
    "GRAMMAR_KINDS",
    "JSON_OPTIONS",
    "CompiledGrammar",
    "compile_choice",
    "compile_grammar",
    "compile_json_object",
    "compile_json_schema",
    "compile_lark",
    "compile_regex",
]

# Applied after the schema's own "x-guidance" (which check_schema_keywords refuses anyway):
# lenient=False turns llguidance's unimplemented-keyword warnings into errors.
JSON_OPTIONS = {
    "lenient": False,
    "whitespace_pattern": rf"[\x20\x0A\x0D\x09]{{0,{JSON_WHITESPACE_RUN}}}",
}


@dataclass(frozen=True)
class CompiledGrammar:
    """A validated llguidance grammar (its JSON text, what ``LLMatcher`` takes) and where it came from."""

    kind: str
    grammar: str
    warnings: tuple[str, ...] = ()


def _validated(kind: str, grammar: str) -> CompiledGrammar:
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, None, limits=parser_limits())
    if is_error:
        raise GrammarError(f"invalid {kind}: {messages[0] if messages else 'rejected by the grammar compiler'}")
    return CompiledGrammar(kind, grammar, tuple(messages))


def compile_json_schema(schema: Mapping, *, strict: bool | None = None) -> CompiledGrammar:
    """Output = one JSON value valid under ``schema`` (OpenAI ``response_format: json_schema``).

    ``strict`` is accepted for the API's sake: decoding is always constrained, so every output matches
    the schema whether or not the client asked for strictness (non-strict is best effort, which this
    satisfies). Keys outside the JSON Schema vocabulary and keywords llguidance does not implement
    raise GrammarError naming them.
    """
    if not isinstance(schema, Mapping):
        raise GrammarError(f"JSON schema must be an object, got {type(schema).__name__}")
    try:
        text = json.dumps(schema, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except RecursionError:
        raise GrammarError("JSON schema is too deeply nested") from None
    except (TypeError, ValueError) as e:
        raise GrammarError(f"JSON schema is not plain JSON: {e}") from None
    check_size("JSON schema", len(text))
    check_schema_keywords(schema)
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(text, overrides=JSON_OPTIONS)
    except ValueError as e:
        raise GrammarError(f"invalid JSON schema: {e}") from None
    return _validated("JSON schema", grammar)


def compile_json_object() -> CompiledGrammar:
    """Output = any JSON object (OpenAI ``response_format: json_object``)."""
    return compile_json_schema({"type": "object"})


def compile_regex(pattern: str) -> CompiledGrammar:
    """Output = a full match of ``pattern`` (Rust ``regex`` syntax: no look-around, no backreferences).

    ``\\d`` means ``[0-9]``, as in outlines/vLLM and JSON Schema: Unicode's ~700 other digits would be
    legal output otherwise, which no client asking for ``\\d{4}`` wants. ``\\w``/``\\s`` stay Unicode.
    """
    if not isinstance(pattern, str):
        raise GrammarError(f"regex must be a string, got {type(pattern).__name__}")
    check_size("regex", len(pattern))
    trailing = len(pattern) - len(pattern.rstrip("\\"))
    if trailing % 2:  # the converter would drop the lone backslash and accept another pattern
        raise GrammarError("regex ends in an unescaped backslash")
    lark = "start: /" + llguidance.regex_to_lark(pattern, "d") + "/"
    return _validated("regex", llguidance.LLMatcher.grammar_from_lark(lark))


def compile_choice(choices: Sequence[str]) -> CompiledGrammar:
    """Output = exactly one of ``choices``."""
    if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence):
        raise GrammarError("choice must be a list of strings")
    if not choices:
        raise GrammarError("choice must list at least one string")
    if len(choices) > MAX_CHOICES:
        raise GrammarError(f"choice lists {len(choices)} strings, the limit is {MAX_CHOICES}")
    if not all(isinstance(c, str) for c in choices):
        raise GrammarError("choice must be a list of strings")
    check_size("choice", sum(len(c) for c in choices))
    # Lark string literals take JSON escapes; ensure_ascii=False keeps astral characters out of \ud83d pairs.
    lark = "start: " + " | ".join(json.dumps(c, ensure_ascii=False) for c in choices)
    return _validated("choice", llguidance.LLMatcher.grammar_from_lark(lark))


def compile_lark(grammar: str, *, server_built: bool = False, max_chars: int | None = None) -> CompiledGrammar:
    """Output = a sentence of a Lark grammar (llguidance's dialect; its rule ``start`` is the top).

    JSON schemas embedded with ``%json {...}`` get the same keyword check as a request's schema (and
    so cannot carry ``x-guidance`` options), unless the server built the grammar (``server_built``,
    which may also raise the size limit with ``max_chars``: tools' schemas add up)."""
    if not isinstance(grammar, str):
        raise GrammarError(f"grammar must be a string, got {type(grammar).__name__}")
    check_size("grammar", len(grammar), max_chars)
    if not server_built:
        for schema in _embedded_json_schemas(grammar):
            check_schema_keywords(schema)
    return _validated("grammar", llguidance.LLMatcher.grammar_from_lark(grammar))


def _embedded_json_schemas(grammar: str) -> list[object]:
    """The schemas after each ``%json`` in a Lark grammar (one that does not parse is llguidance's to
    refuse)."""
    decoder = json.JSONDecoder()
    out, at = [], grammar.find("%json")
    while at >= 0:
        start = at + len("%json")
        while start < len(grammar) and grammar[start].isspace():
            start += 1
        try:
            out.append(decoder.raw_decode(grammar, start)[0])
        except (json.JSONDecodeError, RecursionError):
            out.append({})  # not JSON: nothing to walk, and llguidance's parser names the error
        at = grammar.find("%json", start)
    return out


GRAMMAR_KINDS = ("json_schema", "json_object", "regex", "choice", "lark")


def compile_grammar(kind: str, spec: object = None) -> CompiledGrammar:
    """Dispatch on the spec's kind (one of GRAMMAR_KINDS); ``spec`` is the schema / pattern / list /
    grammar text (unused for json_object)."""
    if kind == "json_schema":
        return compile_json_schema(spec)
    if kind == "json_object":
        return compile_json_object()
    if kind == "regex":
        return compile_regex(spec)
    if kind == "choice":
        return compile_choice(spec)
    if kind == "lark":
        return compile_lark(spec)
    raise GrammarError(f"unknown structured-output kind {kind!r}: expected one of {', '.join(GRAMMAR_KINDS)}")
