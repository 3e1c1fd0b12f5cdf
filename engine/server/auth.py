"""Optional API key: ``Authorization: Bearer <serve.api_key>`` on the guarded routes (the /v1 API
and tokenize/detokenize); /health and /metrics stay open."""

from __future__ import annotations

import hmac

from litestar.connection import ASGIConnection
from litestar.handlers import BaseRouteHandler

from mistralrs.engine.server.errors import APIError


def require_api_key(connection: ASGIConnection, _: BaseRouteHandler) -> None:
    key = connection.app.state.server.cfg.api_key
    if not key:
        return
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise APIError(401, "missing API key: send it as 'Authorization: Bearer <key>'", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
    if not hmac.compare_digest(token.strip().encode(), str(key).encode()):
        raise APIError(401, "incorrect API key provided", code="invalid_api_key",
                       headers={"WWW-Authenticate": "Bearer"})
