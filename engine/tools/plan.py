"""One chat request's tool handling, decided once: the checked request, the output format (parser),
whether tools go through the template, and the grammar when a call is required. The HTTP server and
the Python API both go through :func:`plan_tools`."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from mistralrs.engine.structured.errors import GrammarError
from mistralrs.engine.structured.grammar_compiler import CompiledGrammar
from mistralrs.engine.tools.grammar import forced_call_grammar
from mistralrs.engine.tools.parsers import ToolCallParser, choose_tool_format
from mistralrs.engine.tools.prompt import prepare_messages, template_takes_tools
from mistralrs.engine.tools.request import ToolRequest, ToolRequestError, parse_tool_request

__all__ = ["ToolPlan", "marker_token_texts", "plan_tools"]


@dataclass(frozen=True)
class ToolPlan:
    request: ToolRequest | None  # None: no tools offered (past calls in the messages still render)
    parser: type[ToolCallParser]
    via_template: bool
    grammar: CompiledGrammar | None  # tool_choice "required" or a named function

    def render_inputs(self, messages: list[dict]) -> tuple[list[dict], dict[str, Any]]:
        """Messages and template variables to render (engine/tools/prompt.py)."""
        return prepare_messages(messages, self.request, self.parser, self.via_template)

    def new_parser(self) -> ToolCallParser | None:
        """A parser for one choice's output, or None when the output is plain content."""
        if self.request is None:
            return None
        return self.parser(self.request.names, forced=self.grammar is not None, parallel=self.request.parallel)


def plan_tools(template: str, tools: Any = None, tool_choice: Any = None, parallel_tool_calls: Any = None,
               parser: str = "auto") -> ToolPlan:
    """Raises ToolRequestError naming the field for anything that cannot be honoured."""
    request = parse_tool_request(tools, tool_choice, parallel_tool_calls)
    parser_cls, via_template = choose_tool_format(template, template_takes_tools(template), parser)
    try:
        grammar = forced_call_grammar(request, parser_cls) if request else None
    except GrammarError as exc:
        raise ToolRequestError(f"tools: {exc}", "tools") from None
    return ToolPlan(request, parser_cls, via_template, grammar)


@functools.lru_cache(maxsize=16)
def _marker_ids(tokenizer: Any, markers: tuple[str, ...]) -> dict[int, str]:
    out = {}
    for text in markers:
        ids = tokenizer.encode(text, add_special=False, parse_special=True)
        if len(ids) == 1 and tokenizer.is_special(ids[0]):
            out[ids[0]] = text
    return out


def marker_token_texts(tokenizer: Any, parser: type[ToolCallParser]) -> dict[int, str]:
    """Special tokens that stand for the parser's markers (``[TOOL_CALLS]``, ``<|python_tag|>``), with
    their text: generated text leaves special tokens out, and the parser must still see these."""
    return _marker_ids(tokenizer, parser.markers)
