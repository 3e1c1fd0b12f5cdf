"""Drive an OpenAI-compatible server with the official ``openai`` client, as users do, and time it.

One round sends ``streams`` identical-shaped requests at once (each with its own prompt, so no prefix
cache serves one from another) and reports, over the round:

- ``tok_s``: generated tokens of all streams / wall time of the round (the aggregate users get);
- ``decode_tok_s``: per stream, (tokens - 1) / (last chunk - first chunk), median over streams: the
  decode speed one client sees, without the prompt's time;
- ``ttft_s``: median time to the first generated token.

Works against our server and llama.cpp's ``llama-server`` alike (both take ``ignore_eos``).
"""

from __future__ import annotations

import asyncio
import statistics
import time
from dataclasses import dataclass


@dataclass
class StreamTiming:
    tokens: int
    start: float
    first: float | None
    end: float


@dataclass
class RoundResult:
    streams: int
    tok_s: float
    decode_tok_s: float
    ttft_s: float
    tokens: int
    wall_s: float

    def as_dict(self) -> dict:
        return {"streams": self.streams, "tok_s": round(self.tok_s, 2), "decode_tok_s": round(self.decode_tok_s, 2),
                "ttft_s": round(self.ttft_s, 4), "tokens": self.tokens, "wall_s": round(self.wall_s, 3)}


async def _one(client, model: str, prompt: str, max_tokens: int, endpoint: str, stream: bool) -> StreamTiming:
    extra = {"ignore_eos": True}
    start = time.perf_counter()
    first = None
    tokens = 0
    if endpoint == "chat":
        kwargs = dict(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                      temperature=0.0, extra_body=extra)
        if stream:
            async for chunk in await client.chat.completions.create(stream=True, **kwargs):
                if chunk.choices and chunk.choices[0].delta.content:
                    first = first or time.perf_counter()
                    tokens += 1
        else:
            r = await client.chat.completions.create(**kwargs)
            tokens = r.usage.completion_tokens
    else:
        kwargs = dict(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0.0, extra_body=extra)
        if stream:
            async for chunk in await client.completions.create(stream=True, **kwargs):
                if chunk.choices and chunk.choices[0].text:
                    first = first or time.perf_counter()
                    tokens += 1
        else:
            r = await client.completions.create(**kwargs)
            tokens = r.usage.completion_tokens
    return StreamTiming(tokens, start, first, time.perf_counter())


async def run_round(base_url: str, model: str, prompts: list[str], max_tokens: int, endpoint: str = "completions",
                    stream: bool = True) -> RoundResult:
    """``len(prompts)`` concurrent requests; streamed chunks count as tokens (one token per chunk for
    both servers: a chunk carries each decoded token's text; a token whose text is held back for a
    multi-byte character or stop string merges with the next, which slightly undercounts)."""
    from openai import AsyncOpenAI

    import httpx

    limits = httpx.Limits(max_connections=len(prompts) + 4, max_keepalive_connections=len(prompts) + 4)
    async with AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=0, timeout=600,
                           http_client=httpx.AsyncClient(limits=limits, timeout=600)) as client:
        start = time.perf_counter()
        timings = await asyncio.gather(*[_one(client, model, p, max_tokens, endpoint, stream) for p in prompts])
        wall = time.perf_counter() - start
    tokens = sum(t.tokens for t in timings)
    decode = [(t.tokens - 1) / (t.end - t.first) for t in timings if t.first is not None and t.tokens > 1 and t.end > t.first]
    if not stream:  # no chunks: the whole request counts (short prompts make the prefill negligible)
        decode = [t.tokens / (t.end - t.start) for t in timings]
    ttft = [t.first - t.start for t in timings if t.first is not None]
    return RoundResult(len(prompts), tokens / wall, statistics.median(decode) if decode else float("nan"),
                       statistics.median(ttft) if ttft else float("nan"), tokens, wall)
