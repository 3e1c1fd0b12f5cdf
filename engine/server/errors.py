"""Errors in the OpenAI shape: ``{"error": {"message", "type", "param", "code"}}`` with the right status.

Handlers raise :class:`APIError`; :func:`engine_errors` translates what the engine refuses with; the
app-level handler :func:`handle_exception` renders everything, Litestar's own routing errors (404,
405, 413) and unexpected exceptions (500, logged) included.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from typing import Iterator

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException

from mistralrs.engine.core.async_engine import EngineClosed, EngineUnavailable
from mistralrs.engine.core.context_policy import ContextLengthExceeded
from mistralrs.engine.core.sampler import InvalidSamplingParam
from mistralrs.engine.core.scheduler import QueueFull
from mistralrs.engine.tokenizer.chat_template import ChatTemplateCancelled, ChatTemplateError
from mistralrs.engine.tools.request import ToolRequestError

log = logging.getLogger(__name__)


class APIError(Exception):
    def __init__(self, status: int, message: str, *, type: str | None = None, param: str | None = None,
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")
        self.param = param
        self.code = code
        self.headers = headers or {}


class ClientDisconnected(Exception):
    """The client went away before its response was ready (logged as status 499, sent to nobody)."""


def invalid(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def error_json(err: APIError) -> dict:
    return {"error": {"message": err.message, "type": err.type, "param": err.param, "code": err.code}}


def error_response(err: APIError) -> Response:
    return Response(msgspec.json.encode(error_json(err)), status_code=err.status, headers=err.headers,
                    media_type="application/json")


@contextmanager
def engine_errors(prompt_param: str, param_names: dict[str, str] | None = None,
                  retry_after: int = 1) -> Iterator[None]:
    """Turn the engine's refusals into API errors. ``param_names`` maps SamplingParams field names
    to the request's own (e.g. ``logprobs`` -> ``top_logprobs`` for chat)."""
    names = param_names or {}
    try:
        yield
    except InvalidSamplingParam as exc:
        raise invalid(str(exc), names.get(exc.param, exc.param)) from None
    except ContextLengthExceeded as exc:
        message = exc.naming(names.get("max_tokens", "max_tokens"))
        raise invalid(message, prompt_param, "context_length_exceeded") from None
    except QueueFull as exc:
        raise APIError(503, f"the server is busy: {exc}; retry later", code="queue_full",
                       headers={"Retry-After": str(retry_after)}) from None
    except (EngineClosed, ChatTemplateCancelled) as exc:
        raise APIError(503, str(exc), code="shutting_down", headers={"Retry-After": str(retry_after)}) from None
    except EngineUnavailable as exc:
        raise APIError(503, str(exc), code="engine_unavailable", headers={"Retry-After": str(retry_after)}) from None
    except ChatTemplateError as exc:
        raise invalid(str(exc), "messages") from None
    except ToolRequestError as exc:
        raise invalid(str(exc), exc.param) from None
    except ValueError as exc:  # empty prompt, token ids out of range, ...
        raise invalid(str(exc), prompt_param) from None


_HTTP_CODES = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}


def _from_http_exception(request: Request, exc: HTTPException) -> APIError:
    status = exc.status_code
    headers = dict(exc.headers or {})
    if status == 404:
        message = f"no such route: {request.method} {request.url.path}"
    elif status == 405:
        allowed = headers.get("allow") or headers.get("Allow")
        message = f"method {request.method} not allowed on {request.url.path}"
        if allowed:
            message += f" (allowed: {allowed})"
    elif status == 413:
        limit = request.app.state.server.cfg.max_body_bytes
        message = f"the request body exceeds the server's limit of {limit} bytes (serve.max_body_bytes)"
    else:
        message = str(exc.detail)
    return APIError(status, message, code=_HTTP_CODES.get(status), headers=headers)


def handle_exception(request: Request, exc: Exception) -> Response:
    if isinstance(exc, APIError):
        return error_response(exc)
    if isinstance(exc, ClientDisconnected):
        return Response(b"", status_code=499)
    if isinstance(exc, HTTPException):
        return error_response(_from_http_exception(request, exc))
    log.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(APIError(500, f"internal server error ({type(exc).__name__})", code="internal_error"))
