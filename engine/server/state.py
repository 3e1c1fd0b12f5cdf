"""What every handler needs: the model, the running engine, the server's settings and counters."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from litestar import Request

from mistralrs.conf.schema import SamplingConfig, ServeConfig
from mistralrs.engine.core.async_engine import AsyncEngine

from mistralrs.engine.server.errors import APIError
from mistralrs.engine.server.metrics import RequestMetrics


@dataclass
class ServerState:
    llm: Any  # mistralrs.engine.api.LLM
    cfg: ServeConfig
    engine: AsyncEngine  # or the Ray backend's client, which has the same interface
    # the Ray backend's replica set (engine/scaleout/replica_set.py: health, per-replica metrics); None
    # for the local engine
    replicas: Any = None
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    started: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_name(self) -> str:
        return self.llm.name

    @property
    def tokenizer(self) -> Any:
        return self.llm.tokenizer

    @property
    def max_seq_len(self) -> int:
        return self.llm.max_seq_len

    @property
    def vocab_size(self) -> int:
        return self.llm.vocab_size

    @property
    def sampling_defaults(self) -> SamplingConfig:
        """What a request's omitted sampling fields take: the server's ``sampling.*`` settings."""
        return self.llm.config.sampling

    @property
    def max_waiting(self) -> int:
        return self.llm.config.engine.max_waiting

    def check_model(self, model: str | None) -> None:
        """OpenAI answers 404 for a model it does not serve; an omitted model means the served one."""
        if model and model != self.model_name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                           param="model", code="model_not_found")


def server_of(request: Request) -> ServerState:
    return request.app.state.server


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"
