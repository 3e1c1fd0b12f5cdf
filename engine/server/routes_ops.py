"""``GET /v1/models``, ``GET /v1/models/{model}``, ``GET /health`` and ``GET /metrics``."""

from __future__ import annotations

import msgspec
from litestar import Request, Response, get

from mistralrs.engine.server.auth import require_api_key
from mistralrs.engine.server.metrics import render
from mistralrs.engine.server.output import json_response
from mistralrs.engine.server.state import ServerState, server_of


def _model_card(server: ServerState) -> dict:
    card = {"id": server.model_name, "object": "model", "created": server.started, "owned_by": "mistralrs",
            "max_model_len": server.max_seq_len}
    adapter = server.llm.adapter_info  # LoRA / X-LoRA: kind, adapter names
    if adapter:
        card["adapter"] = adapter
    return card


@get("/v1/models", guards=[require_api_key])
async def list_models(request: Request) -> Response:
    return json_response({"object": "list", "data": [_model_card(server_of(request))]})


@get("/v1/models/{model:str}", guards=[require_api_key])
async def retrieve_model(request: Request) -> Response:
    server = server_of(request)
    server.check_model(request.path_params["model"])
    return json_response(_model_card(server))


@get("/health")
async def health(request: Request) -> Response:
    """``{"status": "ok"}``; with replicas (serve.backend=ray) also ``degraded`` while fewer than
    serve.replicas are up (still 200: requests are served) and ``unavailable`` (503) with none up."""
    replicas = server_of(request).replicas
    if replicas is None:
        return json_response({"status": "ok"})
    report = replicas.health()
    return Response(msgspec.json.encode(report), status_code=503 if report["status"] == "unavailable" else 200,
                    media_type="application/json")


@get("/metrics")
async def metrics(request: Request) -> Response:
    """The engine's counters; with replicas, summed over them, followed by per-replica series."""
    server = server_of(request)
    stats = await server.engine.stats()
    text = render(server.metrics, stats, server.model_name)
    if server.replicas is not None:
        text += server.replicas.metrics_text(server.model_name)
    return Response(text, media_type="text/plain; version=0.0.4; charset=utf-8")
