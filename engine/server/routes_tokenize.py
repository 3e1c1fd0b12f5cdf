"""``POST /tokenize`` and ``POST /detokenize`` in vLLM's shapes.

``{"model", "prompt", "add_special_tokens": true}`` -> ``{"tokens", "count", "max_model_len"}``
(``messages`` instead of ``prompt`` tokenizes a chat as /v1/chat/completions would);
``{"model", "tokens"}`` -> ``{"prompt"}``. Text is tokenized as /v1/completions does: BOS as the model
wants it (with ``add_special_tokens``), special-token text parsed.
"""

from __future__ import annotations

import asyncio

from litestar import Request, Response, post

from mistralrs.engine.server.auth import require_api_key
from mistralrs.engine.server.errors import engine_errors, invalid
from mistralrs.engine.server.output import json_response
from mistralrs.engine.server.schemas import DetokenizeRequest, TokenizeRequest, request_json
from mistralrs.engine.server.state import server_of


@post("/tokenize", guards=[require_api_key], status_code=200)
async def tokenize(request: Request) -> Response:
    server = server_of(request)
    req = await request_json(request, TokenizeRequest)
    server.check_model(req.model)
    if (req.prompt is None) == (req.messages is None):
        raise invalid("give exactly one of prompt (text) or messages (a chat)", "prompt")
    if req.messages is None and (req.tools is not None or req.tool_choice is not None):
        raise invalid("tools are rendered with messages (a chat), not with a prompt", "tools")
    tok = server.tokenizer
    if req.messages is not None:
        if len(req.messages) > server.cfg.max_messages:
            raise invalid(f"at most {server.cfg.max_messages} messages are allowed", "messages")
        with engine_errors("messages"):
            tools = server.llm.tool_plan(req.tools, req.tool_choice, req.parallel_tool_calls)
            ids = await asyncio.to_thread(server.llm.chat_prompt_ids, req.messages, tools)
    else:
        ids = await asyncio.to_thread(tok.encode, req.prompt, add_special=req.add_special_tokens, parse_special=True)
    return json_response({"tokens": ids, "count": len(ids), "max_model_len": server.max_seq_len})


@post("/detokenize", guards=[require_api_key], status_code=200)
async def detokenize(request: Request) -> Response:
    server = server_of(request)
    req = await request_json(request, DetokenizeRequest)
    server.check_model(req.model)
    if not all(0 <= t < server.vocab_size for t in req.tokens):
        raise invalid(f"token ids must be in [0, {server.vocab_size})", "tokens")
    return json_response({"prompt": server.tokenizer.decode(req.tokens)})
