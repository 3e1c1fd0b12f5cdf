"""Which replica gets a request: the least loaded, unless one holds a meaningful part of its prompt.

A replica's prefix cache reuses KV blocks by the hash of the tokens up to each block's end
(engine/core/block_manager.py), so a prompt sharing its first k full blocks with a prompt the replica
served recently will likely skip their prefill there. The router keeps, per replica, the chained
hashes of the full blocks of prompts it sent there (the idea of Ray Serve LLM's
PrefixCacheAffinityRouter; an approximation of the replica's cache, which may have evicted them,
bounded to ``capacity`` blocks per replica, least recently routed first out).

Load is the number of requests in flight per replica. Blocks that every candidate holds (a chat
template's fixed opening, a system prompt all have seen) prefer none of them. A replica holding more
wins when its extra blocks are at least AFFINITY_MIN_SHARE of the prompt's blocks and its load is
within what they are worth: k extra blocks allow k-1 more requests in flight than the least loaded
replica, at most ``max_imbalance``. Otherwise the least loaded replica is taken (ties in turn, so that
both of two idle replicas get work, and a new or replaced replica is not starved).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Sequence

from mistralrs.engine.core.block_manager import block_hash

AFFINITY_MIN_SHARE = 0.1  # a smaller match saves too little prefill to be worth any imbalance


class PrefixAffinityRouter:
    def __init__(self, replicas: int, block_size: int, max_imbalance: int, capacity: int = 1 << 16):
        self.block_size = block_size
        self.max_imbalance = max_imbalance
        self.capacity = capacity
        self.in_flight = [0] * replicas
        self._blocks: list[OrderedDict[int, None]] = [OrderedDict() for _ in range(replicas)]
        self._turn = 0

    def block_hashes(self, prompt_ids: Sequence[int]) -> list[int]:
        """Chained hashes of the prompt's reusable blocks: each covers every token up to its block's
        end. As the block manager's _cached_prefix, never the last token's block (it must run)."""
        hashes, h, bs = [], 0, self.block_size
        for start in range(0, (len(prompt_ids) - 1) // bs * bs, bs):
            h = block_hash(h, tuple(prompt_ids[start:start + bs]), 0)
            hashes.append(h)
        return hashes

    def matched_blocks(self, replica: int, hashes: list[int]) -> int:
        """Leading blocks of the prompt routed to ``replica`` before (a chain: stop at the first miss)."""
        known = self._blocks[replica]
        count = 0
        for h in hashes:
            if h not in known:
                break
            count += 1
        return count

    def choose(self, hashes: list[int], candidates: Sequence[int]) -> int:
        if not candidates:
            raise ValueError("no replica to choose from")
        least = min(self.in_flight[c] for c in candidates)
        matched = {c: self.matched_blocks(c, hashes) for c in candidates}
        best = max(candidates, key=lambda c: (matched[c], -self.in_flight[c]))
        extra = matched[best] - min(matched.values())  # beyond the blocks every candidate holds
        if (extra and extra >= math.ceil(AFFINITY_MIN_SHARE * len(hashes))
                and self.in_flight[best] - least <= min(extra - 1, self.max_imbalance)):
            return best
        idle = [c for c in candidates if self.in_flight[c] == least]
        self._turn += 1
        return idle[self._turn % len(idle)]

    def assign(self, replica: int) -> None:
        """``replica`` took a request (its prompt's blocks count once it starts: :meth:`record`)."""
        self.in_flight[replica] += 1

    def record(self, replica: int, hashes: list[int]) -> None:
        """``replica`` started a request with these prompt blocks: its cache now holds them."""
        known = self._blocks[replica]
        for h in hashes:
            known[h] = None
            known.move_to_end(h)
        while len(known) > self.capacity:
            known.popitem(last=False)

    def release(self, replica: int) -> None:
        self.in_flight[replica] -= 1

    def forget(self, replica: int) -> None:
        """The replica's process was replaced: its prefix cache is empty."""
        self._blocks[replica].clear()
