"""What parsing a model's output yields: content text and tool calls, whole or as stream deltas."""

from __future__ import annotations

import json
import secrets
import string
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ContentDelta", "ToolCall", "ToolCallDelta", "call_id", "json_arguments"]

_ALNUM = string.ascii_letters + string.digits


def call_id(style: str = "openai") -> str:
    """A fresh tool-call id. Mistral's templates accept only 9 alphanumerics (they raise otherwise when
    the call comes back in the next turn); everyone else gets OpenAI's ``call_`` + 24 characters."""
    if style == "mistral":
        return "".join(secrets.choice(_ALNUM) for _ in range(9))
    return "call_" + "".join(secrets.choice(_ALNUM) for _ in range(24))


def json_arguments(arguments: Any) -> str | None:
    """Arguments as OpenAI sends them (a JSON text of an object), or None if they are not an object.
    A model may write them as an object or as a JSON string holding one."""
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except (json.JSONDecodeError, RecursionError):
            return None
    if not isinstance(arguments, dict):
        return None
    try:
        return json.dumps(arguments, ensure_ascii=False)
    except RecursionError:  # an object nested deeper than the encoder goes: not usable arguments
        return None


@dataclass
class ToolCall:
    name: str
    arguments: str  # JSON text of an object
    id: str = field(default_factory=call_id)

    def as_openai(self) -> dict:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


@dataclass(frozen=True)
class ContentDelta:
    text: str


@dataclass(frozen=True)
class ToolCallDelta:
    """One streamed piece of call ``index``: the first carries id and name, later ones argument text."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""

    def as_openai(self) -> dict:
        out: dict[str, Any] = {"index": self.index}
        if self.id is not None:
            out["id"] = self.id
            out["type"] = "function"
            out["function"] = {"name": self.name, "arguments": self.arguments}
        else:
            out["function"] = {"arguments": self.arguments}
        return out
