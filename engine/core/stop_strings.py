"""Stop strings over streamed text: detected across token boundaries, never emitted."""

from __future__ import annotations


class StopStringFilter:
    """Feed text pieces; get back what is safe to emit. Text that could still become the start of
    a stop string is held back until it can't."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.pending = ""
        self.stopped = False

    def push(self, text: str) -> str:
        if self.stopped or not self.stops:
            return "" if self.stopped else text
        self.pending += text
        hits = [(i, s) for s in self.stops if (i := self.pending.find(s)) >= 0]
        if hits:
            cut = min(i for i, _ in hits)
            out, self.pending, self.stopped = self.pending[:cut], "", True
            return out
        hold = self._partial_suffix()
        out = self.pending[: len(self.pending) - hold]
        self.pending = self.pending[len(self.pending) - hold :]
        return out

    def flush(self) -> str:
        out, self.pending = ("" if self.stopped else self.pending), ""
        return out

    def _partial_suffix(self) -> int:
        """Length of the longest tail of pending text that is a proper prefix of some stop string."""
        best = 0
        for stop in self.stops:
            for n in range(min(len(stop) - 1, len(self.pending)), best, -1):
                if self.pending.endswith(stop[:n]):
                    best = n
                    break
        return best
