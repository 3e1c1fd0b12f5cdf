"""OpenAI's ``tools``, ``tool_choice`` and ``parallel_tool_calls``, checked into a :class:`ToolRequest`.

Every malformed value is a :class:`ToolRequestError` naming the field: a tool call the model was never
told about, or a choice that cannot be honoured, must not turn into a plain-text answer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from mistralrs.engine.structured.errors import GrammarError
from mistralrs.engine.structured.grammar_compiler import compile_json_schema

__all__ = ["MAX_TOOLS", "Function", "ToolRequest", "ToolRequestError", "parse_tool_request"]

MAX_TOOLS = 128  # OpenAI's own limit on tools per request
_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}")  # OpenAI: letters, digits, underscores, dashes; 64 at most
_EMPTY_PARAMETERS = {"type": "object", "properties": {}}
TOOL_CHOICES = ("none", "auto", "required")


class ToolRequestError(ValueError):
    """A tools field that cannot be honoured; ``param`` names it (the server's 400)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class Function:
    name: str
    description: str | None
    parameters: dict

    def as_tool(self) -> dict:
        """OpenAI's tool shape, which is also what HF chat templates iterate over as ``tools``."""
        fn: dict[str, Any] = {"name": self.name}
        if self.description is not None:
            fn["description"] = self.description
        fn["parameters"] = self.parameters
        return {"type": "function", "function": fn}


@dataclass(frozen=True)
class ToolRequest:
    functions: tuple[Function, ...]
    choice: str  # "none" | "auto" | "required" | "function" (then `forced` names it)
    forced: str | None = None
    parallel: bool = True

    @property
    def calls_required(self) -> bool:
        return self.choice in ("required", "function")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.functions)

    def allowed(self) -> tuple[Function, ...]:
        """The functions the output may call: all, or the one ``tool_choice`` names."""
        return tuple(f for f in self.functions if self.forced in (None, f.name))


def parse_tool_request(tools: Any, tool_choice: Any = None, parallel_tool_calls: Any = None) -> ToolRequest | None:
    """The checked request, or None when the output involves no tools: none given, or ``tool_choice``
    "none" (the tools are then left out of the prompt, and the output is plain content). ``tool_choice``
    defaults to "auto" when tools are given, as OpenAI's does."""
    functions = _functions(tools)
    if parallel_tool_calls is not None and not isinstance(parallel_tool_calls, bool):
        raise ToolRequestError("parallel_tool_calls must be a boolean", "parallel_tool_calls")
    choice, forced = _choice(tool_choice, functions)
    if not functions or choice == "none":
        return None
    return ToolRequest(functions, choice, forced, parallel=parallel_tool_calls is not False)


def _functions(tools: Any) -> tuple[Function, ...]:
    if tools is None:
        return ()
    if not isinstance(tools, list):
        raise ToolRequestError(f"tools must be a list, got {type(tools).__name__}", "tools")
    if len(tools) > MAX_TOOLS:
        raise ToolRequestError(f"at most {MAX_TOOLS} tools are allowed, got {len(tools)}", "tools")
    out: list[Function] = []
    for i, tool in enumerate(tools):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            kind = tool.get("type") if isinstance(tool, dict) else type(tool).__name__
            raise ToolRequestError(f"{where}.type must be 'function' (the only tool type served), got {kind!r}",
                                   "tools")
        fn = tool.get("function")
        if not isinstance(fn, dict):
            raise ToolRequestError(f"{where}.function must be an object with a name", "tools")
        name = fn.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ToolRequestError(f"{where}.function.name must be 1-64 letters, digits, '_', '-' or '.', "
                                   f"got {name!r}", "tools")
        if any(f.name == name for f in out):
            raise ToolRequestError(f"{where}: two tools are named {name!r}", "tools")
        description = fn.get("description")
        if description is not None and not isinstance(description, str):
            raise ToolRequestError(f"{where}.function.description must be a string", "tools")
        parameters = fn.get("parameters", _EMPTY_PARAMETERS)
        if not isinstance(parameters, dict):
            raise ToolRequestError(f"{where}.function.parameters must be a JSON schema object", "tools")
        # arguments are a JSON object (OpenAI's rule): a schema that says nothing of the type means one
        if "type" not in parameters:
            parameters = {**parameters, "type": "object"}
        elif parameters["type"] != "object":
            raise ToolRequestError(f"{where}.function.parameters must describe an object (\"type\": \"object\"), "
                                   f"got type {parameters['type']!r}", "tools")
        strict = fn.get("strict")
        if strict is not None and not isinstance(strict, bool):
            raise ToolRequestError(f"{where}.function.strict must be a boolean", "tools")
        try:  # the schema is checked even when no grammar will use it: a bad one is the caller's bug
            compile_json_schema(parameters)
        except GrammarError as exc:
            raise ToolRequestError(f"{where}.function.parameters: {exc}", "tools") from None
        out.append(Function(name, description, parameters))
    return tuple(out)


def _choice(tool_choice: Any, functions: tuple[Function, ...]) -> tuple[str, str | None]:
    if tool_choice is None:
        return ("auto" if functions else "none"), None
    if isinstance(tool_choice, str):
        if tool_choice not in TOOL_CHOICES:
            raise ToolRequestError(f"tool_choice must be one of {', '.join(TOOL_CHOICES)} or "
                                   f"{{'type': 'function', 'function': {{'name': ...}}}}, got {tool_choice!r}",
                                   "tool_choice")
        if tool_choice != "none" and not functions:
            raise ToolRequestError(f"tool_choice={tool_choice!r} needs tools", "tool_choice")
        return tool_choice, None
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        fn = tool_choice.get("function")
        name = fn.get("name") if isinstance(fn, dict) else None
        if not isinstance(name, str):
            raise ToolRequestError("tool_choice.function.name must be a string", "tool_choice")
        if name not in {f.name for f in functions}:
            raise ToolRequestError(f"tool_choice names {name!r}, which is not among the tools", "tool_choice")
        return "function", name
    raise ToolRequestError("tool_choice must be 'none', 'auto', 'required' or "
                           "{'type': 'function', 'function': {'name': ...}}", "tool_choice")
