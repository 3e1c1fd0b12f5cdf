"""``task=bench bench.mode=served``: what users get through the OpenAI endpoint.

Starts our server (``mistralrs task=serve`` in a subprocess, with the job's own overrides) and, when
``bench.peers`` names ``llama-server``, llama.cpp's server on the same GGUF file with the same threads
and ``-np`` = the stream count (a server per count); drives each in turn with the official ``openai`` client:

- decode: ``streams`` concurrent streamed ``/v1/completions`` requests of ``decode_tokens`` tokens
  (``ignore_eos``, greedy, short distinct prompts), for each count in ``bench.streams``;
- TTFT: one streamed request with a ``prompt_tokens``-token prompt (distinct per repeat);
- peak RSS of the server process (``VmHWM``) through each stream count's load (ours serves the whole
  sweep in one process, fewest streams first; llama-server gets one server per count).

Each figure is the median over ``bench.repeats`` rounds, after ``bench.warmup`` unmeasured ones.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mistralrs.engine.bench.served_client import RoundResult, run_round

_FILLER = ("The history of computing is a story of abstraction layered on abstraction, from relays and vacuum "
           "tubes to transistors, integrated circuits and the programs that run on them. ")


class ServedBenchError(ValueError):  # the CLI prints it as one line
    pass


@dataclass
class ServerProcess:
    name: str
    proc: subprocess.Popen
    base_url: str
    model: str
    log_path: Path

    def peak_rss_mb(self) -> float | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
        except OSError:
            return None
        return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_ready(server: ServerProcess, timeout: float) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise ServedBenchError(f"{server.name} exited with status {server.proc.returncode}: "
                                   f"{server.log_path.read_text()[-800:]}")
        try:
            if httpx.get(server.base_url.removesuffix("/v1") + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    server.stop()
    raise ServedBenchError(f"{server.name} did not become ready within {timeout:.0f} s (log: {server.log_path})")


def start_ours(overrides: list[str], model_name: str, log_dir: Path, timeout: float = 900) -> ServerProcess:
    port = free_port()
    cmd = [sys.executable, "-m", "mistralrs.engine.cli", *overrides, "task=serve", "serve.host=127.0.0.1",
           f"serve.port={port}"]
    log_path = log_dir / "mistralrs-server.log"
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = ServerProcess("mistralrs", proc, f"http://127.0.0.1:{port}/v1", model_name, log_path)
    _wait_ready(server, timeout)
    return server


def find_llama_server(bin_dir: str | None) -> Path:
    if bin_dir:
        path = Path(bin_dir).expanduser()
        path = path / "llama-server" if path.is_dir() else path
        if path.is_file():
            return path
        raise ServedBenchError(f"no llama-server at {path}")
    found = shutil.which("llama-server")
    if not found:
        raise ServedBenchError("llama-server not found: build it (README, Benchmarks) and set bench.llama_cpp_bin")
    return Path(found)


def start_llama_server(binary: Path, gguf: Path, threads: int, slots: int, ctx_per_slot: int, log_dir: Path,
                       timeout: float = 300) -> ServerProcess:
    port = free_port()
    cmd = [str(binary), "-m", str(gguf), "-t", str(threads), "-tb", str(threads), "-np", str(slots),
           "-c", str(ctx_per_slot * slots), "--host", "127.0.0.1", "--port", str(port), "--no-webui"]
    log_path = log_dir / "llama-server.log"
    proc = subprocess.Popen(cmd, stdout=log_path.open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    server = ServerProcess("llama-server", proc, f"http://127.0.0.1:{port}/v1", "model", log_path)
    _wait_ready(server, timeout)
    return server


def long_prompt(base_url: str, n_tokens: int, run: int) -> str:
    """About ``n_tokens`` tokens of filler, cut to exactly that many with our server's tokenizer (the
    text is sent to every server alike)."""
    import httpx

    root = base_url.removesuffix("/v1")
    text = f"Run {run}. " + _FILLER * (n_tokens // 20 + 2)
    ids = httpx.post(root + "/tokenize", json={"prompt": text, "add_special_tokens": False}, timeout=60).json()["tokens"]
    return httpx.post(root + "/detokenize", json={"tokens": ids[:n_tokens - 1]}, timeout=60).json()["prompt"]


@dataclass
class ServedPlan:
    streams: list[int]
    decode_tokens: int
    prompt_tokens: int
    repeats: int
    warmup: int
    prompts_from: str = ""  # base URL of our server (its /tokenize builds the long prompts)
    long_prompts: list[str] = field(default_factory=list)


def _median_round(rounds: list[RoundResult]) -> dict:
    out = {"streams": rounds[0].streams}
    for key in ("tok_s", "decode_tok_s", "ttft_s"):
        values = [getattr(r, key) for r in rounds if getattr(r, key) == getattr(r, key)]  # drop NaN
        out[key] = round(statistics.median(values), 4 if key == "ttft_s" else 2) if values else None
    return out


def measure(server: ServerProcess, plan: ServedPlan, streams: list[int] | None = None, ttft: bool = True) -> dict:
    """Rounds of the plan against one server, fewest streams first (``streams``: the plan's counts by
    default), the TTFT prompts right after the fewest: {"decode": {streams: {...}}, "ttft_s": ...,
    "peak_rss_mb": {streams: the server's peak RSS through that load}}. The peak is the kernel's
    high-water mark, so a count's figure covers every round before it as well."""
    def rnd(prompts: list[str], max_tokens: int) -> RoundResult:
        return asyncio.run(run_round(server.base_url, server.model, prompts, max_tokens))

    result: dict = {"decode": {}, "ttft_s": None, "peak_rss_mb": {}}
    for w in range(plan.warmup):
        rnd([f"Warm-up {w}: once upon a time"], 16)
    for k, n in enumerate(sorted(plan.streams if streams is None else streams)):
        rounds = [rnd([f"Story {r}-{i}: once upon a time" for i in range(n)], plan.decode_tokens)
                  for r in range(plan.repeats)]
        result["decode"][n] = _median_round(rounds)
        if ttft and k == 0:  # as on llama-server's one-slot server: the light load includes long prompts
            ttfts = [rnd([p], 8).ttft_s for p in plan.long_prompts]
            result["ttft_s"] = round(statistics.median(ttfts), 4) if ttfts else None
        result["peak_rss_mb"][n] = server.peak_rss_mb()
    return result


def measure_llama_server(binary: Path, gguf: Path, threads: int, plan: ServedPlan, log_dir: Path) -> dict:
    """llama-server started once per stream count with that many slots (``-np``), as its users run it;
    TTFT on the one-slot server; each count's peak RSS that server's."""
    ctx = plan.prompt_tokens + plan.decode_tokens + 64
    merged: dict = {"decode": {}, "ttft_s": None, "peak_rss_mb": {}}
    for n in sorted(plan.streams):
        peer = start_llama_server(binary, gguf, threads, n, ctx, log_dir)
        try:
            part = measure(peer, plan, streams=[n], ttft=n == min(plan.streams))
        finally:
            peer.stop()
        merged["decode"].update(part["decode"])
        merged["ttft_s"] = merged["ttft_s"] or part["ttft_s"]
        merged["peak_rss_mb"].update(part["peak_rss_mb"])
    return merged


def job_overrides() -> list[str]:
    """This job's command-line overrides (a sweep's swept values included), minus the bench's own."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return []
    return [o for o in HydraConfig.get().overrides.task
            if not override_key(o).startswith(("task", "bench.", "serve.port", "serve.host"))]


def override_key(override: str) -> str:
    """The config key of a command-line override (``+serve.x=1`` -> ``serve.x``)."""
    return override.split("=", 1)[0].lstrip("+~")


def log_dir_for(output: Path | None) -> Path:
    """Where the servers' logs go: the job's own folder in a sweep (``<sweep>/<job number>``), beside
    the output file otherwise, else a temporary folder."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        path = Path(HydraConfig.get().runtime.output_dir)
    elif output is not None:
        path = output.parent
    else:
        path = Path(os.environ.get("TMPDIR", "/tmp")) / "mistralrs-bench"
    path.mkdir(parents=True, exist_ok=True)
    return path
