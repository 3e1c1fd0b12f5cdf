"""The engine on the compute thread, with an asyncio face: submit a request, stream its events.

Only the compute thread (compute_thread.py) touches engine state: the engine steps there as a poller,
and coroutines hand it callables and get results back as futures. Events travel the other way through
``call_soon_threadsafe``.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future
from typing import AsyncIterator, Callable, TypeVar

from mistralrs.engine.core.compute_thread import ComputeThread, compute_thread
from mistralrs.engine.core.llm_engine import EngineStats, LLMEngine
from mistralrs.engine.core.sampler import SamplingParams
from mistralrs.engine.core.sequence import SeqEvent

log = logging.getLogger(__name__)
T = TypeVar("T")


class EngineClosed(RuntimeError):
    pass


class EngineUnavailable(RuntimeError):
    """No engine can take the request for now (serve.backend=ray: no replica up); retry later."""


class AsyncEngine:
    def __init__(self, engine: LLMEngine, compute: ComputeThread | None = None):
        self.engine = engine
        self.compute = compute or compute_thread()
        self._closing = False
        self._stopped = False
        self._shutdown: asyncio.Future | None = None  # set while/after shutting down
        # events of the current step, handed to the event loop in one call after it: one wake-up of
        # the loop per step instead of one per sequence and token
        self._outbox: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue, SeqEvent]] = []

    # -- on the compute thread ----------------------------------------------------------------------
    def start(self) -> "AsyncEngine":
        self.compute.add_poller(self._poll)
        return self

    def _poll(self) -> bool:
        """One engine step if there is work; False lets the compute thread sleep."""
        self._flush()  # events emitted by calls run between steps (aborts at shutdown)
        if self._stopped or not self.engine.has_work():
            return False
        try:
            self.engine.step()
        except Exception as exc:  # a failed step must not leave clients waiting forever
            log.exception("engine step failed: %s", exc)
            self._end_all("error")
        self._flush()
        return True

    def _flush(self) -> None:
        if not self._outbox:
            return
        batch, self._outbox = self._outbox, []
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, SeqEvent]]] = {}
        for loop, events, event in batch:
            by_loop.setdefault(loop, []).append((events, event))
        for loop, items in by_loop.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:  # that event loop is closed: nobody is left to read these events
                log.debug("dropped %d events for a closed event loop", len(items))

    def _end_all(self, reason: str) -> None:
        """Finish every queued and running sequence with ``reason`` (error | abort)."""
        sched = self.engine.scheduler
        for seq in [*sched.running, *sched.waiting]:
            self.engine.abort(seq)
            seq.finish_reason = reason
            seq.emit(SeqEvent(seq.seq_id, seq.index, None, "", finish_reason=reason))

    def call(self, fn: Callable[[], T]) -> "Future[T]":
        """Run ``fn`` on the compute thread between steps."""
        if self._stopped:
            fut: Future = Future()
            fut.set_exception(EngineClosed("the engine has shut down"))
            return fut
        return self.compute.submit(fn)

    # -- the asyncio side --------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[SeqEvent]:
        """Events of all ``params.n`` choices, interleaved, until each has a finish_reason. Raises
        (before the first event) what the engine refuses: QueueFull, ContextLengthExceeded,
        InvalidSamplingParam, ValueError. Closing the iterator early cancels the request."""
        if self._closing:
            raise EngineClosed("the server is shutting down")
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[SeqEvent] = asyncio.Queue()

        def emit(event: SeqEvent) -> None:  # on the compute thread; _flush delivers
            self._outbox.append((loop, events, event))

        added = self.call(lambda: self.engine.add_request(prompt_ids, params, emit))
        try:
            seqs = await asyncio.wrap_future(added)
        except asyncio.CancelledError:
            # cancelled while the engine thread was adding it: abort whatever it added
            added.add_done_callback(lambda f: f.exception() is None and self.call(
                lambda: [self.engine.abort(s) for s in f.result()]))
            raise
        remaining = len(seqs)
        try:
            while remaining:
                event = await events.get()
                if event.finish_reason:
                    remaining -= 1
                yield event
        finally:
            if remaining:  # the consumer left early (client disconnect): free the KV blocks now
                self.call(lambda: [self.engine.abort(s) for s in seqs])

    async def stats(self) -> EngineStats:
        return await asyncio.wrap_future(self.call(self.engine.stats))

    async def shutdown(self, grace_seconds: float = 10.0) -> int:
        """Refuse new requests, let running ones finish for up to ``grace_seconds``, then end the rest
        with ``finish_reason: "abort"`` (their streams still get a final chunk and ``[DONE]``).
        Returns how many sequences were cut; a second call waits for the first and returns 0."""
        if self._shutdown is not None:
            await asyncio.shield(self._shutdown)
            return 0
        self._shutdown = asyncio.get_running_loop().create_future()
        self._closing = True
        deadline = asyncio.get_running_loop().time() + grace_seconds
        while asyncio.get_running_loop().time() < deadline:
            if not await asyncio.wrap_future(self.call(self.engine.has_work)):
                break
            await asyncio.sleep(0.05)

        def stop() -> int:
            cut = len(self.engine.scheduler.running) + len(self.engine.scheduler.waiting)
            self._end_all("abort")
            self._flush()
            self._stopped = True
            self.compute.remove_poller(self._poll)
            return cut

        cut = await asyncio.wrap_future(self.call(stop))
        if cut:
            log.warning("shutdown: %d sequence(s) still generating after %.0f s were ended (finish_reason "
                        "'abort')", cut, grace_seconds)
        self._shutdown.set_result(None)
        return cut


def _deliver(items: list[tuple[asyncio.Queue, SeqEvent]]) -> None:
    for events, event in items:
        events.put_nowait(event)
