"""Collecting engine events into choices, and the pieces every response shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import msgspec
from litestar import Response

from mistralrs.engine.core.sequence import SeqEvent, TokenLogprob

from mistralrs.engine.server.errors import APIError

GENERATION_FAILED = "generation failed inside the engine (see the server log)"


@dataclass
class ChoiceOutput:
    index: int
    pieces: list[str] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)
    prompt_logprobs: list[TokenLogprob | None] | None = None
    tokens: int = 0
    finish_reason: str | None = None

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def add(self, event: SeqEvent) -> None:
        if event.prompt_logprobs is not None:
            self.prompt_logprobs = event.prompt_logprobs
        if event.token is not None:
            self.tokens += 1
        if event.text:
            self.pieces.append(event.text)
        if event.logprob is not None:
            self.logprobs.append(event.logprob)
        if event.finish_reason:
            self.finish_reason = event.finish_reason


async def collect(events: AsyncIterator[tuple[int, SeqEvent]], n: int) -> list[ChoiceOutput]:
    """All events of started requests, as choices ordered by index (request i, choice j -> i*n + j)."""
    choices: dict[int, ChoiceOutput] = {}
    async for i, event in events:
        index = i * n + event.index
        choice = choices.get(index)
        if choice is None:
            choice = choices[index] = ChoiceOutput(index)
        choice.add(event)
    out = [choices[k] for k in sorted(choices)]
    if any(c.finish_reason == "error" for c in out):
        raise APIError(500, GENERATION_FAILED, code="engine_error")
    return out


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def json_response(obj: Any) -> Response:
    return Response(msgspec.json.encode(obj), status_code=200, media_type="application/json")
