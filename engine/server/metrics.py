"""``GET /metrics``: Prometheus text exposition of request counts and the engine's counters."""

from __future__ import annotations

from collections import Counter

from mistralrs.engine.core.llm_engine import EngineStats

PREFIX = "mistralrs"


class RequestMetrics:
    """HTTP responses counted by endpoint (the route's path template) and status code."""

    def __init__(self) -> None:
        self.responses: Counter[tuple[str, str, int]] = Counter()

    def observe(self, method: str, endpoint: str, status: int) -> None:
        self.responses[(method, endpoint, status)] += 1


def label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def metric(lines: list[str], name: str, kind: str, help_text: str, samples: list[tuple[str, int]]) -> None:
    lines.append(f"# HELP {PREFIX}_{name} {help_text}")
    lines.append(f"# TYPE {PREFIX}_{name} {kind}")
    lines.extend(f"{PREFIX}_{name}{labels} {value}" for labels, value in samples)


def engine_series(stats: EngineStats) -> list[tuple[str, str, str, int]]:
    """``(name, kind, help, value)`` of each engine counter and gauge."""
    return [
        ("prompt_tokens_total", "counter", "Prompt tokens submitted (once per choice).", stats.prompt_tokens),
        ("generation_tokens_total", "counter", "Tokens generated.", stats.generated_tokens),
        ("sequences_running", "gauge", "Sequences being decoded.", stats.running),
        ("sequences_waiting", "gauge", "Sequences queued for admission.", stats.waiting),
        ("kv_blocks_total", "gauge", "KV cache blocks in the pool.", stats.kv_blocks_total),
        ("kv_blocks_used", "gauge", "KV cache blocks held by sequences.", stats.kv_blocks_total - stats.kv_blocks_free),
        ("kv_blocks_free", "gauge", "KV cache blocks free.", stats.kv_blocks_free),
        ("prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from cached prefix blocks.",
         stats.prefix_hit_tokens),
        ("prefix_cache_queried_tokens_total", "counter", "Prompt tokens looked up in the prefix cache.",
         stats.prefix_queried_tokens),
        ("preemptions_total", "counter", "Sequences preempted when the KV cache ran out.", stats.preemptions),
    ]


def render(requests: RequestMetrics, stats: EngineStats, model: str) -> str:
    lines: list[str] = []
    metric(lines, "http_requests_total", "counter", "HTTP responses by method, endpoint and status code.",
           [(f'{{method="{label(m)}",endpoint="{label(e)}",status="{s}"}}', n)
            for (m, e, s), n in sorted(requests.responses.items())])
    model_label = f'{{model="{label(model)}"}}'
    for name, kind, help_text, value in engine_series(stats):
        metric(lines, name, kind, help_text, [(model_label, value)])
    return "\n".join(lines) + "\n"
