"""The OpenAI-compatible app: ``create_app(llm, serve_cfg)`` wires routes, auth, limits, errors and
metrics around one AsyncEngine, started and stopped with the app's lifespan."""

from __future__ import annotations

from typing import Any

from litestar import Litestar
from litestar.datastructures import State
from litestar.types import Message, Scope
from omegaconf import DictConfig, OmegaConf

from mistralrs.conf.schema import ServeConfig
from mistralrs.engine.core.async_engine import AsyncEngine

from mistralrs.engine.server.errors import handle_exception
from mistralrs.engine.server.routes_chat import chat_completions
from mistralrs.engine.server.routes_completions import completions
from mistralrs.engine.server.routes_ops import health, list_models, metrics, retrieve_model
from mistralrs.engine.server.routes_tokenize import detokenize, tokenize
from mistralrs.engine.server.state import ServerState

ROUTES = [chat_completions, completions, list_models, retrieve_model, tokenize, detokenize, health, metrics]


def create_app(llm: Any, serve_cfg: ServeConfig | DictConfig | None = None, *, engine: Any = None,
               replicas: Any = None) -> Litestar:
    """An app serving ``llm`` (a loaded :class:`mistralrs.engine.api.LLM`); ``serve_cfg`` defaults to
    ``llm.config.serve``. The engine thread starts with the app and stops (after
    ``shutdown_grace_seconds``) when it shuts down.

    The Ray backend (engine/scaleout) passes ``llm`` without weights, an ``engine`` with AsyncEngine's
    interface that forwards to the replicas, and ``replicas`` (health and per-replica metrics)."""
    cfg = serve_cfg if serve_cfg is not None else llm.config.serve
    if isinstance(cfg, DictConfig):
        cfg = OmegaConf.to_object(cfg)
    server = ServerState(llm=llm, cfg=cfg, engine=engine if engine is not None else AsyncEngine(llm.engine),
                         replicas=replicas)

    async def start_engine() -> None:
        server.engine.start()

    async def stop_engine() -> None:
        await server.engine.shutdown(cfg.shutdown_grace_seconds)

    # async on purpose: Litestar runs a sync hook in a worker thread, for every chunk sent
    async def count_response(message: Message, scope: Scope) -> None:
        if message["type"] == "http.response.start":
            endpoint = scope.get("path_template") or "unmatched"
            server.metrics.observe(scope.get("method", ""), endpoint, message["status"])

    return Litestar(
        route_handlers=ROUTES,
        state=State({"server": server}),
        on_startup=[start_engine],
        on_shutdown=[stop_engine],
        exception_handlers={Exception: handle_exception},
        before_send=[count_response],
        request_max_body_size=cfg.max_body_bytes,
        openapi_config=None,
        logging_config=None,
        debug=False,
    )
