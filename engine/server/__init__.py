"""The OpenAI-compatible HTTP server (Litestar on uvicorn); ``mistralrs task=serve`` runs it."""

from mistralrs.engine.server.app import create_app

__all__ = ["create_app"]
