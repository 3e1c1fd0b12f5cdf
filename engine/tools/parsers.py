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

    def __init__(self, allowed: Iterable[str], *, forced: bool = False, parallel: bool = True):
        self.allowed = frozenset(allowed)
        self.parallel = parallel  # False: one call at most (parallel_tool_calls); later ones stay content
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
        """Default: the whole call section is parsed when the output ends; text after the calls is
        content."""
        if not final:
            return []
        text, self._buffer = self._buffer, ""
        found, rest = self._calls_in(text)
        if found is None:
            return self._accept(text, None)
        out = self._accept(text[:len(text) - len(rest)], found)
        self._emit_content(rest, out)
        return out

    def _calls_in(self, text: str) -> tuple[list[tuple[str, object]] | None, str]:
        """The calls at the start of the call section, and the text after them (None: no calls)."""
        raise NotImplementedError

    def _accept(self, raw: str, found: list[tuple[str, object]] | None) -> list[Delta]:
        """Calls if every one is valid (and, without parallel calls, only one in all), else the raw
        text as content."""
        calls = []
        if not self.parallel and (self.calls or len(found or []) > 1):
            found = None
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
            buf = self._buffer
            stripped = buf.lstrip()
            if not stripped:
                if final:
                    self._buffer = ""
                return out
            if not stripped.startswith(self.start):
                if not final and self.start.startswith(stripped):
                    return out  # the next marker is still arriving
                self._in_calls = False  # text after the calls: content again
                return out + self._drain(final)
            step = self._one_call(buf, len(buf) - len(stripped) + len(self.start), final)
            if step is None:
                return out  # the call is still arriving
            length, found = step
            raw, self._buffer = buf[:length], buf[length:]
            out += self._accept(raw, found)

    def _one_call(self, buf: str, at: int, final: bool) -> tuple[int, list | None] | None:
        """(length of the call's text, its [(name, arguments)] or None if malformed), or None while it
        is incomplete. The object is read as JSON first, so a closing tag inside a string argument
        does not end it."""
        j = len(buf) - len(buf[at:].lstrip())
        try:
            obj, end = _DECODER.raw_decode(buf, j)
        except (json.JSONDecodeError, RecursionError):
            obj, end = None, j
        if isinstance(obj, dict):
            k = len(buf) - len(buf[end:].lstrip())
            if buf.startswith(self.end, k):
                return k + len(self.end), _hermes_fields(obj)
            if self.end.startswith(buf[k:]):  # the closing tag is on its way, or the output ended
                return (len(buf), _hermes_fields(obj)) if final else None
        elif obj is None and not final:
            return None  # the object is still arriving (a broken one is content when the output ends)
        close = buf.find(self.end, at)  # malformed: through its closing tag, as content
        if close < 0:
            return (len(buf), None) if final else None
        return close + len(self.end), None


def _hermes_fields(obj: dict) -> list[tuple[object, object]]:
    return [(obj.get("name"), obj.get("arguments", obj.get("parameters")))]


class Llama3JsonParser(ToolCallParser):
    name = "llama3_json"
    start = "<|python_tag|>"
    markers = ("<|python_tag|>",)
    args_key = "parameters"
    forced_separator = "; "

    def __init__(self, allowed: Iterable[str], *, forced: bool = False, parallel: bool = True):
        super().__init__(allowed, forced=forced, parallel=parallel)
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

    def _calls_in(self, text: str) -> tuple[list[tuple[str, object]] | None, str]:
        at = len(text) - len(text.lstrip())
        if text.startswith(self.start, at):
            at += len(self.start)
        values, rest = _json_sequence(text, at, separators=";")
        if not values or not all(isinstance(v, dict) for v in values):
            return None, text
        return [(v.get("name"), v.get("parameters", v.get("arguments"))) for v in values], rest


class MistralParser(ToolCallParser):
    name = "mistral"
    start = "[TOOL_CALLS]"
    markers = ("[TOOL_CALLS]", "[ARGS]")
    id_style = "mistral"
    forced_open, forced_separator, forced_close = "[", ", ", "]"

    @classmethod
    def example(cls) -> str:
        return cls.start + super().example()

    def _calls_in(self, text: str) -> tuple[list[tuple[str, object]] | None, str]:
        found: list[tuple[str, object]] = []
        sections = text.split(self.start)
        rest = ""
        for i, section in enumerate(sections):
            if not section.strip():
                continue
            if rest.strip():  # text between calls: only the last section may end in text
                return None, text
            if section.lstrip().startswith(("[", "{")):  # v0.3: a JSON list of calls (or one call)
                values, rest = _json_sequence(section, 0, separators="", limit=1)
                items = values[0] if values and isinstance(values[0], list) else values
                if not items or not all(isinstance(item, dict) for item in items):
                    return None, text
                found += [(item.get("name"), item.get("arguments", item.get("parameters"))) for item in items]
            else:  # v11+: name[ARGS]{...}, or name{...}
                name, sep, args = section.partition("[ARGS]")
                if not sep:
                    brace = section.find("{")
                    name, args = (section[:brace], section[brace:]) if brace > 0 else (section, "")
                values, rest = _json_sequence(args, 0, separators="", limit=1)
                if not values:
                    return None, text
                found.append((name.strip(), values[0]))
        return (found or None), rest


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


_DECODER = json.JSONDecoder()


def _json_sequence(text: str, at: int, separators: str, limit: int | None = None) -> tuple[list[object], str]:
    """JSON values one after another from ``at``, separated by whitespace and ``separators`` (at most
    ``limit``), and the text after the last one read (from the first thing that is not one)."""
    out, i = [], at
    while limit is None or len(out) < limit:
        j = i
        while j < len(text) and (text[j].isspace() or text[j] in separators):
            j += 1
        if j == len(text):
            return out, text[i:]
        try:
            value, j = _DECODER.raw_decode(text, j)
        except (json.JSONDecodeError, RecursionError):
            break
        out.append(value)
        i = j
    return out, text[i:]
