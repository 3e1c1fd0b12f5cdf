"""``POST /v1/completions``: raw text completion of a string, strings, token ids or lists of token ids.

``echo`` puts the prompt in front of the text (and, with ``logprobs``, its tokens' logprobs in front of
the generated ones; the first prompt token has none). ``echo`` with ``max_tokens: 0`` scores a prompt
without generating, as OpenAI's legacy API allows. ``suffix`` (insertion) is not supported.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from litestar import Request, Response, post

from mistralrs.engine.core.sequence import SeqEvent

from mistralrs.engine.server.auth import require_api_key
from mistralrs.engine.server.errors import APIError, engine_errors, error_json, invalid
from mistralrs.engine.server.logprobs import LogprobFormatter
from mistralrs.engine.server.output import GENERATION_FAILED, ChoiceOutput, collect, json_response, usage
from mistralrs.engine.server.params import base_params, for_prompt, probe_request_grammar
from mistralrs.engine.server.schemas import CompletionRequest, refuse_unsupported, request_json
from mistralrs.engine.server.state import ServerState, new_id, server_of
from mistralrs.engine.server.streaming import SSE_DONE, merge, sse, sse_response, start_all, until_disconnect


@dataclass
class Prompt:
    ids: list[int]
    text: str


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def parse_prompts(prompt: Any, server: ServerState, echo: bool) -> list[Prompt]:
    """One Prompt per element of the OpenAI ``prompt`` union; text prompts are tokenized with BOS as
    the model wants it and special-token text parsed (as llama.cpp's and vLLM's servers do)."""
    tok, cfg = server.tokenizer, server.cfg
    if isinstance(prompt, str):
        items: list[Any] = [prompt]
    elif _is_ids(prompt):
        items = [prompt]
    elif isinstance(prompt, list) and prompt and (all(isinstance(p, str) for p in prompt) or all(map(_is_ids, prompt))):
        items = prompt
    else:
        raise invalid("prompt must be a string, a list of strings, a list of token ids or a list of lists of "
                      "token ids (non-empty)", "prompt")
    if len(items) > cfg.max_prompts:
        raise invalid(f"at most {cfg.max_prompts} prompts are allowed in one request, got {len(items)}", "prompt")
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(Prompt(tok.encode(item, add_special=True, parse_special=True), item))
        else:
            if not all(0 <= t < server.vocab_size for t in item):
                raise invalid(f"prompt token ids must be in [0, {server.vocab_size})", "prompt")
            out.append(Prompt(list(item), tok.decode(item) if echo else ""))
    return out


@post("/v1/completions", guards=[require_api_key], status_code=200)
async def completions(request: Request) -> Response:
    server = server_of(request)
    cfg = server.cfg
    req = await request_json(request, CompletionRequest)
    server.check_model(req.model)
    refuse_unsupported(req)
    if req.suffix:
        raise invalid("suffix is not supported by this server (no fill-in-the-middle completion)", "suffix")
    n = 1 if req.n is None else req.n
    if req.best_of is not None and req.best_of != n:
        raise invalid("best_of is not supported (it must equal n when given)", "best_of")
    echo = bool(req.echo)
    scoring = echo and req.max_tokens == 0  # prompt logprobs only: generate one token and drop it
    max_tokens = 1 if scoring else req.max_tokens
    prompt_logprobs = req.logprobs if echo else None

    with engine_errors("prompt", {"prompt_logprobs": "logprobs"}, cfg.retry_after_seconds):
        base = base_params(req, cfg, server.sampling_defaults, max_waiting=server.max_waiting, logprobs=req.logprobs,
                           prompt_logprobs=prompt_logprobs)
        base.validate(server.vocab_size)
        await probe_request_grammar(base, req, server.tokenizer)
        prompts = await asyncio.to_thread(parse_prompts, req.prompt, server, echo)
        if len(prompts) * n > server.max_waiting:
            raise invalid(f"{len(prompts)} prompts x n={n} sequences exceed the server's queue capacity "
                          f"({server.max_waiting}, engine.max_waiting)", "n" if n > 1 else "prompt")
        params = [for_prompt(base, len(p.ids), max_tokens, max_seq_len=server.max_seq_len,
                             default_max_tokens=server.sampling_defaults.max_tokens, max_tokens_param="max_tokens")
                  for p in prompts]
        gens = [server.engine.generate(p.ids, sp) for p, sp in zip(prompts, params)]
        firsts = await until_disconnect(request, start_all(gens))

    reply = CompletionReply(server, prompts, n, echo, scoring, req.logprobs is not None,
                             bool(req.return_tokens_as_token_ids))
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse_response(reply.stream(merge(gens, firsts), include_usage))
    choices = await until_disconnect(request, collect(merge(gens, firsts), n))
    return json_response({
        "id": reply.id, "object": "text_completion", "created": reply.created, "model": reply.model,
        "choices": [reply.choice(c) for c in choices],
        "usage": usage(reply.prompt_tokens, 0 if scoring else sum(c.tokens for c in choices)),
    })


class CompletionReply:
    def __init__(self, server: ServerState, prompts: list[Prompt], n: int, echo: bool, scoring: bool,
                 want_logprobs: bool, as_ids: bool = False):
        self.id = new_id("cmpl")
        self.created = int(time.time())
        self.model = server.model_name
        self.fmt = LogprobFormatter(server.tokenizer, as_ids)
        self.prompts, self.n, self.echo, self.scoring, self.want_logprobs = prompts, n, echo, scoring, want_logprobs
        self.prompt_tokens = sum(len(p.ids) for p in prompts)

    def _prompt_entries(self, prompt: Prompt, prompt_logprobs: list | None) -> list:
        lps = list(prompt_logprobs or [])
        lps += [None] * (len(prompt.ids) - len(lps))
        return list(zip(prompt.ids, lps))

    def choice(self, c: ChoiceOutput) -> dict:
        prompt = self.prompts[c.index // self.n]
        text = "" if self.scoring else c.text
        logprobs, entries = None, []
        if self.want_logprobs:
            entries = self._prompt_entries(prompt, c.prompt_logprobs) if self.echo else []
            if not self.scoring:
                entries += [(lp.token, lp) for lp in c.logprobs]
        text = (prompt.text + text) if self.echo else text
        if self.want_logprobs:
            logprobs, _ = self.fmt.completion(entries, text=text)
        return {"index": c.index, "text": text, "logprobs": logprobs, "finish_reason": c.finish_reason}

    async def stream(self, events: AsyncIterator[tuple[int, SeqEvent]], include_usage: bool) -> AsyncIterator[bytes]:
        offsets: dict[int, int] = {}  # per choice: text_offset of its next token
        chars: dict[int, int] = {}  # per choice: characters of text sent so far
        completion_tokens = 0
        try:
            async for i, ev in events:
                index = i * self.n + ev.index
                if ev.finish_reason == "error":
                    yield sse(error_json(APIError(500, GENERATION_FAILED, code="engine_error")))
                    break
                text, entries = ("", []) if self.scoring else (ev.text, [])
                if self.echo and index not in offsets:
                    prompt = self.prompts[i]
                    text = prompt.text + text
                    if self.want_logprobs:
                        entries = self._prompt_entries(prompt, ev.prompt_logprobs) + entries
                offsets.setdefault(index, 0)
                start = chars.get(index, 0)
                chars[index] = start + len(text)
                if not self.scoring:
                    completion_tokens += ev.token is not None
                    if self.want_logprobs and ev.logprob is not None:
                        entries.append((ev.token, ev.logprob))
                if not (text or entries or ev.finish_reason):
                    continue
                logprobs = None
                if self.want_logprobs:
                    logprobs, offsets[index] = self.fmt.completion(entries, offsets[index], text, start)
                chunk = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                         "choices": [{"index": index, "text": text, "logprobs": logprobs,
                                      "finish_reason": ev.finish_reason}]}
                if include_usage:
                    chunk["usage"] = None
                yield sse(chunk)
            else:
                if include_usage:
                    yield sse({"id": self.id, "object": "text_completion", "created": self.created,
                               "model": self.model, "choices": [],
                               "usage": usage(self.prompt_tokens, completion_tokens)})
            yield SSE_DONE
        finally:
            await events.aclose()  # type: ignore[attr-defined]
