"""The replicas' engine counters: summed for /metrics' usual series, and per replica after them.

A replaced replica starts its counters from zero; the last figures of its previous process are kept
(``retired``) so that the sums, which Prometheus reads as counters, do not go backwards.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from mistralrs.engine.core.llm_engine import EngineStats
from mistralrs.engine.server.metrics import engine_series, label, metric

GAUGES = ("running", "waiting", "kv_blocks_total", "kv_blocks_free")  # the rest of EngineStats are counters
_ZERO = EngineStats(**{f.name: 0 for f in dataclasses.fields(EngineStats)})


@dataclass
class ReplicaCounters:
    pid: int | None = None
    current: EngineStats = field(default_factory=lambda: _ZERO)  # of the process ``pid``
    retired: EngineStats = field(default_factory=lambda: _ZERO)  # counters of the replica's earlier processes
    requests: int = 0  # requests this ingress sent to the replica
    restarts: int = 0  # processes replaced (as seen in the counters' pid)

    def update(self, pid: int, stats: EngineStats) -> None:
        if self.pid is not None and pid != self.pid:
            self.retired = _add(self.retired, self.current, counters_only=True)
            self.restarts += 1
        self.pid, self.current = pid, stats

    def view(self, up: bool) -> EngineStats:
        """Counters over all its processes; gauges of the current one while up, zero while down."""
        out = _add(self.retired, self.current, counters_only=True)  # gauges: the retired's zeros
        return dataclasses.replace(out, **{g: getattr(self.current, g) for g in GAUGES}) if up else out

    @staticmethod
    def total(views: list[EngineStats]) -> EngineStats:
        out = _ZERO
        for view in views:
            out = _add(out, view, counters_only=False)
        return out


def _add(a: EngineStats, b: EngineStats, counters_only: bool) -> EngineStats:
    return EngineStats(**{f.name: getattr(a, f.name) + (0 if counters_only and f.name in GAUGES else getattr(b, f.name))
                          for f in dataclasses.fields(EngineStats)})


def render_replicas(slots: list[Any], model: str) -> str:
    """Per-replica series (``mistralrs_replica_*{replica="i"}``) and the replica counts. ``slots``:
    replica_set.ReplicaSlot (index, app, up, counters)."""
    lines: list[str] = []
    metric(lines, "replicas_desired", "gauge", "Engine replicas configured (serve.replicas).",
           [(f'{{model="{label(model)}"}}', len(slots))])
    metric(lines, "replicas_up", "gauge", "Engine replicas up.", [(f'{{model="{label(model)}"}}', sum(s.up for s in slots))])
    tags = {s.index: f'{{model="{label(model)}",replica="{s.index}",app="{label(s.app)}"}}' for s in slots}
    metric(lines, "replica_up", "gauge", "1 while the replica is up.", [(tags[s.index], int(s.up)) for s in slots])
    metric(lines, "replica_requests_total", "counter", "Requests this server sent to the replica (retries included).",
           [(tags[s.index], s.counters.requests) for s in slots])
    metric(lines, "replica_restarts_total", "counter", "Times the replica's process was replaced.",
           [(tags[s.index], s.counters.restarts) for s in slots])
    per_slot = [engine_series(s.counters.view(s.up)) for s in slots]
    for k, (name, kind, help_text, _) in enumerate(per_slot[0]):
        metric(lines, f"replica_{name}", kind, help_text, [(tags[s.index], series[k][3]) for s, series in zip(slots, per_slot)])
    return "\n".join(lines) + "\n"
