"""AsyncEngine's interface (``generate``, ``stats``, ``start``, ``shutdown``) over Ray Serve replicas, so
that the routes of engine/server serve them unchanged.

A request goes to the replica the router picks, as a streaming call (``handle.options(stream=True)``).
If that replica dies, is found dead or unreachable, or its queue is full, before any of the request's
events reached the ingress, the request moves to another replica (the client sees nothing but the
delay), at most max(2, serve.replicas) tries in all (then a 503; all queues full: the 503 of a full
queue). Once events have been streamed it cannot move, and its unfinished choices end with
``finish_reason: "error"``, which the routes send as an error event and ``[DONE]`` (a non-streamed
request: a 500). No replica up: the request waits up to ``serve.ray_failover_seconds`` for one, then
gets a 503.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import aclosing
from typing import AsyncIterator

from ray.exceptions import ActorDiedError, RayError, RayTaskError
from ray.serve.exceptions import RayServeException

from mistralrs.engine.core.async_engine import EngineClosed, EngineUnavailable
from mistralrs.engine.core.llm_engine import EngineStats
from mistralrs.engine.core.sampler import SamplingParams
from mistralrs.engine.core.sequence import SeqEvent

from mistralrs.engine.scaleout.replica_set import Attempt, ReplicaSet, ReplicaSlot
from mistralrs.engine.scaleout.wire import Refusal

log = logging.getLogger(__name__)
RETRY = "retry"  # an attempt's ending: the request moves to another replica


class RayEngineClient:
    def __init__(self, replicas: ReplicaSet, failover_seconds: float):
        self.replicas = replicas
        self.router = replicas.router
        self.failover_seconds = failover_seconds
        self._closing = False
        self._shutdown: asyncio.Future | None = None

    def start(self) -> "RayEngineClient":
        self.replicas.start()
        return self

    async def generate(self, prompt_ids: list[int], params: SamplingParams) -> AsyncIterator[SeqEvent]:
        """As AsyncEngine.generate: events of all ``params.n`` choices until each has finished; the
        engine's refusals are raised before the first event; closing early cancels the request."""
        hashes = self.router.block_hashes(prompt_ids)
        tried: set[tuple[int, int]] = set()  # (replica, process): a replaced replica may be tried again
        unfinished = set(range(params.n))
        # bounded: a prompt that kills each replica it reaches would otherwise meet their replacements forever
        for _ in range(max(2, len(self.replicas.slots))):
            if self._closing:
                raise EngineClosed("the server is shutting down")
            slot = await self._pick(hashes, tried)
            tried.add((slot.index, slot.pid))
            attempt = Attempt(slot.handle.options(stream=True).generate.remote(prompt_ids, params))
            # aclosing: a consumer leaving closes the attempt at once (its finally cancels the stream)
            async with aclosing(self._stream(slot, attempt, hashes, unfinished, tried)) as events:
                async for event in events:
                    yield event
            if not attempt.moved:
                return
            log.info("request moved off replica %d before it started", slot.index)
        raise EngineUnavailable(f"the request's replicas died (or were unreachable or full) before starting it, on "
                                f"each of its {len(tried)} tries; it is not tried again, as it may be what kills them")

    def _untried(self, tried: set[tuple[int, int]]) -> list[int]:
        return [s.index for s in self.replicas.up() if (s.index, s.pid) not in tried]

    async def _pick(self, hashes: list[int], tried: set[tuple[int, int]]) -> ReplicaSlot:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.failover_seconds
        while True:
            candidates = self._untried(tried)
            if candidates:
                return self.replicas.slots[self.router.choose(hashes, candidates)]
            if self._closing:
                raise EngineClosed("the server is shutting down")
            if loop.time() >= deadline:
                up, total = len(self.replicas.up()), len(self.replicas.slots)
                raise EngineUnavailable(f"no engine replica could take the request within {self.failover_seconds:g} s "
                                        f"({up} of {total} up; serve.ray_failover_seconds); retry later")
            await asyncio.sleep(0.1)

    async def _stream(self, slot: ReplicaSlot, attempt: Attempt, hashes: list[int], unfinished: set[int],
                      tried: set[tuple[int, int]]) -> AsyncIterator[SeqEvent]:
        """One attempt's events; sets ``attempt.moved`` when the request should go to another replica."""
        self.router.assign(slot.index)
        slot.attempts.add(attempt)
        slot.counters.requests += 1
        over = False  # the replica's stream ended: nothing to cancel there
        try:
            async for item in attempt.stream:
                if isinstance(item, Refusal):
                    over = True
                    if item.kind == "queue_full" and self._untried(tried):  # another replica may have room
                        attempt.moved = True
                        return
                    raise item.exception()
                if not attempt.started:
                    attempt.started = True
                    self.router.record(slot.index, hashes)  # its cache holds the prompt once it runs there
                for event in item:
                    if event.finish_reason:
                        unfinished.discard(event.index)
                    yield event
            over = True
        except (RayError, RayServeException) as exc:
            over = True
            reason = self._failure(slot, attempt, exc)
            if reason == RETRY:
                attempt.moved = True
                return
            for index in sorted(unfinished):  # what was streamed stays; the rest ends here
                yield SeqEvent(-1, index, None, "", finish_reason=reason)
        finally:
            slot.attempts.discard(attempt)
            self.router.release(slot.index)
            if not over:  # the consumer left (client disconnect): abort the request on the replica
                attempt.stream.cancel()

    def _failure(self, slot: ReplicaSlot, attempt: Attempt, exc: BaseException) -> str:
        """How an attempt that failed with ``exc`` ends: RETRY, or the finish_reason of its unfinished
        choices. Raises for a request that fails inside a replica before starting (a 500)."""
        if attempt.interrupted == "abort":
            return "abort"
        if isinstance(exc, RayTaskError) and attempt.interrupted is None:  # our code failed in the replica
            log.error("replica %d failed a request: %s", slot.index, exc)
            if not attempt.started:
                raise RuntimeError(f"replica {slot.index} failed the request") from exc
            return "error"
        # only a death takes the replica down: an unavailable actor (ActorUnavailableError, a network
        # hiccup) may answer again, and Serve's status says so if it does not (ReplicaSet.check)
        if isinstance(exc, ActorDiedError):
            self.replicas.mark_lost(slot, "its process died during a request")
        if not attempt.started:
            return RETRY
        log.warning("a request streaming from replica %d was cut: %s", slot.index, type(exc).__name__)
        return "error"

    async def stats(self) -> EngineStats:
        return await self.replicas.stats()

    async def shutdown(self, grace_seconds: float = 10.0) -> int:
        """As AsyncEngine.shutdown: refuse new requests, give those in flight ``grace_seconds``, then end
        them with ``finish_reason: "abort"``; returns how many were cut."""
        if self._shutdown is not None:
            await asyncio.shield(self._shutdown)
            return 0
        loop = asyncio.get_running_loop()
        self._shutdown = loop.create_future()
        self._closing = True
        deadline = loop.time() + grace_seconds
        while loop.time() < deadline and any(s.attempts for s in self.replicas.slots):
            await asyncio.sleep(0.05)
        cut = 0
        for slot in self.replicas.slots:
            for attempt in list(slot.attempts):
                attempt.interrupt("abort")
                cut += 1
        await self.replicas.stop()
        if cut:
            log.warning("shutdown: %d request(s) still generating after %.0f s were ended (finish_reason 'abort')",
                        cut, grace_seconds)
        self._shutdown.set_result(None)
        return cut
