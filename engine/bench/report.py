"""Bench rows (JSONL from `task=bench`, possibly a sweep) -> a markdown table and a chart."""

from __future__ import annotations

import json
from pathlib import Path

# What a row measured, and what identifies the run rather than its configuration; every other key is
# configuration, and the keys whose values differ between rows are the sweep's axes.
MEASURES = ["decode_tok_s", "prefill_tok_s", "stream_decode_tok_s", "ttft_s", "peak_rss_mb", "load_s"]
BOOKKEEPING = {"engine", "time", "torch", "machine", "source", "architecture", "device", "repeats"}
OURS = "mistralrs-py"


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


def swept_keys(rows: list[dict]) -> list[str]:
    """Configuration keys whose values differ between rows (model and quant always shown)."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys and k not in BOOKKEEPING and k not in MEASURES]
    varying = [k for k in keys if len({json.dumps(r.get(k), sort_keys=True) for r in rows}) > 1]
    return ["model", "quant"] + [k for k in varying if k not in ("model", "quant")]


def config_of(row: dict, keys: list[str]) -> tuple:
    return tuple(json.dumps(row.get(k), sort_keys=True) for k in keys)


def markdown_table(rows: list[dict]) -> str:
    """One line per row: its swept settings, engine and measures; ``vs ours`` ratios compare engines
    on the same configuration only (ours / that engine: > 1 means ours is faster)."""
    keys = swept_keys(rows)
    measures = [m for m in MEASURES if any(m in r for r in rows)]
    ours = {config_of(r, keys): r for r in rows if r.get("engine", OURS) == OURS}
    ratio_keys = [m for m in ("decode_tok_s", "prefill_tok_s") if m in measures]
    header = keys + ["engine"] + measures + [f"{m.removesuffix('_tok_s')} vs ours" for m in ratio_keys]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in sorted(rows, key=lambda r: (config_of(r, keys), r.get("engine", OURS) != OURS, r.get("engine", ""))):
        base = ours.get(config_of(r, keys))
        cells = [str(r.get(k, "-")) for k in keys] + [r.get("engine", OURS)] + [str(r.get(m, "-")) for m in measures]
        for m in ratio_keys:
            peer = r.get("engine", OURS) != OURS
            cells.append(f"{base[m] / r[m]:.2f}x" if peer and base and base.get(m) and r.get(m) else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(ratios: ours / that engine on the same configuration; > 1 means ours is faster)\n"


def bar_chart(rows: list[dict], out: Path) -> None:
    """A panel per throughput measure. One numeric swept setting (besides model/quant): a line per
    engine and model over it; otherwise a bar per configuration and engine. Every row is a point."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = swept_keys(rows)
    axes_keys = [k for k in keys if k not in ("model", "quant")]
    numeric_axis = (len(axes_keys) == 1 and all(isinstance(r.get(axes_keys[0]), (int, float)) for r in rows))
    panels = [(m, m.replace("_tok_s", " tok/s").replace("_", " ")) for m in ("decode_tok_s", "prefill_tok_s")
              if any(m in r for r in rows)]
    engines = sorted({r.get("engine", OURS) for r in rows}, key=lambda e: (e != OURS, e))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        if numeric_axis:
            axis = axes_keys[0]
            for engine in engines:
                for model in sorted({(r["model"], r.get("quant")) for r in rows}):
                    pts = sorted((r[axis], r[key]) for r in rows if r.get("engine", OURS) == engine
                                 and (r["model"], r.get("quant")) == model and key in r)
                    if pts:
                        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", label=f"{engine} {model[0]}")
            ax.set_xlabel(axis)
        else:
            labels = sorted({" ".join(f"{r.get(k)}" if k in ("model", "quant") else f"{k}={r.get(k)}" for k in keys)
                             for r in rows})
            width = 0.8 / len(engines)
            for i, engine in enumerate(engines):
                by_label = {" ".join(f"{r.get(k)}" if k in ("model", "quant") else f"{k}={r.get(k)}" for k in keys): r
                            for r in rows if r.get("engine", OURS) == engine}
                ys = [by_label.get(label, {}).get(key, 0.0) for label in labels]
                ax.bar([x + i * width for x in range(len(labels))], ys, width, label=engine)
            ax.set_xticks([x + width * (len(engines) - 1) / 2 for x in range(len(labels))], labels, rotation=15)
        ax.set_title(title)
        ax.legend()
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
