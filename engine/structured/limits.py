"""Bounds on what a request may ask the grammar compiler and matcher to do: the spec is untrusted HTTP input."""

from __future__ import annotations

import llguidance

from mistralrs.engine.structured.errors import GrammarError

__all__ = [
    "JSON_WHITESPACE_RUN",
    "MAX_CHOICES",
    "MAX_GRAMMAR_CHARS",
    "MAX_SCHEMA_DEPTH",
    "check_size",
    "parser_limits",
]

# Characters of grammar source (JSON schema serialized compactly, regex, Lark text, all choices together).
# OpenAI's own ceiling on a schema's strings is 120k characters; 64 KiB covers hand-written and
# pydantic-generated schemas with room to spare, and keeps a request's compile time in milliseconds.
MAX_GRAMMAR_CHARS = 64 * 1024
MAX_CHOICES = 1024
# Nesting of schema objects; deeper ones are rejected before they can exhaust Python's recursion limit.
MAX_SCHEMA_DEPTH = 64
# Whitespace allowed between JSON tokens, at most this many characters at one place. Unbounded
# whitespace lets a model stall in a run of newlines until max_tokens (a known failure of JSON mode);
# 64 still fits pretty-printed indentation 15 levels deep.
JSON_WHITESPACE_RUN = 64


def check_size(kind: str, chars: int, limit: int | None = None) -> None:
    """Refuse grammar source longer than MAX_GRAMMAR_CHARS (or ``limit``) before any work is spent on it."""
    limit = MAX_GRAMMAR_CHARS if limit is None else limit
    if chars > limit:
        raise GrammarError(f"{kind} is too large: {chars} characters, the limit is {limit}")


def parser_limits() -> llguidance.LLParserLimits:
    """llguidance's resource limits (its defaults bound lexer/parser work per step), with error messages
    that leave out the grammar and parser state: they go back to the client and into logs."""
    return llguidance.LLParserLimits(verbose_errors=False)
