"""From a request's structured-output fields to one compiled grammar.

Two shapes are accepted, in the HTTP API and the Python API alike:

- OpenAI's ``response_format``: ``{"type": "text"}`` (free text), ``{"type": "json_object"}`` (any
  JSON object), ``{"type": "json_schema", "json_schema": {"name": ..., "schema": {...}, "strict": ...}}``.
- vLLM's ``structured_outputs``: exactly one of ``{"json": schema}``, ``{"regex": "..."}``,
  ``{"choice": [...]}``, ``{"grammar": "<lark>"}``, ``{"json_object": true}``.

Anything else is a :class:`RequestFormatError` naming the field, never a silent fallback to free text.
"""

from __future__ import annotations

import json
from typing import Any

from mistralrs.engine.structured.errors import GrammarError
from mistralrs.engine.structured.grammar_compiler import (CompiledGrammar, compile_grammar, compile_json_object,
                                                          compile_json_schema)

RESPONSE_FORMAT_TYPES = ("text", "json_object", "json_schema")
STRUCTURED_OUTPUT_KINDS = ("json", "regex", "choice", "grammar", "json_object")
_COMPILER_KINDS = {"json": "json_schema", "grammar": "lark"}  # vLLM's names -> grammar_compiler's


class RequestFormatError(GrammarError):
    """A structured-output field that cannot be honoured; ``param`` names it (the server's 400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def grammar_for_request(response_format: Any = None, structured_outputs: Any = None) -> CompiledGrammar | None:
    """The grammar a request asks for, or None for free text."""
    from_format = _from_response_format(response_format) if response_format is not None else None
    from_extras = _from_structured_outputs(structured_outputs) if structured_outputs is not None else None
    if from_format is not None and from_extras is not None:
        raise RequestFormatError("give response_format or structured_outputs, not both", "structured_outputs")
    return from_format or from_extras


def _from_response_format(fmt: Any) -> CompiledGrammar | None:
    if not isinstance(fmt, dict) or fmt.get("type") not in RESPONSE_FORMAT_TYPES:
        kind = fmt.get("type") if isinstance(fmt, dict) else type(fmt).__name__
        raise RequestFormatError(f"response_format type {kind!r} is not one of {', '.join(RESPONSE_FORMAT_TYPES)}",
                                 "response_format")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return _compiled(compile_json_object, "response_format")
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
        raise RequestFormatError("response_format json_schema needs {'json_schema': {'name': ..., 'schema': {...}}}",
                                 "response_format")
    strict = spec.get("strict")
    if strict is not None and not isinstance(strict, bool):
        raise RequestFormatError("response_format json_schema.strict must be a boolean", "response_format")
    # OpenAI allows the schema to be left out ("any JSON"); the grammar is then any JSON object
    if "schema" not in spec:
        return _compiled(compile_json_object, "response_format")
    return _compiled(lambda: compile_json_schema(spec["schema"], strict=strict), "response_format")


def _from_structured_outputs(extras: Any) -> CompiledGrammar | None:
    field = "structured_outputs"
    if not isinstance(extras, dict):
        raise RequestFormatError(f"{field} must be an object with one of {', '.join(STRUCTURED_OUTPUT_KINDS)}", field)
    given = [k for k in STRUCTURED_OUTPUT_KINDS if extras.get(k) not in (None, False)]
    unknown = sorted(set(extras) - set(STRUCTURED_OUTPUT_KINDS))
    if unknown:
        raise RequestFormatError(f"{field}.{unknown[0]} is not supported (use one of "
                                 f"{', '.join(STRUCTURED_OUTPUT_KINDS)})", field)
    if len(given) != 1:
        raise RequestFormatError(f"{field} needs exactly one of {', '.join(STRUCTURED_OUTPUT_KINDS)}, got "
                                 f"{', '.join(given) or 'none'}", field)
    kind, value = given[0], extras[given[0]]
    if kind == "json":
        if isinstance(value, str):  # vLLM accepts the schema as a JSON string too
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise RequestFormatError(f"{field}.json is not valid JSON: {exc}", field) from None
        if not isinstance(value, dict):
            raise RequestFormatError(f"{field}.json must be a JSON schema object", field)
    # the compiler checks each kind's value (a list of strings, a string) and names what is wrong
    return _compiled(lambda: compile_grammar(_COMPILER_KINDS.get(kind, kind), value), field)


def _compiled(compile_fn, field: str) -> CompiledGrammar:
    try:
        return compile_fn()
    except RequestFormatError:
        raise
    except GrammarError as exc:  # the compiler names the keyword; the field says where it came from
        raise RequestFormatError(f"{field}: {exc}", field) from None
