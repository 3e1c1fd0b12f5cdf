"""KV cache blocks: a fixed pool, per-sequence block tables, and prefix reuse by block hash.

A full block is identified by the hash of its tokens chained with the previous block's hash (and
the cache it belongs to), so two prompts sharing a prefix share those blocks. A freed block keeps
its hash until it is handed out again, so a later request can still hit it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from mistralrs.engine.core.sequence import Sequence


@dataclass
class BlockStats:
    total: int
    free: int
    prefix_hit_tokens: int
    prefix_queried_tokens: int

    @property
    def used(self) -> int:
        return self.total - self.free


def block_hash(prev: int, tokens: tuple[int, ...], cache_index: int) -> int:
    return hash((prev, cache_index, tokens))


class KVBlockPool:
    def __init__(self, num_blocks: int, block_size: int, num_caches: int = 1):
        if num_blocks < 1 or block_size < 1:
            raise ValueError("the KV cache needs at least one block of at least one token")
        self.num_blocks, self.block_size, self.num_caches = num_blocks, block_size, num_caches
        self.free: deque[int] = deque(range(num_blocks))
        self.refs = [0] * num_blocks
        self.hash_of: list[int | None] = [None] * num_blocks
        self.by_hash: dict[int, int] = {}
        self.prefix_hit_tokens = 0
        self.prefix_queried_tokens = 0

    # -- bookkeeping -------------------------------------------------------------------------
    def blocks_for(self, n_tokens: int) -> int:
        return -(-n_tokens // self.block_size)

    def stats(self) -> BlockStats:
        return BlockStats(self.num_blocks, len(self.free), self.prefix_hit_tokens, self.prefix_queried_tokens)

    def _take(self, block: int | None = None) -> int:
        if block is None:
            block = self.free.popleft()
            old = self.hash_of[block]
            if old is not None and self.by_hash.get(old) == block:
                del self.by_hash[old]
            self.hash_of[block] = None
        elif self.refs[block] == 0:
            self.free.remove(block)  # a cached block coming back into use
        self.refs[block] += 1
        return block

    def _release(self, block: int) -> None:
        self.refs[block] -= 1
        if self.refs[block] == 0:
            # hashed blocks go to the back so they survive longest for prefix reuse
            (self.free.append if self.hash_of[block] is not None else self.free.appendleft)(block)

    # -- sequences ---------------------------------------------------------------------------
    def _cached_prefix(self, tokens: list[int], cache_index: int) -> list[int]:
        """Blocks already holding a prefix of ``tokens``; never the whole input (one token must
        still run to produce logits)."""
        hits, prev = [], 0
        full_blocks = (len(tokens) - 1) // self.block_size
        for b in range(full_blocks):
            chunk = tuple(tokens[b * self.block_size : (b + 1) * self.block_size])
            h = block_hash(prev, chunk, cache_index)
            block = self.by_hash.get(h)
            if block is None:
                break
            hits.append(block)
            prev = h
        return hits

    def _plan(self, seq: Sequence) -> list[list[int]]:
        """Reusable prefix blocks per cache, trimmed so every cache agrees on the cached length.
        Prompt logprobs need every position computed, so those requests reuse nothing."""
        if seq.params.prompt_logprobs is not None:
            return [[] for _ in range(self.num_caches)]
        tokens = seq.all_ids if seq.max_hashed_tokens is None else seq.all_ids[: seq.max_hashed_tokens + 1]
        hits = [self._cached_prefix(tokens, c) for c in range(self.num_caches)]
        keep = min(len(h) for h in hits)
        return [h[:keep] for h in hits]

    def can_allocate(self, seq: Sequence) -> bool:
        total = self.blocks_for(seq.num_tokens)
        plan = self._plan(seq)
        from_free = sum(total - len(h) + sum(1 for b in h if self.refs[b] == 0) for h in plan)
        return from_free <= len(self.free)

    def allocate(self, seq: Sequence) -> None:
        """Give a waiting sequence blocks for all its current tokens, reusing cached prefix blocks."""
        total = self.blocks_for(seq.num_tokens)
        plan = self._plan(seq)
        seq.block_tables = [[self._take(b) for b in hits] + [self._take() for _ in range(total - len(hits))]
                            for hits in plan]
        seq.num_cached = len(plan[0]) * self.block_size
        seq.hashed_blocks = len(plan[0])
        seq.prefix_hit_tokens = seq.num_cached
        self.prefix_hit_tokens += seq.num_cached
        self.prefix_queried_tokens += seq.num_tokens

    def can_append(self, seq: Sequence) -> bool:
        """Room for every token of the sequence, the newly sampled one included."""
        needed = self.blocks_for(seq.num_tokens) - len(seq.block_tables[0])
        return needed * self.num_caches <= len(self.free) if needed > 0 else True

    def append(self, seq: Sequence) -> None:
        while len(seq.block_tables[0]) < self.blocks_for(seq.num_tokens):
            for table in seq.block_tables:
                table.append(self._take())

    def register_full_blocks(self, seq: Sequence) -> None:
        """Hash the blocks whose tokens are all computed so later prompts can reuse them."""
        hashable = seq.num_cached if seq.max_hashed_tokens is None else min(seq.num_cached, seq.max_hashed_tokens)
        full = hashable // self.block_size
        if full <= seq.hashed_blocks:
            return
        tokens = seq.all_ids
        for c, table in enumerate(seq.block_tables):
            prev = 0
            for b in range(full):  # the chain needs every earlier hash; blocks are few
                h = block_hash(prev, tuple(tokens[b * self.block_size : (b + 1) * self.block_size]), c)
                block = table[b]
                if b >= seq.hashed_blocks and self.hash_of[block] is None and h not in self.by_hash:
                    self.hash_of[block] = h
                    self.by_hash[h] = block
                prev = h
        seq.hashed_blocks = full

    def free_seq(self, seq: Sequence) -> None:
        for table in seq.block_tables:
            for block in reversed(table):
                self._release(block)
        seq.block_tables = [[] for _ in range(self.num_caches)]
        seq.num_cached = 0
        seq.hashed_blocks = 0
