"""The ingress's view of the replicas: which are up, what is in flight on each, and their counters.

A replica is down from the moment the ingress sees its process die (a request's stream fails with
ActorDiedError) or Serve reports its application unhealthy, failed or gone, until Serve reports it
RUNNING again and it answers ``describe()`` (a new process Ray Serve started in its place, or the same
one after a hiccup). While down, the router sends it nothing, and requests waiting for it that have
not started are moved to another replica (engine_client.py).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from mistralrs.engine.core.llm_engine import EngineStats

from mistralrs.engine.scaleout.replica_metrics import ReplicaCounters, render_replicas
from mistralrs.engine.scaleout.router import PrefixAffinityRouter
from mistralrs.engine.scaleout.wire import ReplicaDescription

log = logging.getLogger(__name__)
MONITOR_PERIOD_SECONDS = 1.0
PROBE_TIMEOUT_SECONDS = 5.0  # a status/describe()/stats() call that takes longer counts as no answer
LOST_STATES = ("UNHEALTHY", "DEPLOY_FAILED", "DELETING", None)  # None: the application is gone


@dataclass(eq=False)
class Attempt:
    """One try of a request on one replica; ``interrupted`` says why the ingress cancelled it."""

    stream: Any  # ray.serve.handle.DeploymentResponseGenerator
    started: bool = False  # events reached the ingress: it can no longer move to another replica
    interrupted: str | None = None  # lost (the replica went down) | abort (the server is shutting down)
    moved: bool = False  # it ended before starting and the request goes on to another replica

    def interrupt(self, reason: str) -> None:
        self.interrupted = reason
        self.stream.cancel()


@dataclass(eq=False)
class ReplicaSlot:
    index: int
    app: str  # its Serve application
    handle: Any  # DeploymentHandle
    pid: int  # of the process last seen answering (a request's tries are per process)
    host: str
    up: bool = True
    attempts: set[Attempt] = field(default_factory=set)
    counters: ReplicaCounters = field(default_factory=ReplicaCounters)


class ReplicaSet:
    def __init__(self, slots: list[ReplicaSlot], router: PrefixAffinityRouter):
        self.slots = slots
        self.router = router
        self._monitor: asyncio.Task | None = None
        # serve.status() blocks on the Serve controller: a thread of its own, so that a stuck controller
        # cannot hold the default executor's threads, which the chat routes use (asyncio.to_thread)
        self._status_thread = ThreadPoolExecutor(1, thread_name_prefix="serve-status")
        self._status_call: Future | None = None

    # -- liveness -----------------------------------------------------------------------------------
    def up(self) -> list[ReplicaSlot]:
        return [s for s in self.slots if s.up]

    def mark_lost(self, slot: ReplicaSlot, why: str) -> None:
        """``slot``'s process died (or Serve says it is unhealthy): route around it and move its requests
        that have not started."""
        if not slot.up:
            return
        slot.up = False
        self.router.forget(slot.index)
        log.warning("replica %d (%s, pid %d on %s) is down: %s; Ray Serve replaces it", slot.index, slot.app,
                    slot.pid, slot.host, why)
        for attempt in list(slot.attempts):
            if not attempt.started:
                attempt.interrupt("lost")

    def _mark_up(self, slot: ReplicaSlot, description: ReplicaDescription) -> None:
        slot.pid, slot.host, slot.up = description.pid, description.host, True
        log.warning("replica %d (%s) is up again: pid %d on %s", slot.index, slot.app, slot.pid, slot.host)

    def start(self) -> None:
        self._monitor = asyncio.ensure_future(self._watch())

    async def stop(self) -> None:
        if self._monitor is not None:
            self._monitor.cancel()
            await asyncio.gather(self._monitor, return_exceptions=True)
        self._status_thread.shutdown(wait=False, cancel_futures=True)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(MONITOR_PERIOD_SECONDS)
            try:
                await self.check()
            except Exception as exc:  # noqa: BLE001 - a failed check must not end the monitoring
                log.warning("replica status check failed: %s", exc)

    async def check(self) -> None:
        """One look at Serve's status: replicas whose application is unhealthy, failed or gone go
        down; those down come back once it is RUNNING and they answer. Skipped while the previous
        look still waits for the controller."""
        if self._status_call is not None and not self._status_call.done():
            return
        self._status_call = self._status_thread.submit(app_statuses, [s.app for s in self.slots])
        statuses = await asyncio.wait_for(asyncio.wrap_future(self._status_call), PROBE_TIMEOUT_SECONDS)
        for slot in self.slots:
            status = statuses.get(slot.app)
            if slot.up and status in LOST_STATES:
                self.mark_lost(slot, f"Ray Serve reports its application {status or 'deleted'}")
            elif not slot.up and status == "RUNNING":
                description = await _call(slot.handle.describe)
                if description is not None:
                    self._mark_up(slot, description)

    def health(self) -> dict:
        up, desired = len(self.up()), len(self.slots)
        status = "ok" if up == desired else "degraded" if up else "unavailable"
        return {"status": status, "replicas": desired, "replicas_up": up}

    # -- counters -------------------------------------------------------------------------------------
    async def stats(self) -> EngineStats:
        """The engines' counters summed over replicas (those of replaced processes included); gauges
        (running, waiting, KV blocks) over the replicas up."""
        up = self.up()  # once: a replica may go down while the answers come
        answers = await asyncio.gather(*[_call(s.handle.stats) for s in up])
        for slot, answer in zip(up, answers):
            if answer is not None:
                pid, stats = answer
                slot.counters.update(pid, stats)
        return ReplicaCounters.total([s.counters.view(s.up) for s in self.slots])

    def metrics_text(self, model: str) -> str:
        return render_replicas(self.slots, model)


def app_statuses(apps: list[str]) -> dict[str, str]:
    """Serve's status ("RUNNING", "UNHEALTHY", ...) of those of ``apps`` that exist (a blocking call to
    the Serve controller)."""
    applications = serve.status().applications
    return {app: applications[app].status.value for app in apps if app in applications}


async def _call(method: Any) -> Any:
    """``method.remote()`` on a replica, or None when it does not answer in time (a replica being
    replaced: the call would wait for the new process)."""
    response = method.remote()
    try:
        return await asyncio.wait_for(response, PROBE_TIMEOUT_SECONDS)
    except Exception as exc:  # noqa: BLE001 - any failure (timeout, death) means: no answer now
        response.cancel()
        log.debug("replica call %s failed: %s", method, exc)
        return None
