"""Request bodies as msgspec Structs. Unknown fields are ignored (OpenAI clients send many); a field of
the wrong type is a 400 naming it.

Types msgspec cannot express as one union (``prompt``: a string, strings, token ids or lists of token
ids) stay ``Any`` here and are checked by the route.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

from mistralrs.engine.server.errors import APIError, invalid

T = TypeVar("T")


class StreamOptions(Struct, kw_only=True):
    include_usage: bool = False


class SamplingFields(Struct, kw_only=True):
    """What chat and completions requests share: the model, sampling and streaming."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    # vLLM-style extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = None
    stop_token_ids: list[int] | None = None
    return_tokens_as_token_ids: bool | None = None  # logprobs name tokens "token_id:<id>"
    # structured outputs (engine/structured/request_formats.py): OpenAI's shape and vLLM's
    response_format: Any = None
    structured_outputs: Any = None
    # tool calling: chat only (engine/tools); /v1/completions refuses them like the features below
    tools: Any = None
    tool_choice: Any = None
    # OpenAI features this server does not implement: refused by refuse_unsupported, never ignored
    functions: Any = None
    function_call: Any = None
    audio: Any = None
    modalities: Any = None
    prediction: Any = None
    web_search_options: Any = None
    store: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None
    service_tier: Any = None


# OpenAI request fields this server does not implement, and the values that ask for nothing (which
# are accepted). Any other value is a 400 naming the field: answering without the feature would look
# like success and be wrong. Fields that only describe the caller (user, metadata, safety_identifier,
# prompt_cache_key) are accepted and have no effect. The legacy functions/function_call are refused
# with a pointer to tools.
UNIMPLEMENTED = {
    "tools": (None, []),
    "functions": (None, []),
    "tool_choice": (None, "none"),
    "function_call": (None, "none"),
    "audio": (None,),
    "modalities": (None, ["text"]),
    "prediction": (None,),
    "web_search_options": (None,),
    "store": (None, False),
    "reasoning_effort": (None,),
    "verbosity": (None,),
    "service_tier": (None, "auto", "default"),
}


def refuse_unsupported(req: SamplingFields, implemented: tuple[str, ...] = ()) -> None:
    """A 400 naming the first requested feature the server cannot honour (audio, ...); the route names
    the ones it implements (chat: tools, tool_choice)."""
    for field, harmless in UNIMPLEMENTED.items():
        value = getattr(req, field)
        if field not in implemented and not any(value == ok for ok in harmless):
            hint = " (use tools and tool_choice)" if field in ("functions", "function_call") else ""
            raise invalid(f"{field}={_short(value)} is not supported by this server{hint} (accepted: "
                          f"{', '.join(_short(ok) for ok in harmless)})", field)


def _short(value: Any) -> str:
    text = "null" if value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[dict[str, Any]]
    parallel_tool_calls: Any = None
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: Any
    echo: bool | None = False
    logprobs: int | None = None
    suffix: str | None = None
    best_of: int | None = None


class TokenizeRequest(Struct, kw_only=True):
    model: str | None = None
    prompt: str | None = None
    messages: list[dict[str, Any]] | None = None  # tokenize a chat as the chat endpoint would
    tools: Any = None  # with messages: the prompt the chat endpoint renders with these tools
    tool_choice: Any = None
    parallel_tool_calls: Any = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(Struct, kw_only=True):
    model: str | None = None
    tokens: list[int]


_AT = re.compile(r"at `\$\.([A-Za-z_][A-Za-z0-9_]*)")
_MISSING = re.compile(r"missing required field `([A-Za-z_][A-Za-z0-9_]*)`")


def decode_body(body: bytes, type_: type[T]) -> T:
    """The request body as ``type_``; 400 for bad JSON, 400 naming the field for a wrong type."""
    if not body.strip():
        raise invalid("the request body is empty; expected a JSON object")
    try:
        return msgspec.json.decode(body, type=type_)
    except RecursionError:  # msgspec recurses per nesting level, even inside fields we ignore
        raise invalid("the request body is nested too deeply") from None
    except msgspec.ValidationError as exc:
        text = str(exc)
        found = _AT.search(text) or _MISSING.search(text)
        raise invalid(f"invalid request: {text}", found.group(1) if found else None) from None
    except msgspec.DecodeError as exc:
        raise invalid(f"the request body is not valid JSON: {exc}") from None


async def request_json(request: Any, type_: type[T]) -> T:
    """The body of a JSON request as ``type_``. Other content types get a 415: a web page may POST
    ``text/plain`` to a localhost server without a CORS preflight, and must not get compute for it."""
    content_type = request.headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise APIError(415, f"the request body must be JSON sent as Content-Type: application/json "
                            f"(got {content_type or 'none'!r})", code="unsupported_media_type")
    return decode_body(await request.body(), type_)
