"""A request's state as the engine tracks it: waiting -> running -> finished (with preemption)."""

from __future__ import annotations

import enum
import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch

from mistralrs.engine.core.sampler import SamplingParams
from mistralrs.engine.core.stop_strings import StopStringFilter


class SeqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass
class TokenLogprob:
    token: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class SeqEvent:
    """One sampled token's worth of output for a consumer."""

    seq_id: int
    index: int  # choice index within its request (n > 1)
    token: int | None
    text: str
    logprob: TokenLogprob | None = None
    finish_reason: str | None = None  # stop | length | abort
    prompt_logprobs: list[TokenLogprob | None] | None = None  # once, with the first token, when asked


_ids = itertools.count()


@dataclass(eq=False)
class Sequence:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[SeqEvent], None]
    index: int = 0
    detokenizer: Any = None
    generator: torch.Generator | None = None
    seq_id: int = field(default_factory=lambda: next(_ids))
    arrival: float = field(default_factory=time.monotonic)
    status: SeqStatus = SeqStatus.WAITING
    output_ids: list[int] = field(default_factory=list)
    # One block table per KV cache the model uses (X-LoRA keeps a second one for its scaling pass).
    block_tables: list[list[int]] = field(default_factory=lambda: [[]])
    num_cached: int = 0  # tokens whose K/V is in the cache
    hashed_blocks: int = 0  # leading blocks registered for prefix reuse
    prefix_hit_tokens: int = 0
    # Positions whose cached K/V are a function of the tokens alone; prefix reuse stops there
    # (X-LoRA's frozen scalings make later positions depend on where the prompt ended).
    max_hashed_tokens: int | None = None
    adapter_state: Any = None  # per-sequence state of the model's adapter (X-LoRA: frozen scalings)
    grammar: Any = None  # engine.structured.GrammarState when the output is constrained
    finish_reason: str | None = None
    stops: StopStringFilter = field(init=False)
    prompt_logprobs: list[TokenLogprob | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stops = StopStringFilter(self.params.stop)

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED

    @property
    def pending_tokens(self) -> int:
        """Tokens that still need a forward pass before the next sample."""
        return self.num_tokens - self.num_cached
