"""How tools and past calls reach the prompt.

A chat template that takes ``tools`` (Qwen, Llama 3.1+, Mistral, Hermes...) gets them as transformers
passes them: ``tools`` is the list of OpenAI tool objects, and assistant messages keep ``tool_calls``
with ``function.arguments`` as an object (templates ``tojson`` it; a JSON string would come out twice
encoded). ``role: "tool"`` messages go to the template unchanged.

A template that takes no tools (SmolLM2's, Gemma 3's) gets the *generic format* instead, documented in
docs/TOOLS.md: a system message listing the functions and how to call one (the chosen parser's
format, hermes by default), past calls written into the assistant's content in that format, and tool
results as user turns in ``<tool_response>`` blocks, since such templates know only user and
assistant turns (Gemma 3's raises on any other role).
"""

from __future__ import annotations

import functools
import json
from typing import Any

import jinja2
import jinja2.meta

from mistralrs.engine.tokenizer.chat_template import ChatTemplateError, message_text
from mistralrs.engine.tools.parsers import ToolCallParser
from mistralrs.engine.tools.request import ToolRequest, ToolRequestError

__all__ = ["GENERIC_INSTRUCTIONS", "prepare_messages", "template_takes_tools"]

GENERIC_INSTRUCTIONS = (
    "You can call the functions below. Each is described by a JSON object with its name, what it does "
    "and the JSON schema of its arguments.\n\n{functions}\n\n"
    "To call a function, reply with the call and nothing else, written exactly like this:\n{example}\n"
    "{parallel}Otherwise, answer the user directly. The results of calls come back to you in "
    "<tool_response></tool_response> blocks."
)


@functools.lru_cache(maxsize=32)
def template_takes_tools(template: str) -> bool:
    """Whether the template reads a ``tools`` variable (then tools are rendered by it, as transformers does)."""
    try:
        return "tools" in jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except jinja2.TemplateError:
        return False  # a broken template fails, with its own error, when it is rendered


def prepare_messages(messages: list[dict], request: ToolRequest | None, parser: type[ToolCallParser],
                     via_template: bool) -> tuple[list[dict], dict[str, Any]]:
    """The messages to render and the template's extra variables (``tools``), for either path."""
    if via_template:
        extra = {"tools": [f.as_tool() for f in request.functions]} if request else {}
        return [_with_object_arguments(m, i) for i, m in enumerate(messages)], extra
    out: list[dict] = []
    after_result = False
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(message, dict):
            out.append(message)  # validate_messages names it when the template renders
        elif role == "tool":
            _append_tool_result(out, message, i, merge=after_result)
        elif role == "assistant" and message.get("tool_calls"):
            out.append(_calls_as_content(message, i, parser))
        elif role == "user" and after_result:  # results and the user's next words: one user turn
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + _text(message, i)}
        else:
            out.append(message)
        after_result = role == "tool" or (after_result and role == "user")
    if request:
        out = _with_system_text(out, _generic_instructions(request, parser))
    return out, {}


def _generic_instructions(request: ToolRequest, parser: type[ToolCallParser]) -> str:
    functions = "\n".join(json.dumps(f.as_tool()["function"], ensure_ascii=False) for f in request.functions)
    parallel = "To call several functions at once, write one call after the other.\n" if request.parallel else ""
    return GENERIC_INSTRUCTIONS.format(functions=functions, example=parser.example(), parallel=parallel)


def _with_system_text(messages: list[dict], text: str) -> list[dict]:
    if messages and isinstance(messages[0], dict) and messages[0].get("role") == "system":
        first = dict(messages[0])
        content = first.get("content")
        if isinstance(content, list):  # text parts: add ours as one more part
            first["content"] = [*content, {"type": "text", "text": text}]
        else:
            first["content"] = f"{content}\n\n{text}" if content else text
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]


def _text(message: dict, index: int) -> str:
    """A message's content as text (text parts joined), or a 400 naming it."""
    if "content" not in message:
        raise ToolRequestError(f"messages[{index}].content is missing", "messages")
    content = message["content"]
    if content is None:
        return ""
    try:
        return message_text(content, f"messages[{index}]")
    except ChatTemplateError as exc:
        raise ToolRequestError(str(exc), "messages") from None


def _append_tool_result(out: list[dict], message: dict, index: int, merge: bool) -> None:
    block = f"<tool_response>\n{_text(message, index)}\n</tool_response>"
    if merge:  # consecutive results make one user turn (templates insist on alternating turns)
        out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + block}
    else:
        out.append({"role": "user", "content": block})


def _calls_as_content(message: dict, index: int, parser: type[ToolCallParser]) -> dict:
    calls = []
    for call in _checked_calls(message, index):
        fn = call["function"]
        calls.append(parser.forced_call_prefix + json.dumps(
            {"name": fn["name"], parser.args_key: fn["arguments"]}, ensure_ascii=False) + parser.forced_call_suffix)
    written = parser.forced_open + parser.forced_separator.join(calls) + parser.forced_close
    if parser.forced_open == "[":  # mistral's list follows its marker
        written = parser.start + written
    text = _text(message, index) if "content" in message else ""
    clean = {k: v for k, v in message.items() if k != "tool_calls"}
    clean["content"] = f"{text}\n{written}" if text else written
    return clean


def _with_object_arguments(message: Any, index: int) -> Any:
    if not isinstance(message, dict) or not message.get("tool_calls"):
        return message
    clean = dict(message)
    clean["tool_calls"] = _checked_calls(message, index)
    clean.setdefault("content", None)
    return clean


def _checked_calls(message: dict, index: int) -> list[dict]:
    """``tool_calls`` of an assistant message with each ``function.arguments`` parsed to an object."""
    calls = message["tool_calls"]
    where = f"messages[{index}].tool_calls"
    if not isinstance(calls, list):
        raise ToolRequestError(f"{where} must be a list", "messages")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise ToolRequestError(f"{where}[{j}] must be {{'id': ..., 'type': 'function', 'function': "
                                   f"{{'name': ..., 'arguments': ...}}}}", "messages")
        arguments = fn.get("arguments", {})
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except (json.JSONDecodeError, RecursionError):
                raise ToolRequestError(f"{where}[{j}].function.arguments is not valid JSON", "messages") from None
        call_copy = dict(call)
        call_copy["function"] = {**fn, "arguments": arguments}
        out.append(call_copy)
    return out
