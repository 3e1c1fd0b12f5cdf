"""OpenAI request fields -> the engine's SamplingParams, with the server's size limits.

Fields a request omits take the server's ``sampling.*`` settings, as llama-server's ``--temp``/``-n``
do: ``temperature``, ``top_p``, ``top_k``, ``min_p`` and ``max_tokens`` (capped by the room left in
the context). The rest follow OpenAI: n 1, no penalties, no stop sequences.
"""

from __future__ import annotations

import asyncio
import dataclasses

from mistralrs.conf.schema import SamplingConfig, ServeConfig
from mistralrs.engine.core.context_policy import completion_budget
from mistralrs.engine.core.sampler import SamplingParams
from mistralrs.engine.structured.errors import GrammarError
from mistralrs.engine.structured.probe import probe_grammar
from mistralrs.engine.structured.request_formats import RequestFormatError, grammar_for_request

from mistralrs.engine.server.errors import invalid
from mistralrs.engine.server.schemas import SamplingFields

SEED_LIMIT = 2**63 - 1024  # torch generators take 64-bit seeds; choice i uses seed + i


def base_params(req: SamplingFields, cfg: ServeConfig, defaults: SamplingConfig, *, max_waiting: int,
                logprobs: int | None = None, prompt_logprobs: int | None = None) -> SamplingParams:
    """Everything but ``max_tokens`` (which depends on each prompt's length: see :func:`for_prompt`)."""
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    stop = [s for s in stop if s]  # an empty stop string would match everywhere; ignore it as vLLM does
    if len(stop) > cfg.max_stop:
        raise invalid(f"at most {cfg.max_stop} stop sequences are allowed, got {len(stop)}", "stop")
    if any(len(s) > cfg.max_stop_chars for s in stop):
        raise invalid(f"stop sequences must be at most {cfg.max_stop_chars} characters long", "stop")
    stop_ids = list(req.stop_token_ids or [])
    if len(stop_ids) > cfg.max_stop:
        raise invalid(f"at most {cfg.max_stop} stop_token_ids are allowed", "stop_token_ids")
    bias = req.logit_bias or {}
    if len(bias) > cfg.max_logit_bias:
        raise invalid(f"logit_bias may have at most {cfg.max_logit_bias} entries, got {len(bias)}", "logit_bias")
    # only ASCII decimal ids: int() would also take "1_0", " 7" and other scripts' digits ("٣")
    if not all(k.isascii() and k.isdigit() for k in bias):
        raise invalid("logit_bias keys must be token ids (decimal integers written as strings)", "logit_bias")
    logit_bias = {int(k): float(v) for k, v in bias.items()}
    n = 1 if req.n is None else req.n
    if n > max_waiting:
        raise invalid(f"n={n} exceeds the server's queue capacity ({max_waiting}, engine.max_waiting)", "n")
    if req.seed is not None and not -SEED_LIMIT <= req.seed <= SEED_LIMIT:
        raise invalid(f"seed must be in [{-SEED_LIMIT}, {SEED_LIMIT}]", "seed")
    grammar = None
    if req.response_format is not None or req.structured_outputs is not None:
        try:
            grammar = grammar_for_request(req.response_format, req.structured_outputs)
        except RequestFormatError as exc:
            raise invalid(str(exc), exc.param) from None
    return SamplingParams(
        grammar=grammar,
        max_tokens=1,  # placeholder, see for_prompt
        temperature=defaults.temperature if req.temperature is None else req.temperature,
        top_k=defaults.top_k if req.top_k is None else 0 if req.top_k == -1 else req.top_k,  # vLLM's -1: off
        top_p=defaults.top_p if req.top_p is None else req.top_p,
        min_p=defaults.min_p if req.min_p is None else req.min_p,
        seed=req.seed,
        ignore_eos=bool(req.ignore_eos),
        stop=stop,
        stop_token_ids=stop_ids,
        n=n,
        presence_penalty=req.presence_penalty or 0.0,
        frequency_penalty=req.frequency_penalty or 0.0,
        repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
        logit_bias=logit_bias,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


async def probe_request_grammar(params: SamplingParams, req: SamplingFields, tokenizer) -> None:
    """A constrained request's first mask, on a worker thread: a grammar too complex to match is the
    request's 400 (naming its field), not a stall of the compute thread (engine/structured/probe.py)."""
    if params.grammar is None:
        return
    try:
        await asyncio.to_thread(probe_grammar, params.grammar, tokenizer)
    except GrammarError as exc:
        field = ("tools" if params.grammar.kind == "tool_choice" else
                 "structured_outputs" if req.structured_outputs is not None else "response_format")
        raise invalid(str(exc), field) from None


def for_prompt(base: SamplingParams, prompt_len: int, requested: int | None, *, max_seq_len: int,
               default_max_tokens: int, max_tokens_param: str) -> SamplingParams:
    """``base`` with the max_tokens this prompt gets (see context_policy.py: the engine refuses a
    context overflow when the request is added, and ``engine_errors`` makes that OpenAI's 400)."""
    if requested is not None and requested < 1:
        raise invalid(f"{max_tokens_param} must be >= 1, got {requested}", max_tokens_param)
    return dataclasses.replace(base, max_tokens=completion_budget(prompt_len, max_seq_len, requested,
                                                                  default_max_tokens))
