"""Which sequences run in the next step, and how many of their tokens.

Each step mixes decode tokens and prefill chunks under a token budget: running decodes first (one
token each, oldest first), then unfinished prefills, then waiting sequences in arrival order while
their KV blocks fit. When the cache runs out, the newest running sequence is preempted: its blocks
are freed and it goes back to the front of the queue, to be recomputed later. Nobody starves: the
queue is first-come first-served and preemption always takes the newest.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mistralrs.engine.core.block_manager import KVBlockPool
from mistralrs.engine.core.sequence import Sequence, SeqStatus


class QueueFull(RuntimeError):
    pass


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_new: int  # tokens run this step, starting at seq.num_cached
    sample: bool  # this chunk reaches the sequence's last token, so a token is sampled


class Scheduler:
    def __init__(self, pool: KVBlockPool, max_seqs: int, max_batch_tokens: int, max_waiting: int):
        self.pool = pool
        self.max_seqs = max_seqs
        self.max_batch_tokens = max_batch_tokens
        self.max_waiting = max_waiting
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.preemptions = 0

    def add(self, seqs: list[Sequence]) -> None:
        if len(self.waiting) + len(seqs) > self.max_waiting:
            raise QueueFull(f"{len(self.waiting)} requests are already waiting (engine.max_waiting={self.max_waiting})")
        self.waiting.extend(seqs)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def remove(self, seq: Sequence) -> None:
        """Take a sequence out wherever it is and free its blocks (finish or abort)."""
        if seq in self.running:
            self.running.remove(seq)
        elif seq in self.waiting:
            self.waiting.remove(seq)
        self.pool.free_seq(seq)
        seq.status = SeqStatus.FINISHED

    def _preempt_newest(self) -> Sequence:
        victim = max(self.running, key=lambda s: s.arrival)
        self.running.remove(victim)
        self.pool.free_seq(victim)
        victim.status = SeqStatus.WAITING
        self.waiting.appendleft(victim)
        self.preemptions += 1
        return victim

    def schedule(self) -> list[ScheduledSeq]:
        budget = self.max_batch_tokens
        batch: list[ScheduledSeq] = []
        decodes = sorted((s for s in self.running if s.pending_tokens == 1), key=lambda s: s.arrival)
        for seq in decodes:
            if budget == 0:
                break
            while seq in self.running and not self.pool.can_append(seq):
                self._preempt_newest()
            if seq not in self.running:
                continue  # it was the newest, and went back to the queue
            self.pool.append(seq)
            batch.append(ScheduledSeq(seq, 1, True))
            budget -= 1
        for seq in sorted((s for s in self.running if s.pending_tokens > 1), key=lambda s: s.arrival):
            if budget == 0:
                break
            n = min(seq.pending_tokens, budget)
            batch.append(ScheduledSeq(seq, n, n == seq.pending_tokens))
            budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.max_seqs:
            seq = self.waiting[0]
            if not self.pool.can_allocate(seq):
                break  # first come, first served: nobody overtakes the head of the queue
            self.waiting.popleft()
            self.pool.allocate(seq)
            seq.status = SeqStatus.RUNNING
            self.running.append(seq)
            n = min(seq.pending_tokens, budget)
            batch.append(ScheduledSeq(seq, n, n == seq.pending_tokens))
            budget -= n
        return batch
