"""Bench rows (JSONL from `task=bench`, possibly a sweep) -> a markdown table and a bar chart."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

COLUMNS = ["model", "quant", "engine", "prefill_tok_s", "decode_tok_s", "load_s", "peak_rss_mb", "threads"]


def read_rows(paths: list[Path]) -> list[dict]:
    rows = []
    for path in paths:
        files = sorted(path.rglob("*.jsonl")) if path.is_dir() else [path]
        for file in files:
            for n, line in enumerate(file.read_text().splitlines(), 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{file}:{n}: not a JSON row ({exc.msg})") from None
    if not rows:
        raise ValueError(f"no bench rows found in {', '.join(map(str, paths))}")
    return rows


def markdown_table(rows: list[dict]) -> str:
    ours = {(r["model"], r.get("quant")): r for r in rows if r.get("engine", "mistralrs-py") == "mistralrs-py"}
    lines = ["| " + " | ".join(COLUMNS + ["decode vs ours", "prefill vs ours"]) + " |",
             "|" + "---|" * (len(COLUMNS) + 2)]
    for r in sorted(rows, key=lambda r: (r["model"], str(r.get("quant")), r.get("engine", ""))):
        base = ours.get((r["model"], r.get("quant")))
        ratio = lambda key: f"{base[key] / r[key]:.2f}x" if base and r.get(key) else "-"  # noqa: E731
        cells = [str(r.get(c, "-")) for c in COLUMNS] + [ratio("decode_tok_s"), ratio("prefill_tok_s")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(ratios: ours / that engine; > 1 means ours is faster)\n"


def bar_chart(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({f"{r['model']} {r.get('quant', '')}".strip() for r in rows})
    engines = sorted({r.get("engine", "mistralrs-py") for r in rows}, key=lambda e: (e != "mistralrs-py", e))
    values: dict[str, dict[str, dict[str, float]]] = defaultdict(dict)
    for r in rows:
        values[r.get("engine", "mistralrs-py")][f"{r['model']} {r.get('quant', '')}".strip()] = r
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.8 / len(engines)
    for ax, key, title in ((axes[0], "decode_tok_s", "decode tok/s"), (axes[1], "prefill_tok_s", "prefill tok/s")):
        for i, engine in enumerate(engines):
            ys = [values[engine].get(g, {}).get(key, 0.0) for g in groups]
            ax.bar([x + i * width for x in range(len(groups))], ys, width, label=engine)
        ax.set_xticks([x + width * (len(engines) - 1) / 2 for x in range(len(groups))], groups, rotation=15)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
