"""One engine replica: the whole model and its AsyncEngine in a Ray Serve replica process.

cluster.py deploys this class (``serve.deployment(EngineReplica)``) once per replica; Ray Serve
constructs it in a worker process, calls its methods through deployment handles and starts a new
process when one dies. Nothing here imports Ray: the class is plain Python.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from contextlib import aclosing
from typing import AsyncIterator

from mistralrs.conf.schema import Config
from mistralrs.engine.api import LLM
from mistralrs.engine.core.async_engine import AsyncEngine
from mistralrs.engine.core.llm_engine import EngineStats
from mistralrs.engine.core.sampler import SamplingParams
from mistralrs.engine.core.sequence import SeqEvent

from mistralrs.engine.scaleout.wire import REFUSED, Refusal, ReplicaDescription


class EngineReplica:
    def __init__(self, config: Config):
        logging.basicConfig(level=config.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
        self.llm = LLM.from_config(config)
        self.engine = AsyncEngine(self.llm.engine).start()

    def describe(self) -> ReplicaDescription:
        llm = self.llm
        return ReplicaDescription(pid=os.getpid(), host=socket.gethostname(), max_seq_len=llm.max_seq_len,
                                  vocab_size=llm.vocab_size, adapter_info=llm.adapter_info,
                                  sampling=llm.config.sampling)

    async def stats(self) -> tuple[int, EngineStats]:
        """This process's id (a new one means the replica was replaced) and its engine's counters."""
        return os.getpid(), await self.engine.stats()

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[Refusal | list[SeqEvent]]:
        """A streamed request: one :class:`Refusal` if the engine refuses it, else lists of its events.
        Closing the stream (the ingress cancels it) aborts the request and frees its KV blocks."""
        events = self.engine.generate(prompt_ids, params)
        try:
            try:
                first = await events.__anext__()
            except REFUSED as exc:
                yield Refusal.of(exc)
                return
            # closed, not left to the collector: the pump inside must stop before ``events`` closes
            async with aclosing(_batched(events, first)) as batches:
                async for batch in batches:
                    yield batch
        finally:
            await events.aclose()  # type: ignore[attr-defined]


async def _batched(events: AsyncIterator[SeqEvent], first: SeqEvent) -> AsyncIterator[list[SeqEvent]]:
    """The events in lists of whatever arrived while the previous list was being sent: one stream
    message per engine step (or per several, when the ingress lags) rather than per event."""
    pending: list[SeqEvent] = [first]
    arrived = asyncio.Event()
    ended = False

    async def pump() -> None:
        nonlocal ended
        try:
            async for event in events:
                pending.append(event)
                arrived.set()
        finally:
            ended = True
            arrived.set()

    task = asyncio.ensure_future(pump())
    try:
        while pending or not ended:
            if not pending:
                arrived.clear()
                await arrived.wait()
                continue
            batch = pending[:]
            pending.clear()
            yield batch
        task.result()  # a failure of the engine's stream is the request's
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
