"""``POST /v1/chat/completions``: the model's chat template, streamed (SSE) or not."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import AsyncIterator

from litestar import Request, Response, post

from mistralrs.engine.core.sequence import SeqEvent
from mistralrs.engine.tools.calls import ContentDelta, ToolCallDelta
from mistralrs.engine.tools.parsers import ToolCallParser
from mistralrs.engine.tools.plan import ToolPlan, marker_token_texts

from mistralrs.engine.server.auth import require_api_key
from mistralrs.engine.server.errors import APIError, engine_errors, error_json, invalid
from mistralrs.engine.server.logprobs import LogprobFormatter
from mistralrs.engine.server.output import GENERATION_FAILED, collect, json_response, usage
from mistralrs.engine.server.params import base_params, for_prompt, probe_request_grammar
from mistralrs.engine.server.schemas import ChatCompletionRequest, refuse_unsupported, request_json
from mistralrs.engine.server.state import ServerState, new_id, server_of
from mistralrs.engine.server.streaming import SSE_DONE, merge, sse, sse_response, start_all, until_disconnect


@post("/v1/chat/completions", guards=[require_api_key], status_code=200)
async def chat_completions(request: Request) -> Response:
    server = server_of(request)
    cfg = server.cfg
    req = await request_json(request, ChatCompletionRequest)
    server.check_model(req.model)
    refuse_unsupported(req, implemented=("tools", "tool_choice"))
    if not req.messages:
        raise invalid("messages must be a non-empty list", "messages")
    if len(req.messages) > cfg.max_messages:
        raise invalid(f"at most {cfg.max_messages} messages are allowed, got {len(req.messages)}", "messages")
    if req.top_logprobs is not None and not req.logprobs:
        raise invalid("top_logprobs requires logprobs to be true", "top_logprobs")
    logprobs = (req.top_logprobs or 0) if req.logprobs else None
    if req.max_completion_tokens is not None:
        max_tokens, max_param = req.max_completion_tokens, "max_completion_tokens"
    else:
        max_tokens, max_param = req.max_tokens, "max_tokens"

    with engine_errors("messages", {"logprobs": "top_logprobs", "max_tokens": max_param}, cfg.retry_after_seconds):
        base = base_params(req, cfg, server.sampling_defaults, max_waiting=server.max_waiting, logprobs=logprobs)
        tools = server.llm.tool_plan(req.tools, req.tool_choice, req.parallel_tool_calls)
        if tools.grammar is not None:
            if base.grammar is not None:
                raise invalid("response_format/structured_outputs cannot be combined with tool_choice "
                              f"{req.tool_choice!r}: the output must be a tool call", "tool_choice")
            base = dataclasses.replace(base, grammar=tools.grammar)
        await probe_request_grammar(base, req, server.tokenizer)
        base.validate(server.vocab_size)
        prompt_ids = await asyncio.to_thread(server.llm.chat_prompt_ids, req.messages, tools)
        params = for_prompt(base, len(prompt_ids), max_tokens, max_seq_len=server.max_seq_len,
                            default_max_tokens=server.sampling_defaults.max_tokens, max_tokens_param=max_param)
        gens = [server.engine.generate(prompt_ids, params)]
        firsts = await until_disconnect(request, start_all(gens))

    reply = ChatReply(server, logprobs is not None, len(prompt_ids), bool(req.return_tokens_as_token_ids), tools)
    events = merge(gens, firsts)
    if reply.markers:  # only a tool parser needs special tokens' text: no extra layer per token otherwise
        events = with_marker_text(events, reply.markers)
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse_response(reply.stream(events, include_usage))
    choices = await until_disconnect(request, collect(events, params.n))
    return json_response({
        "id": reply.id, "object": "chat.completion", "created": reply.created, "model": server.model_name,
        "choices": [{"index": c.index, **reply.message(c.text, c.finish_reason),
                     "logprobs": reply.fmt.chat(c.logprobs) if reply.want_logprobs else None} for c in choices],
        "usage": usage(len(prompt_ids), sum(c.tokens for c in choices)),
    })


async def with_marker_text(events: AsyncIterator[tuple[int, SeqEvent]], markers: dict[int, str]):
    """Events with the text of the special tokens a tool parser needs (generated text leaves special
    tokens out: ``[TOOL_CALLS]``, ``<|python_tag|>``)."""
    try:
        async for i, ev in events:
            if ev.token in markers:
                ev = dataclasses.replace(ev, text=markers[ev.token] + (ev.text or ""))
            yield i, ev
    finally:
        await events.aclose()  # type: ignore[attr-defined]


class ChatReply:
    def __init__(self, server: ServerState, want_logprobs: bool, prompt_tokens: int, as_ids: bool = False,
                 tools: ToolPlan | None = None):
        self.id = new_id("chatcmpl")
        self.tools = tools
        self.markers = marker_token_texts(server.tokenizer, tools.parser) if tools and tools.request else {}
        self.created = int(time.time())
        self.model = server.model_name
        self.fmt = LogprobFormatter(server.tokenizer, as_ids)
        self.want_logprobs = want_logprobs
        self.prompt_tokens = prompt_tokens

    def message(self, text: str, finish_reason: str | None) -> dict:
        """A whole choice's ``message`` and ``finish_reason``, with its tool calls parsed out."""
        parser = self.tools.new_parser() if self.tools else None
        if parser is None:
            return {"message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        parser.feed(text)
        parser.finish()
        if not parser.calls:
            return {"message": {"role": "assistant", "content": parser.content}, "finish_reason": finish_reason}
        return {"message": {"role": "assistant", "content": parser.content if parser.content.strip() else None,
                            "tool_calls": [call.as_openai() for call in parser.calls]},
                "finish_reason": _with_calls(finish_reason)}

    def chunk(self, choices: list[dict], include_usage: bool) -> dict:
        out = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
               "choices": choices}
        if include_usage:
            out["usage"] = None
        return out

    async def stream(self, events: AsyncIterator[tuple[int, SeqEvent]], include_usage: bool) -> AsyncIterator[bytes]:
        started: set[int] = set()
        parsers: dict[int, ToolCallParser | None] = {}
        completion_tokens = 0
        try:
            async for _, ev in events:
                i = ev.index
                if i not in started:
                    started.add(i)
                    parsers[i] = self.tools.new_parser() if self.tools else None
                    yield sse(self.chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                           "logprobs": None, "finish_reason": None}], include_usage))
                if ev.finish_reason == "error":
                    yield sse(error_json(APIError(500, GENERATION_FAILED, code="engine_error")))
                    break
                if ev.token is not None:
                    completion_tokens += 1
                lp = self.fmt.chat([ev.logprob]) if self.want_logprobs and ev.logprob is not None else None
                parser = parsers[i]
                if parser is None:
                    deltas = [{"content": ev.text}] if ev.text or lp is not None else []
                else:
                    found = parser.feed(ev.text) if ev.text else []
                    if ev.finish_reason:
                        found += parser.finish()
                    deltas = [_delta(d) for d in found] or ([{}] if lp is not None else [])
                for k, delta in enumerate(deltas):
                    yield sse(self.chunk([{"index": i, "delta": delta, "logprobs": lp if k == 0 else None,
                                           "finish_reason": None}], include_usage))
                if ev.finish_reason:
                    reason = _with_calls(ev.finish_reason) if parser is not None and parser.calls else ev.finish_reason
                    yield sse(self.chunk([{"index": i, "delta": {}, "logprobs": None,
                                           "finish_reason": reason}], include_usage))
            else:
                if include_usage:
                    final = self.chunk([], False)
                    final["usage"] = usage(self.prompt_tokens, completion_tokens)
                    yield sse(final)
            yield SSE_DONE
        finally:
            await events.aclose()  # type: ignore[attr-defined]


def _delta(found: ContentDelta | ToolCallDelta) -> dict:
    if isinstance(found, ContentDelta):
        return {"content": found.text}
    return {"tool_calls": [found.as_openai()]}


def _with_calls(finish_reason: str | None) -> str | None:
    """OpenAI's finish reason for a turn that called tools: "tool_calls" where it would be "stop"."""
    return "tool_calls" if finish_reason == "stop" else finish_reason
