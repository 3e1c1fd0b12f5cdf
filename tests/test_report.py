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
    assert "| smollm2 | none | llama.cpp | 600.0 | 100.0 |" in table
    assert "1.20x" in table and "0.50x" in table  # decode 120/100, prefill 300/600
    png = (tmp_path / "docs" / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_without_rows_is_a_clear_error(tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    result = run_cli("task=report", f"report.input={tmp_path / 'empty.jsonl'}", cwd=tmp_path)
    assert result.returncode == 2 and "no bench rows" in result.stderr and "Traceback" not in result.stderr
