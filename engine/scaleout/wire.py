"""What travels between the ingress and a replica besides SeqEvents and SamplingParams.

The engine's refusals (queue full, context too long, a bad parameter) do not survive pickling with
their fields (``InvalidSamplingParam.param``, ``ContextLengthExceeded.template``), so a replica sends a
:class:`Refusal` and the ingress raises the original exception again, which the routes turn into the
same HTTP error as with the local engine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mistralrs.conf.schema import SamplingConfig
from mistralrs.engine.core.async_engine import EngineClosed
from mistralrs.engine.core.context_policy import ContextLengthExceeded
from mistralrs.engine.core.sampler import InvalidSamplingParam
from mistralrs.engine.core.scheduler import QueueFull

# what AsyncEngine.generate raises before its first event (InvalidSamplingParam and
# ContextLengthExceeded are ValueErrors)
REFUSED = (QueueFull, EngineClosed, ValueError)


@dataclass(frozen=True)
class Refusal:
    kind: str  # queue_full | closed | context_length | invalid_param | invalid
    message: str  # ContextLengthExceeded: its template
    param: str | None = None

    @classmethod
    def of(cls, exc: BaseException) -> "Refusal":
        if isinstance(exc, QueueFull):
            return cls("queue_full", str(exc))
        if isinstance(exc, EngineClosed):
            return cls("closed", str(exc))
        if isinstance(exc, ContextLengthExceeded):
            return cls("context_length", exc.template)
        if isinstance(exc, InvalidSamplingParam):
            return cls("invalid_param", str(exc), exc.param)
        return cls("invalid", str(exc))

    def exception(self) -> Exception:
        if self.kind == "queue_full":
            return QueueFull(self.message)
        if self.kind == "closed":
            return EngineClosed(self.message)
        if self.kind == "context_length":
            return ContextLengthExceeded(self.message)
        if self.kind == "invalid_param":
            return InvalidSamplingParam(self.param or "", self.message)
        return ValueError(self.message)


@dataclass(frozen=True)
class ReplicaDescription:
    """What a replica tells the ingress about itself and its model: the ingress's routes need the
    model's limits and resolved sampling defaults, which only a loaded model knows."""

    pid: int
    host: str
    max_seq_len: int
    vocab_size: int
    adapter_info: Any  # dict | None
    sampling: SamplingConfig  # sampling.* with the model file's recommendations filled in
