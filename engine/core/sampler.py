"""Batched token sampling: each row of the logits has its own parameters and random generator.

Order per row, as vLLM and the OpenAI API define it: logit bias and penalties adjust the logits;
logprobs are reported from the model's raw distribution; then temperature, top-k, top-p and min-p
filter what a draw may pick. Greedy rows (temperature 0) take the argmax of the adjusted logits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from mistralrs.conf.schema import BUILTIN_SAMPLING, SamplingConfig

MAX_TOP_LOGPROBS = 20
# Temperatures below this sample greedily (as vLLM's _SAMPLING_EPS): dividing float32 logits by 1e-45
# overflows to inf and the softmax to NaN.
GREEDY_BELOW_TEMPERATURE = 1e-5
MIN_REPETITION_PENALTY = 0.01  # below it, dividing logits overflows float32


@dataclass
class SamplingParams:
    # defaults: the configuration's (conf/schema.py), so that each is written once
    max_tokens: int = SamplingConfig.max_tokens
    temperature: float = BUILTIN_SAMPLING["temperature"]
    top_k: int = BUILTIN_SAMPLING["top_k"]  # 0: off
    top_p: float = BUILTIN_SAMPLING["top_p"]
    min_p: float = BUILTIN_SAMPLING["min_p"]
    seed: int | None = SamplingConfig.seed
    ignore_eos: bool = SamplingConfig.ignore_eos
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    n: int = 1
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k best
    prompt_logprobs: int | None = None  # the same for every prompt position (echo)
    # A compiled grammar (engine.structured.CompiledGrammar) the output must follow; each sequence
    # gets its own matcher. Logprobs are then reported from the masked distribution.
    grammar: Any = None

    def validate(self, vocab_size: int | None = None) -> "SamplingParams":
        """Raise ValueError naming the offending field (the server maps it to `param`)."""
        checks = [
            ("max_tokens", self.max_tokens >= 1, "must be >= 1"),
            ("temperature", 0 <= self.temperature <= 100, "must be in [0, 100]"),
            ("top_k", 0 <= self.top_k < 2**31, "must be in [0, 2^31)"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("min_p", 0 <= self.min_p <= 1, "must be in [0, 1]"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "stop strings must be non-empty strings"),
            ("n", 1 <= self.n <= 128, "must be in [1, 128]"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("repetition_penalty", MIN_REPETITION_PENALTY <= self.repetition_penalty <= 10,
             f"must be in [{MIN_REPETITION_PENALTY}, 10]"),
            ("logit_bias", all(-100 <= v <= 100 for v in self.logit_bias.values()), "values must be in [-100, 100]"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= MAX_TOP_LOGPROBS,
             f"must be in [0, {MAX_TOP_LOGPROBS}]"),
            ("prompt_logprobs", self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS,
             f"must be in [0, {MAX_TOP_LOGPROBS}]"),
        ]
        if vocab_size is not None:
            in_vocab = lambda ids: all(0 <= int(t) < vocab_size for t in ids)  # noqa: E731
            checks.append(("logit_bias", in_vocab(self.logit_bias), f"token ids must be in [0, {vocab_size})"))
            checks.append(("stop_token_ids", in_vocab(self.stop_token_ids), f"token ids must be in [0, {vocab_size})"))
        for name, ok, message in checks:
            if not ok:
                raise InvalidSamplingParam(name, f"{name} {message}")
        return self

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_BELOW_TEMPERATURE or self.top_k == 1

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)


class InvalidSamplingParam(ValueError):
    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


@dataclass
class SampleRow:
    """What the sampler needs to know about one sequence this step."""

    params: SamplingParams
    generator: torch.Generator | None
    prompt_ids: list[int]
    output_ids: list[int]


@dataclass
class Sampled:
    tokens: list[int]
    logprobs: list[tuple[float, list[tuple[int, float]]] | None]  # (chosen logprob, top-k pairs) per row


class Sampler:
    def __call__(self, logits: torch.Tensor, rows: list[SampleRow]) -> Sampled:
        logits = logits.float()
        want_logprobs = [r.params.logprobs is not None for r in rows]
        raw_logprobs = logits.log_softmax(dim=-1) if any(want_logprobs) else None
        logits = self._adjust(logits, rows)
        tokens = logits.argmax(dim=-1)
        random_rows = [i for i, r in enumerate(rows) if not r.params.greedy]
        if random_rows:
            index = torch.tensor(random_rows, device=logits.device)
            probs = filtered_probs(logits[index], [rows[i].params for i in random_rows])
            for j, i in enumerate(random_rows):
                tokens[i] = torch.multinomial(probs[j], 1, generator=rows[i].generator).squeeze(0)
        chosen = tokens.tolist()
        out_logprobs: list = [None] * len(rows)
        if raw_logprobs is not None:
            for i, r in enumerate(rows):
                if r.params.logprobs is not None:
                    out_logprobs[i] = token_logprobs(raw_logprobs[i], chosen[i], r.params.logprobs)
        return Sampled(chosen, out_logprobs)

    @staticmethod
    def _adjust(logits: torch.Tensor, rows: list[SampleRow]) -> torch.Tensor:
        touched = [i for i, r in enumerate(rows) if r.params.logit_bias or r.params.penalized]
        if not touched:
            return logits
        logits = logits.clone()
        for i in touched:
            p = rows[i].params
            row = logits[i]
            if p.logit_bias:
                ids = torch.tensor([int(t) for t in p.logit_bias], device=row.device)
                row.index_add_(0, ids, torch.tensor(list(p.logit_bias.values()), device=row.device, dtype=row.dtype))
            if p.repetition_penalty != 1.0:
                seen = torch.tensor(sorted(set(rows[i].prompt_ids) | set(rows[i].output_ids)), device=row.device,
                                    dtype=torch.long)
                if seen.numel():
                    vals = row[seen]
                    row[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
            if (p.presence_penalty or p.frequency_penalty) and rows[i].output_ids:
                out = torch.tensor(rows[i].output_ids, device=row.device, dtype=torch.long)
                counts = torch.bincount(out, minlength=row.shape[0]).to(row.dtype)
                row -= counts * p.frequency_penalty + (counts > 0).to(row.dtype) * p.presence_penalty
        return logits


def token_logprobs(logprobs: torch.Tensor, chosen: int, k: int) -> tuple[float, list[tuple[int, float]]]:
    top: list[tuple[int, float]] = []
    if k:
        values, ids = logprobs.topk(k)
        # a grammar may allow fewer than k tokens: the masked ones (-inf) are not alternatives
        top = [(i, v) for i, v in zip(ids.tolist(), values.tolist()) if v != float("-inf")]
    return float(logprobs[chosen]), top


def filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    device = logits.device
    temperature = torch.tensor([p.temperature for p in params], device=device).unsqueeze(1)
    logits = logits / temperature
    top_k = [p.top_k for p in params]
    if any(top_k):
        sorted_desc = logits.sort(dim=-1, descending=True).values
        vocab = logits.shape[-1]
        k = torch.tensor([min(k, vocab) if k > 0 else vocab for k in top_k], device=device)
        kth = sorted_desc.gather(1, (k - 1).unsqueeze(1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    top_p = torch.tensor([p.top_p for p in params], device=device).unsqueeze(1)
    if (top_p < 1).any():
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(dim=-1) - sorted_probs  # mass of strictly better tokens
        drop_sorted = before >= top_p  # keep the smallest prefix reaching top_p
        drop_sorted[:, 0] = False  # and always the best token (a top_p that rounds to 0 in float32)
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        probs = probs.masked_fill(drop, 0.0)
    min_p = torch.tensor([p.min_p for p in params], device=device).unsqueeze(1)
    if (min_p > 0).any():
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
    return probs / probs.sum(dim=-1, keepdim=True)


def make_generator(seed: int | None, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g
