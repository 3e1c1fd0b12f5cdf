"""task=report turns bench rows into a markdown table with ratios and a chart."""

from __future__ import annotations

import json

from cli_helpers import run_cli


def test_report_from_sweep_rows(tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "0").mkdir(parents=True)
    rows = [
        {"engine": "mistralrs-py", "model": "smollm2", "quant": "none", "prefill_tok_s": 300.0, "decode_tok_s": 120.0},
        {"engine": "llama.cpp", "model": "smollm2", "quant": "none", "prefill_tok_s": 600.0, "decode_tok_s": 100.0},
        {"engine": "mistralrs-py", "model": "gemma3", "quant": "none", "prefill_tok_s": 200.0, "decode_tok_s": 50.0},
    ]
    (sweep / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    out = tmp_path / "docs" / "bench"
    result = run_cli("task=report", f"report.input={sweep}", f"report.output={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = (tmp_path / "docs" / "bench.md").read_text()
    assert "| smollm2 | none | llama.cpp | 100.0 | 600.0 |" in table
    assert "1.20x" in table and "0.50x" in table  # decode 120/100, prefill 300/600
    png = (tmp_path / "docs" / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_rows_is_a_clear_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = run_cli("task=report", f"report.input={tmp_path / 'empty.jsonl'}", cwd=tmp_path)
    assert result.returncode == 2 and "no bench rows" in result.stderr and "Traceback" not in result.stderr


def test_a_sweep_of_two_values_gives_two_rows_and_two_points(tmp_path):
    """bench.prompt_tokens=64,128: the swept setting is a column, ratios compare engines on the same
    setting only (never ours vs ours), every point is drawn, and the report lands in the sweep folder."""
    sweep = tmp_path / "multirun" / "day" / "time"
    sweep.mkdir(parents=True)
    rows = [
        {"engine": "mistralrs-py", "model": "smollm2", "quant": "none", "prompt_tokens": 64, "threads": 2,
         "prefill_tok_s": 300.0, "decode_tok_s": 120.0, "time": "a"},
        {"engine": "mistralrs-py", "model": "smollm2", "quant": "none", "prompt_tokens": 128, "threads": 2,
         "prefill_tok_s": 400.0, "decode_tok_s": 110.0, "time": "b"},
        {"engine": "llama.cpp", "model": "smollm2", "quant": "none", "prompt_tokens": 128, "threads": 2,
         "prefill_tok_s": 200.0, "decode_tok_s": 100.0, "time": "c"},
    ]
    (sweep / "bench.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    result = run_cli("task=report", f"report.input={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    table = (sweep / "report.md").read_text()
    header = table.splitlines()[0]
    assert "prompt_tokens" in header and "threads" not in header and "time" not in header
    assert "| smollm2 | none | 64 | mistralrs-py | 120.0 | 300.0 | - | - |" in table  # no ours-vs-ours ratio
    assert "| smollm2 | none | 128 | llama.cpp | 100.0 | 200.0 | 1.10x | 2.00x |" in table
    assert (sweep / "report.png").read_bytes()[:4] == b"\x89PNG"


def test_chart_draws_every_point_of_a_numeric_sweep(tmp_path):
    from mistralrs.engine.bench.report import bar_chart

    import matplotlib.pyplot as plt

    rows = [{"engine": "mistralrs-py", "model": "m", "quant": "none", "streams": n, "decode_tok_s": 10.0 * n}
            for n in (1, 4, 16)]
    drawn = []
    original = plt.Axes.plot

    def spy(self, xs, ys, *args, **kwargs):
        drawn.append((list(xs), list(ys)))
        return original(self, xs, ys, *args, **kwargs)

    plt.Axes.plot = spy
    try:
        bar_chart(rows, tmp_path / "c.png")
    finally:
        plt.Axes.plot = original
    assert drawn == [([1, 4, 16], [10.0, 40.0, 160.0])]


def test_each_sweep_job_reports_its_own_peak_rss():
    """Jobs of a sweep share one process: the peak is reset at each job's start."""
    from mistralrs.engine.bench.peak_rss import peak_rss_mb, reset_peak_rss

    big = bytearray(300 * 2**20)
    big[:: 4096] = b"x" * len(big[:: 4096])  # touch every page
    before = peak_rss_mb()
    del big
    reset_peak_rss()
    assert peak_rss_mb() < before - 200
