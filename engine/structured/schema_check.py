"""Refuse JSON-schema keywords that constrained decoding would otherwise ignore without a word.

llguidance knows the JSON Schema vocabulary: it compiles what it implements and fails on the rest
("Unimplemented keys: [...]"), but any key outside that vocabulary (a typo, OpenAPI's ``nullable``, its
own ``x-guidance`` options) it skips, and the output would then not say what the client asked for.
This walk rejects those keys, naming each with its place in the schema.
"""

from __future__ import annotations

from collections.abc import Mapping

from mistralrs.engine.structured.errors import GrammarError
from mistralrs.engine.structured.limits import MAX_SCHEMA_DEPTH

__all__ = ["check_schema_keywords"]

# Keywords whose value is one schema / a list of schemas / a name -> schema map.
_ONE_SCHEMA = frozenset({
    "additionalProperties", "additionalItems", "contains", "propertyNames", "if", "then", "else", "not",
    "unevaluatedItems", "unevaluatedProperties",
})
_SCHEMA_LIST = frozenset({"anyOf", "oneOf", "allOf", "prefixItems"})
_SCHEMA_MAP = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})

# The rest of the JSON Schema vocabulary (drafts 4 to 2020-12): values that are not schemas.
# llguidance implements some and reports the others as unimplemented, so listing them all here is safe.
_VALUE_KEYWORDS = frozenset({
    "type", "enum", "const", "required", "minLength", "maxLength", "pattern", "format", "minimum", "maximum",
    "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems", "uniqueItems",
    "minProperties", "maxProperties", "minContains", "maxContains", "dependentRequired", "dependencies",
    "$ref", "$dynamicRef", "$recursiveRef", "$anchor", "$dynamicAnchor", "$recursiveAnchor",
    "$schema", "$id", "id", "$vocabulary", "$comment", "title", "description", "default", "examples",
    "readOnly", "writeOnly", "deprecated", "contentMediaType", "contentEncoding", "contentSchema",
    # OpenAPI's annotation for tagged unions; pydantic emits it beside the oneOf that does the constraining.
    "discriminator",
})

_HINTS = {
    "nullable": "OpenAPI's nullable is not JSON Schema: use \"type\": [..., \"null\"] or anyOf with {\"type\": \"null\"}",
    "x-guidance": "compile options are chosen by the server, not the request",
}


def check_schema_keywords(schema: object) -> None:
    """Raise GrammarError for the first key that is not a JSON Schema keyword, or for nesting deeper
    than MAX_SCHEMA_DEPTH. Boolean schemas are fine; anything else that is not an object is not a schema."""
    _check(schema, "#", 0)


def _check(schema: object, where: str, depth: int) -> None:
    if isinstance(schema, bool):
        return
    if not isinstance(schema, Mapping):
        raise GrammarError(f"JSON schema at {where} must be an object or a boolean, got {type(schema).__name__}")
    if depth > MAX_SCHEMA_DEPTH:
        raise GrammarError(f"JSON schema nests deeper than {MAX_SCHEMA_DEPTH} levels (at {where})")
    for key, value in schema.items():
        at = f"{where}/{key}"
        if key in _ONE_SCHEMA:
            _check(value, at, depth + 1)
        elif key == "items":  # a schema, or (drafts 4-2019) a list of them for tuples
            for i, item in enumerate(value) if isinstance(value, list) else [(None, value)]:
                _check(item, at if i is None else f"{at}/{i}", depth + 1)
        elif key in _SCHEMA_LIST:
            if not isinstance(value, list):
                raise GrammarError(f"JSON schema keyword {key!r} at {where} must be a list of schemas")
            for i, item in enumerate(value):
                _check(item, f"{at}/{i}", depth + 1)
        elif key in _SCHEMA_MAP:
            if not isinstance(value, Mapping):
                raise GrammarError(f"JSON schema keyword {key!r} at {where} must map names to schemas")
            for name, item in value.items():
                _check(item, f"{at}/{name}", depth + 1)
        elif key not in _VALUE_KEYWORDS:
            hint = _HINTS.get(key)
            raise GrammarError(
                f"unsupported JSON schema keyword {key!r} at {where}" + (f": {hint}" if hint else "")
            )
