"""Run a peer engine's benchmark script in its own Python (a subprocess per peer).

llama.cpp comes through llama-cpp-python (the `[peers]` extra, or any Python given by
``bench.llama_cpp_python``); mistral.rs's wheel must live in its own environment, because it is
also imported as ``mistralrs`` (``bench.mistralrs_rs_python``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = {
    "llama.cpp": Path(__file__).with_name("peer_llama_cpp.py"),
    "mistral.rs": Path(__file__).with_name("peer_mistralrs_rs.py"),
}


class PeerError(RuntimeError):
    pass


@dataclass
class PeerJob:
    model: str  # a GGUF file
    prompt_ids: list[int]
    prompt_text: str
    run_prefix_ids: list[int]  # first token per repeat, so no prefix cache serves a repeat
    decode_tokens: int
    threads: int
    repeats: int


def _run_command(name: str, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """A peer's process, its failure (not starting, timing out, a non-zero exit) as a PeerError."""
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PeerError(f"{name}: {exc}") from exc
    if result.returncode != 0:
        raise PeerError(f"{name} failed ({cmd[0]}): {result.stderr.strip()[-800:]}")
    return result


def run_llama_bench(binary: Path, job: PeerJob, timeout: float = 1800) -> dict:
    """llama.cpp's own ``llama-bench``: pp<prompt> and tg<decode> with the job's threads and repeats
    (its prompt is random tokens of the same length; its medians are means over repeats)."""
    cmd = [str(binary), "-m", job.model, "-t", str(job.threads), "-p", str(len(job.prompt_ids)),
           "-n", str(job.decode_tokens), "-r", str(job.repeats), "-o", "json"]
    result = _run_command("llama-bench", cmd, timeout)
    try:
        tests = json.loads(result.stdout)
        prefill = next(t["avg_ts"] for t in tests if t["n_prompt"] and not t["n_gen"])
        decode = next(t["avg_ts"] for t in tests if t["n_gen"] and not t["n_prompt"])
    except (json.JSONDecodeError, StopIteration, KeyError, TypeError):
        raise PeerError(f"llama-bench printed no result: {result.stdout[-400:]}") from None
    return {"engine": "llama-bench", "prefill_tok_s": round(prefill, 2), "decode_tok_s": round(decode, 2)}


def run_peer(name: str, python: str | None, job: PeerJob, timeout: float = 1800) -> dict:
    if name not in SCRIPTS:
        raise PeerError(f"unknown peer {name!r}; known: {', '.join(SCRIPTS)}")
    cmd = [python or sys.executable, str(SCRIPTS[name]), json.dumps(job.__dict__)]
    result = _run_command(name, cmd, timeout)
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise PeerError(f"{name} printed no result: {result.stdout[-400:]} {result.stderr[-400:]}") from None
