"""``task=report``: bench JSONL (a file or a sweep directory) -> markdown table + PNG chart.

    mistralrs task=report report.input=multirun/2026-11-25/10-00-00     # writes report.{md,png} there
    mistralrs task=report report.input=a.jsonl,b.jsonl report.output=docs/bench
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig


def run(cfg: DictConfig) -> None:
    from mistralrs.engine.bench.report import bar_chart, markdown_table, read_rows

    r = cfg.report
    if not r.input:
        raise ValueError("task=report needs report.input=<bench .jsonl file or sweep directory>")
    inputs = [Path(p) for p in str(r.input).split(",")]
    rows = read_rows(inputs)
    table = markdown_table(rows)
    out = Path(r.output) if r.output else default_output(inputs[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(table)
    try:
        bar_chart(rows, out.with_suffix(".png"))
    except ImportError:
        raise ValueError("the chart needs matplotlib: pip install 'mistralrs-py[report]'") from None
    print(table)
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.png')}")


def default_output(first_input: Path) -> Path:
    """Next to what it reports on: ``<sweep dir>/report`` or ``<file stem>-report``."""
    return first_input / "report" if first_input.is_dir() else first_input.with_name(first_input.stem + "-report")
