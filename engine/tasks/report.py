"""``task=report``: bench JSONL (a file or a sweep directory) -> markdown table + PNG chart.

    mistralrs task=report report.input=multirun/2026-11-25 report.output=docs/bench
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def run(cfg: DictConfig) -> None:
    from mistralrs.engine.bench.report import bar_chart, markdown_table, read_rows

    r = cfg.report
    if not r.input:
        raise ValueError("task=report needs report.input=<bench .jsonl file or sweep directory>")
    rows = read_rows([Path(p) for p in str(r.input).split(",")])
    table = markdown_table(rows)
    out = Path(r.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    try:
        bar_chart(rows, out.with_suffix(".png"))
    except ImportError:
        raise ValueError("the chart needs matplotlib: pip install 'mistralrs-py[report]'") from None
    print(table)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")
