"""Driving engine requests from a handler: start them, merge their events, notice a client leaving,
and frame server-sent events.

A request's generator raises what the engine refuses *before* its first event, so handlers first
:func:`start_all` (a refusal becomes a proper HTTP error, and the requests already admitted are
cancelled), then stream or collect the rest. Closing a generator aborts its sequences at once.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Awaitable, TypeVar

import msgspec
from litestar import Request
from litestar.background_tasks import BackgroundTask
from litestar.response import Stream

from mistralrs.engine.core.sequence import SeqEvent

from mistralrs.engine.server.errors import ClientDisconnected

T = TypeVar("T")
Events = AsyncIterator[SeqEvent]

SSE_DONE = b"data: [DONE]\n\n"
_encode = msgspec.json.Encoder().encode


def sse(obj: Any) -> bytes:
    return b"data: " + _encode(obj) + b"\n\n"


async def close_all(gens: list[Events]) -> None:
    for g in gens:
        try:
            await g.aclose()  # type: ignore[attr-defined]
        except Exception:  # already failed; closing is all we want
            pass


async def start_all(gens: list[Events]) -> list[SeqEvent]:
    """Submit every request (concurrently) and wait for each one's first event. If any is refused,
    the others are cancelled and the first refusal is raised."""

    async def first(g: Events) -> SeqEvent:
        return await g.__anext__()

    tasks = [asyncio.ensure_future(first(g)) for g in gens]
    try:
        await asyncio.wait(tasks)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_all(gens)
        raise
    errors = [t.exception() for t in tasks if t.exception() is not None]
    if errors:
        await close_all(gens)
        raise errors[0]
    return [t.result() for t in tasks]


_END = object()


async def merge(gens: list[Events], firsts: list[SeqEvent]) -> AsyncIterator[tuple[int, SeqEvent]]:
    """``(request index, event)`` from started requests, as they come. Leaving early cancels all."""
    if len(gens) == 1:  # the common case, without helper tasks
        try:
            yield 0, firsts[0]
            async for event in gens[0]:
                yield 0, event
        finally:
            await close_all(gens)
        return
    queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()

    async def pump(i: int, g: Events) -> None:
        try:
            async for event in g:
                queue.put_nowait((i, event))
        except Exception as exc:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, exc))
        finally:
            queue.put_nowait((i, _END))

    for i, event in enumerate(firsts):
        queue.put_nowait((i, event))
    tasks = [asyncio.ensure_future(pump(i, g)) for i, g in enumerate(gens)]
    try:
        remaining = len(gens)
        while remaining:
            i, item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await close_all(gens)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects meanwhile (the body is already read,
    so the next ASGI message can only be the disconnect)."""
    task = asyncio.ensure_future(work)
    gone = False

    async def watch() -> None:
        nonlocal gone
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                gone = True
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if gone:
            raise ClientDisconnected() from None
        raise
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()


def sse_response(chunks: AsyncIterator[bytes]) -> Stream:
    """An SSE response. Litestar cancels the stream when the client disconnects; closing the
    generator afterwards (background task) makes sure its engine requests are aborted even if the
    cancellation hit while a chunk was being sent."""
    return Stream(chunks, media_type="text/event-stream",
                  headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
                  background=BackgroundTask(chunks.aclose))  # type: ignore[attr-defined]
