"""Tool calls out of generated text, one parser per output format the model was trained on.

Each parser is fed the output as it streams (``feed``) and returns what can be sent so far: content
text, and each call once it is complete (its id and name first, then its arguments). Text that could
still turn out to start a call is held back; a "call" that does not parse, or names a function the
request did not offer, goes out as content after all, never silently dropped.

Formats (``serve.tool_parser``; ``auto`` chooses from the chat template, see :func:`choose_tool_format`):

- ``hermes``: ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, one block per call (Hermes,
  Qwen 2.5/3, SmolLM3 and many fine-tunes). It is also the *generic* format that
  engine/tools/prompt.py teaches a model whose template takes no tools.
- ``llama3_json``: the output is ``{"name": ..., "parameters": {...}}`` (optionally after
  ``<|python_tag|>``; several calls separated by ``;``), Llama 3.1-3.3's JSON tool calling.
- ``mistral``: ``[TOOL_CALLS]`` then a JSON list of ``{"name", "arguments"}`` (v0.3 templates) or
  ``name[ARGS]{...}`` per call (v11+ templates).
"""

from __future__ import annotations

import json
from typing import Iterable

from mistralrs.engine.tools.calls import ContentDelta, ToolCall, ToolCallDelta, call_id, json_arguments

__all__ = ["TOOL_PARSERS", "ToolCallParser", "choose_tool_format"]

Delta = ContentDelta | ToolCallDelta


class ToolCallParser:
    """Base: content until ``start`` appears, then call text handed to :meth:`_calls_in`."""

    name = ""
    start = ""  # the text that opens the call section
    markers: tuple[str, ...] = ()  # texts that may be special tokens (they must reach the parser)
    id_style = "openai"
    # how a forced call is written (engine/tools/grammar.py builds the grammar from these)
    args_key = "arguments"
    forced_open, forced_call_prefix, forced_call_suffix, forced_separator, forced_close = "", "", "", "\n", ""

    @classmethod
    def example(cls) -> str:
        """How one call is written, for the generic system prompt (engine/tools/prompt.py)."""
        call = f'{{"name": "<function name>", "{cls.args_key}": {{<arguments as a JSON object>}}}}'
        return cls.forced_open + cls.forced_call_prefix + call + cls.forced_call_suffix + cls.forced_close

    def __init__(self, allowed: Iterable[str], *, forced: bool = False):
        self.allowed = frozenset(allowed)
        self.calls: list[ToolCall] = []
        self.content = ""
        self._buffer = ""
        self._in_calls = forced  # a forced output (grammar of calls only) has no content before its calls

    def feed(self, text: str) -> list[Delta]:
        self._buffer += text
        return self._drain(final=False)

    def finish(self) -> list[Delta]:
        return self._drain(final=True)

    # -- shared machinery -------------------------------------------------------------------------

    def _drain(self, final: bool) -> list[Delta]:
        out: list[Delta] = []
        if not self._in_calls:
            at = self._buffer.find(self.start)
            if at < 0:
                keep = 0 if final else _partial_suffix(self._buffer, self.start)
                self._emit_content(self._buffer[:len(self._buffer) - keep], out)
                self._buffer = self._buffer[len(self._buffer) - keep:]
                return out
            self._emit_content(self._buffer[:at], out)
            self._buffer = self._buffer[at:]
            self._in_calls = True
        out += self._take_calls(final)
        return out

    def _take_calls(self, final: bool) -> list[Delta]:
        """Default: the whole call section is parsed when the output ends."""
        if not final:
            return []
        text, self._buffer = self._buffer, ""
        return self._accept(text, self._calls_in(text))

    def _calls_in(self, text: str) -> list[tuple[str, object]] | None:
        raise NotImplementedError

    def _accept(self, raw: str, found: list[tuple[str, object]] | None) -> list[Delta]:
        """Calls if every one is valid, else the raw text as content."""
        calls = []
        for name, arguments in found or []:
            args = json_arguments(arguments) if isinstance(name, str) and name in self.allowed else None
            if args is None:
                calls = []
                break
            calls.append(ToolCall(name, args, call_id(self.id_style)))
        if not calls:
            out: list[Delta] = []
            self._emit_content(raw, out)
            return out
        out = []
        for call in calls:
            index = len(self.calls)
            self.calls.append(call)
            out += [ToolCallDelta(index, call.id, call.name, ""), ToolCallDelta(index, arguments=call.arguments)]
        return out

    def _emit_content(self, text: str, out: list[Delta]) -> None:
        if text:
            self.content += text
            out.append(ContentDelta(text))


class HermesParser(ToolCallParser):
    name = "hermes"
    start = "<tool_call>"
    end = "</tool_call>"
    markers = ("<tool_call>", "</tool_call>")
    forced_call_prefix, forced_call_suffix, forced_separator = "<tool_call>\n", "\n</tool_call>", "\n"

    def _take_calls(self, final: bool) -> list[Delta]:
        out: list[Delta] = []
        while True:  # the buffer starts at a <tool_call> (or between blocks)
            stripped = self._buffer.lstrip()
            if stripped and not stripped.startswith(self.start[:len(stripped)]):
                # text after the calls: content again
                self._in_calls = False
                return out + self._drain(final)
            close = self._buffer.find(self.end)
            if close < 0:
                if final and self._buffer.strip():
                    raw, self._buffer = self._buffer, ""
                    out += self._accept(raw, _hermes_call(raw[raw.find(self.start) + len(self.start):]))
                elif final:
                    self._buffer = ""
                return out
            raw, self._buffer = self._buffer[:close + len(self.end)], self._buffer[close + len(self.end):]
            body = raw[raw.find(self.start) + len(self.start):close]
            out += self._accept(raw, _hermes_call(body))


def _hermes_call(body: str) -> list[tuple[str, object]] | None:
    obj = _json(body)
    if not isinstance(obj, dict):
        return None
    return [(obj.get("name"), obj.get("arguments", obj.get("parameters")))]


class Llama3JsonParser(ToolCallParser):
    name = "llama3_json"
    start = "<|python_tag|>"
    markers = ("<|python_tag|>",)
    args_key = "parameters"
    forced_separator = "; "

    def __init__(self, allowed: Iterable[str], *, forced: bool = False):
        super().__init__(allowed, forced=forced)
        self._plain = False  # the output began as text: it is content to the end

    def _drain(self, final: bool) -> list[Delta]:
        # a call is the whole output: it starts with "{" (or the python tag), or there is none
        if not self._in_calls and not self._plain:
            head = self._buffer.lstrip()
            if head.startswith(("{", self.start)):
                self._in_calls = True
            elif not final and self.start.startswith(head):
                return []  # too little to tell yet
            else:
                self._plain = True
        if self._plain:
            out: list[Delta] = []
            text, self._buffer = self._buffer, ""
            self._emit_content(text, out)
            return out
        return self._take_calls(final)

    def _calls_in(self, text: str) -> list[tuple[str, object]] | None:
        body = text.strip()
        if body.startswith(self.start):
            body = body[len(self.start):]
        found = []
        for obj in _json_sequence(body, separators=";"):
            if not isinstance(obj, dict):
                return None
            found.append((obj.get("name"), obj.get("parameters", obj.get("arguments"))))
        return found or None


class MistralParser(ToolCallParser):
    name = "mistral"
    start = "[TOOL_CALLS]"
    markers = ("[TOOL_CALLS]", "[ARGS]")
    id_style = "mistral"
    forced_open, forced_separator, forced_close = "[", ", ", "]"

    @classmethod
    def example(cls) -> str:
        return cls.start + super().example()

    def _calls_in(self, text: str) -> list[tuple[str, object]] | None:
        found: list[tuple[str, object]] = []
        for section in text.split(self.start):
            section = section.strip()
            if not section:
                continue
            if section.startswith(("[", "{")):  # v0.3: a JSON list of calls (or one call)
                obj = _json(section)
                items = obj if isinstance(obj, list) else [obj]
                if not all(isinstance(item, dict) for item in items):
                    return None
                found += [(item.get("name"), item.get("arguments", item.get("parameters"))) for item in items]
            else:  # v11+: name[ARGS]{...}, or name{...}
                name, sep, args = section.partition("[ARGS]")
                if not sep:
                    brace = section.find("{")
                    name, args = (section[:brace], section[brace:]) if brace > 0 else (section, "")
                found.append((name.strip(), _json(args)))
        return found or None


TOOL_PARSERS: dict[str, type[ToolCallParser]] = {p.name: p for p in (HermesParser, Llama3JsonParser, MistralParser)}


def choose_tool_format(template: str | None, takes_tools: bool, override: str = "auto") -> tuple[type[ToolCallParser], bool]:
    """The parser for a chat template, and whether the tools go through the template (else the generic
    system prompt, which teaches the parser's format: hermes unless overridden). ``override`` is
    ``serve.tool_parser``."""
    if override != "auto":
        if override not in TOOL_PARSERS:
            raise ValueError(f"tool parser {override!r} is not one of auto, {', '.join(TOOL_PARSERS)}")
        return TOOL_PARSERS[override], takes_tools
    text = template or ""
    if takes_tools:
        if "[TOOL_CALLS]" in text:
            return MistralParser, True
        if "<tool_call>" in text:
            return HermesParser, True
        if "<|python_tag|>" in text or ('"parameters"' in text and "ipython" in text):
            return Llama3JsonParser, True
    # a template that takes no tools, or writes them in a format we do not know: the generic format
    return HermesParser, False


def _partial_suffix(text: str, marker: str) -> int:
    """Length of the longest end of ``text`` that begins ``marker`` (held back: it may open a call)."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


def _json(text: str) -> object:
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def _json_sequence(text: str, separators: str) -> list[object]:
    """JSON values one after another, separated by whitespace and ``separators``; [] if any is bad."""
    decoder = json.JSONDecoder()
    out, i = [], 0
    while True:
        while i < len(text) and (text[i].isspace() or text[i] in separators):
            i += 1
        if i == len(text):
            return out
        try:
            value, i = decoder.raw_decode(text, i)
        except (json.JSONDecodeError, RecursionError):
            return []
        out.append(value)
