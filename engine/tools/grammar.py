"""The grammar behind ``tool_choice: "required"`` and a named function: the output is nothing but calls,
written as the chosen parser reads them, each naming an allowed function with arguments valid under
its JSON schema. ``"auto"`` has no grammar: the model chooses between text and a call."""

from __future__ import annotations

import json

from mistralrs.engine.structured.grammar_compiler import JSON_OPTIONS, CompiledGrammar, compile_lark
from mistralrs.engine.structured.limits import MAX_GRAMMAR_CHARS
from mistralrs.engine.tools.parsers import ToolCallParser
from mistralrs.engine.tools.request import ToolRequest

__all__ = ["forced_call_grammar"]

# All of a request's tool schemas go into one grammar: allow more than one user-written schema may be.
MAX_TOOL_GRAMMAR_CHARS = 8 * MAX_GRAMMAR_CHARS


def forced_call_grammar(request: ToolRequest, parser: type[ToolCallParser]) -> CompiledGrammar | None:
    """None unless the request requires a call; raises GrammarError if the grammar cannot be built.

    Each function gets its own rule: the call's outer JSON as literal text and the arguments as a
    ``%json`` rule of their own, so the function's schema stays a root (its ``#/$defs/...`` and ``#``
    references keep their meaning)."""
    if not request.calls_required:
        return None
    rules, names = [], []
    for k, f in enumerate(request.allowed()):
        head = "{" + f'"name": {json.dumps(f.name, ensure_ascii=False)}, "{parser.args_key}": '
        schema = {**f.parameters, "x-guidance": JSON_OPTIONS}
        rules.append(f'c{k}: {_lit(parser.forced_call_prefix)} {_lit(head)} a{k} "}}" {_lit(parser.forced_call_suffix)}')
        rules.append(f"a{k}: %json " + json.dumps(schema, ensure_ascii=False, separators=(",", ":")))
        names.append(f"c{k}")
    # one call for a named function or when parallel calls are off; else one or more
    repeat = "" if request.forced or not request.parallel else f" ({_lit(parser.forced_separator)} call)*"
    lark = "\n".join([
        f"start: {_lit(parser.forced_open)} call{repeat} {_lit(parser.forced_close)}",
        "call: " + " | ".join(names),
        *rules,
    ])
    compiled = compile_lark(lark, server_built=True, max_chars=MAX_TOOL_GRAMMAR_CHARS)
    return CompiledGrammar("tool_choice", compiled.grammar, compiled.warnings)


def _lit(text: str) -> str:
    return json.dumps(text) if text else ""
