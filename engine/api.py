"""The Python API: the same machinery the CLI drives, as objects.

    import mistralrs
    llm = mistralrs.load("model=smollm2", "model.dtype=float32")
    print(llm.generate("The three primary colors are", max_tokens=32, temperature=0))
    for piece in llm.chat([{"role": "user", "content": "Hi"}], stream=True):
        print(piece, end="")
    llm.chat(messages, tools=[...], tool_choice="required")  # -> {"role": "assistant", "tool_calls": [...]}
"""

from __future__ import annotations

import dataclasses
from collections import deque
from typing import Any, Iterator, Sequence

import torch
from omegaconf import DictConfig

from mistralrs.conf.schema import Config

from mistralrs.engine.chat_prompts import ChatPrompts
from mistralrs.engine.core.compute_thread import compute_thread
from mistralrs.engine.core.context_policy import completion_budget
from mistralrs.engine.config import compose_config, resolve_sampling, to_schema
from mistralrs.engine.core.llm_engine import LLMEngine
from mistralrs.engine.loading.loader import LoadedModel, load_model, weights_mode
from mistralrs.engine.core.model_runner import full_logits
from mistralrs.engine.core.sampler import SamplingParams
from mistralrs.engine.core.sequence import SeqEvent
from mistralrs.engine.tools.calls import ContentDelta
from mistralrs.engine.tools.plan import ToolPlan, marker_token_texts

_SAMPLING_FIELDS = {f.name for f in dataclasses.fields(SamplingParams)}


def sampling_from(defaults: Any, overrides: dict[str, Any]) -> SamplingParams:
    """``overrides``: SamplingParams fields, plus ``response_format`` (OpenAI's shape) or
    ``structured_outputs`` (vLLM's) to constrain the output (engine/structured/request_formats.py)."""
    overrides = dict(overrides)
    formats = {key: overrides.pop(key) for key in ("response_format", "structured_outputs") if key in overrides}
    if formats:
        from mistralrs.engine.structured.request_formats import grammar_for_request

        overrides["grammar"] = grammar_for_request(**formats)
    unknown = set(overrides) - _SAMPLING_FIELDS
    if unknown:
        raise TypeError(f"unknown sampling parameter(s): {', '.join(sorted(unknown))}")
    base = {name: getattr(defaults, name) for name in _SAMPLING_FIELDS if hasattr(defaults, name)}
    base["stop"] = list(base.get("stop") or [])
    base.update(overrides)
    if isinstance(base["stop"], str):
        base["stop"] = [base["stop"]]
    return SamplingParams(**base).validate()


class LLM(ChatPrompts):
    """A loaded model with its tokenizer; one generation at a time. Its computation (loading included)
    runs on the process's compute thread, whichever thread calls (see compute_thread.py)."""

    def __init__(self, config: Config, loaded: LoadedModel):
        # unset sampling values: the model file's recommendation, else the built-in defaults
        recommended = loaded.checkpoint.recommended_sampling()
        sampling = resolve_sampling(config.sampling, recommended, str(loaded.checkpoint.path))
        self.config = dataclasses.replace(config, sampling=sampling)
        self.loaded = loaded
        self.compute = compute_thread()
        exact = weights_mode(config.model) == "dense"
        self.engine = self.compute.call(lambda: LLMEngine(loaded, config.engine, exact=exact))

    @classmethod
    def from_config(cls, cfg: DictConfig | Config) -> "LLM":
        config = to_schema(cfg)
        if config.engine.threads:
            torch.set_num_threads(config.engine.threads)
        loaded = compute_thread().call(lambda: load_model(config.model, quant=config.quant, adapter=config.adapter))
        return cls(config, loaded)

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def max_seq_len(self) -> int:
        """Tokens of context (prompt plus output) one sequence may hold."""
        return self.loaded.max_seq_len

    @property
    def vocab_size(self) -> int:
        """The model's output width (token ids run below it)."""
        return self.loaded.config.vocab_size

    @property
    def adapter_info(self) -> dict | None:
        """Applied LoRA / X-LoRA adapters (kind, names), or None."""
        return self.loaded.model.adapter_info

    @property
    def name(self) -> str:
        return self.config.model.name

    def generate(self, prompt: str | Sequence[str], *, stream: bool = False, **sampling: Any):
        """Complete raw text. A list of prompts gives a list of completions (or, streamed,
        ``(index, piece)`` pairs)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        ids = [self.tokenizer.encode(p, add_special=True, parse_special=False) for p in prompts]
        events = self._events(ids, sampling)
        if stream:
            return (piece for _, piece in events) if isinstance(prompt, str) else events
        texts = ["" for _ in prompts]
        for index, piece in events:
            texts[index] += piece
        return texts[0] if isinstance(prompt, str) else texts

    def chat(self, messages: list[dict[str, Any]], *, stream: bool = False, tools: Any = None,
             tool_choice: Any = None, parallel_tool_calls: Any = None, **sampling: Any):
        """One assistant turn for a conversation, rendered with the model's chat template: its text, or
        streamed, its pieces.

        With ``tools`` (OpenAI's shape, also ``tool_choice`` and ``parallel_tool_calls``) the turn is a
        message dict ``{"role": "assistant", "content": str | None, "tool_calls": [...]}`` as in an
        OpenAI response, and a stream yields :class:`~mistralrs.engine.tools.ContentDelta` and
        :class:`~mistralrs.engine.tools.ToolCallDelta` (engine/tools/)."""
        plan = self.tool_plan(tools, tool_choice, parallel_tool_calls)
        if plan.grammar is not None:
            if {"response_format", "structured_outputs", "grammar"} & set(sampling):
                raise ValueError("response_format/structured_outputs/grammar cannot be combined with a required tool call")
            sampling["grammar"] = plan.grammar
        ids = self.chat_prompt_ids(messages, plan)
        if plan.request is None and tools is None:
            pieces = (piece for _, piece in self._events([ids], sampling))
            return pieces if stream else "".join(pieces)
        deltas = self._tool_deltas(ids, sampling, plan) if plan.request is not None else (
            ContentDelta(piece) for _, piece in self._events([ids], sampling))  # tool_choice "none"
        if stream:
            return deltas
        message: dict[str, Any] = {"role": "assistant", "content": ""}
        calls = []
        for delta in deltas:
            if isinstance(delta, ContentDelta):
                message["content"] += delta.text
            elif delta.id is not None:
                calls.append({"id": delta.id, "type": "function", "function": {"name": delta.name, "arguments": ""}})
            else:
                calls[delta.index]["function"]["arguments"] += delta.arguments
        if calls:
            message["tool_calls"] = calls
            message["content"] = message["content"] if message["content"].strip() else None
        return message

    def _tool_deltas(self, ids: list[int], sampling: dict[str, Any], plan: ToolPlan):
        parser = plan.new_parser()
        markers = marker_token_texts(self.tokenizer, plan.parser)
        for _, event in self.run([ids], **sampling):
            text = markers.get(event.token, "") + (event.text or "") if markers else event.text
            if text:
                yield from parser.feed(text)
        yield from parser.finish()

    def logits(self, token_ids: Sequence[int]) -> torch.Tensor:
        """Logits at every position for one full sequence: ``[len, vocab]`` float32 on the CPU."""
        ids = list(token_ids)
        if not ids:
            raise ValueError("logits() needs at least one token")
        if len(ids) > self.loaded.max_seq_len:
            raise ValueError(f"{len(ids)} tokens exceed the context of {self.loaded.max_seq_len}")
        return self.compute.call(lambda: full_logits(self.loaded.model, ids, self.loaded.dtype, self.loaded.device).cpu())

    def run(self, prompts: list[list[int]], **sampling: Any) -> Iterator[tuple[int, SeqEvent]]:
        """Generate for token-id prompts through the engine; yields ``(prompt index, event)`` per
        sampled token. ``max_tokens`` is clamped to the room left in the context; a prompt that
        fills the context alone raises :class:`~mistralrs.engine.core.context_policy.ContextLengthExceeded`
        (a ``ValueError``; raise ``model.max_seq_len`` if the model allows more), and so do
        ``generate`` and ``chat``, which run through here."""
        params = sampling_from(self.config.sampling, sampling)
        events: deque[tuple[int, SeqEvent]] = deque()
        seqs = []
        call = self.compute.call
        try:
            for i, ids in enumerate(prompts):
                # the API's max_tokens is a cap, never an error: it gets what fits, as an omitted one would
                budget = completion_budget(len(ids), self.loaded.max_seq_len, None, params.max_tokens)
                p = dataclasses.replace(params, max_tokens=budget, n=1)
                seqs += call(lambda p=p, i=i, ids=ids: self.engine.add_request(ids, p, lambda ev: events.append((i, ev))))
            while any(not s.is_finished for s in seqs):
                call(self.engine.step)
                while events:
                    yield events.popleft()
            while events:
                yield events.popleft()
        finally:
            call(lambda: [self.engine.abort(s) for s in seqs])

    def _events(self, ids: list[list[int]], sampling: dict[str, Any]) -> Iterator[tuple[int, str]]:
        for index, event in self.run(ids, **sampling):
            if event.text:
                yield index, event.text


def load(*overrides: str, **kwargs: Any) -> LLM:
    """Compose the config from CLI-style overrides (``"model=llama"``, ``"model.dtype=float32"``) and
    load the model. Keyword arguments become overrides too: ``load(model="gemma3")``."""
    extra = [f"{key.replace('__', '.')}={value}" for key, value in kwargs.items()]
    return LLM.from_config(compose_config([*overrides, *extra]))
