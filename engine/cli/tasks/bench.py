"""``task=bench``: prompt (prefill) and decode tokens/s for the configured model, median of repeats.

``bench.mode=engine`` (default) times the engine alone in this process; ``bench.mode=served`` times our
OpenAI server as clients see it (engine/bench/served.py). Under ``-m`` (multirun) each job appends its
rows to ``<sweep dir>/bench.jsonl``; otherwise rows go to ``bench.output`` when set.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from mistralrs.engine.cli.tasks.common import load_llm
from mistralrs.engine.config import RAY_ONLY_SERVE
from mistralrs.engine.core.llm_engine import kv_bytes_per_token
from mistralrs.engine.bench.peak_rss import peak_rss_mb, reset_peak_rss

# Any text works; it only has to tokenize to enough tokens, the same way every run.
_FILLER = ("The history of computing is a story of abstraction layered on abstraction, from relays and vacuum "
           "tubes to transistors, integrated circuits and the programs that run on them. ")


def bench_prompt(tokenizer, n_tokens: int, run: int = 0) -> list[int]:
    """``n_tokens`` of filler; each run starts differently so the prefix cache cannot serve it."""
    ids = tokenizer.encode(_FILLER, add_special=False)
    reps = -(-n_tokens // len(ids))
    prefix = [tokenizer.bos_id] if tokenizer.add_bos and tokenizer.bos_id is not None else []
    prefix += tokenizer.encode(f"Run {run}. ", add_special=False)
    return (prefix + ids * reps)[:n_tokens]


# bench.grammar=json: a realistic schema (objects, strings, integers, booleans) the output cannot finish
# before decode_tokens, so constrained and free runs decode the same number of tokens
BENCH_GRAMMARS = {
    "json": {"json": {"type": "array", "minItems": 40, "items": {
        "type": "object", "required": ["name", "id", "ok"], "additionalProperties": False,
        "properties": {"name": {"type": "string", "maxLength": 16}, "id": {"type": "integer"}, "ok": {"type": "boolean"}}}}},
}


def time_one(llm, prompt: list[int], decode_tokens: int, **sampling) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    count = 0
    for _ in llm.run([prompt], max_tokens=decode_tokens, temperature=0.0, ignore_eos=True, **sampling):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    prefill = len(prompt) / (first - start)
    decode = (count - 1) / (end - first) if count > 1 else float("nan")
    return prefill, decode


def run(cfg: DictConfig) -> dict:
    if cfg.bench.mode == "served":
        return run_served(cfg)
    if cfg.bench.mode != "engine":
        raise ValueError(f"bench.mode must be engine or served, not {cfg.bench.mode!r}")
    reset_peak_rss()  # this job's own peak, even as one job of a sweep's process
    llm = load_llm(cfg)
    b = cfg.bench
    prompt = bench_prompt(llm.tokenizer, int(b.prompt_tokens))
    for w in range(int(b.warmup)):
        time_one(llm, bench_prompt(llm.tokenizer, 32, run=-1 - w), 8)
    if b.grammar != "none" and b.grammar not in BENCH_GRAMMARS:
        raise ValueError(f"bench.grammar must be none or one of {', '.join(BENCH_GRAMMARS)}, not {b.grammar!r}")
    results, constrained = [], []
    for r in range(int(b.repeats)):  # constrained runs alternate with free ones: same machine load
        results.append(time_one(llm, bench_prompt(llm.tokenizer, int(b.prompt_tokens), run=r), int(b.decode_tokens)))
        if b.grammar != "none":
            constrained.append(time_one(llm, bench_prompt(llm.tokenizer, int(b.prompt_tokens), run=100 + r),
                                        int(b.decode_tokens), structured_outputs=BENCH_GRAMMARS[b.grammar]))
    row = {
        "engine": "mistralrs-py",
        "model": cfg.model.name,
        "source": str(cfg.model.source),
        "architecture": llm.loaded.architecture,
        "quant": cfg.quant.type,
        "dtype": str(llm.loaded.dtype).removeprefix("torch."),
        "kv_cache_dtype": str(llm.engine.kv_dtype).removeprefix("torch."),
        "kv_bytes_per_token": kv_bytes_per_token(llm.loaded.model, llm.engine.kv_dtype, llm.engine.num_caches),
        "device": str(llm.loaded.device),
        "threads": torch.get_num_threads(),
        "prompt_tokens": len(prompt),
        "decode_tokens": int(b.decode_tokens),
        "repeats": int(b.repeats),
        "prefill_tok_s": round(statistics.median(r[0] for r in results), 2),
        "decode_tok_s": round(statistics.median(r[1] for r in results), 2),
        **_constrained_columns(b.grammar, constrained, results),
        "load_s": round(llm.loaded.load_seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"{row['model']} ({row['architecture']}, {row['dtype']}, KV {row['kv_cache_dtype']} "
          f"{row['kv_bytes_per_token']} B/token, {row['device']}, {row['threads']} threads): "
          f"prompt {row['prefill_tok_s']} tok/s ({row['prompt_tokens']} tokens), "
          f"decode {row['decode_tok_s']} tok/s ({row['decode_tokens']} tokens), "
          f"load {row['load_s']} s, peak RSS {row['peak_rss_mb']} MB  [median of {row['repeats']}]")
    if constrained:
        print(f"  under the {b.grammar} grammar: decode {row['constrained_decode_tok_s']} tok/s, "
              f"{row['constrained_vs_free']:.3f}x free decoding")
    rows = [row] + run_peers(cfg, llm, prompt, row)
    _write_rows(_output_path(b.output), rows)
    return row


def _constrained_columns(grammar: str, constrained: list, free: list) -> dict:
    if not constrained:
        return {}
    rate = statistics.median(r[1] for r in constrained)
    return {"grammar": grammar, "constrained_decode_tok_s": round(rate, 2),
            "constrained_vs_free": round(rate / statistics.median(r[1] for r in free), 3)}


def _write_rows(out: Path | None, rows: list[dict]) -> None:
    if out is None:
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    print(f"wrote {len(rows)} rows to {out}")


def run_served(cfg: DictConfig) -> dict:
    """Our server (and llama-server when a peer) driven by the openai client; one row per engine and
    stream count."""
    from mistralrs.engine.bench import served
    from mistralrs.engine.loading.sources import resolve_source

    b = cfg.bench
    unknown = set(b.peers) - {"llama-server"}
    if unknown:
        raise ValueError(f"bench.mode=served takes the peer llama-server only, not {', '.join(sorted(unknown))}")
    out = _output_path(b.output)
    logs = served.log_dir_for(out)
    threads = int(cfg.engine.threads or torch.get_num_threads())
    job = served.job_overrides()
    # the local server: without the settings of the Ray rows (serve.backend=ray only)
    not_local = {"engine.threads", *(f"serve.{name}" for name in RAY_ONLY_SERVE)}
    overrides = [o for o in job if served.override_key(o) not in not_local] + [f"engine.threads={threads}"]
    plan = served.ServedPlan(streams=[int(n) for n in b.streams], decode_tokens=int(b.decode_tokens),
                             prompt_tokens=int(b.prompt_tokens), repeats=int(b.repeats), warmup=int(b.warmup))
    common = {"model": cfg.model.name, "source": str(cfg.model.source), "quant": cfg.quant.type, "mode": "served",
              "threads": threads, "decode_tokens": plan.decode_tokens, "prompt_tokens": plan.prompt_tokens,
              "repeats": plan.repeats, "torch": torch.__version__, "machine": platform.machine(),
              "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    # the peer's binary and file first: a missing one fails before minutes of measuring ours
    peer_binary = served.find_llama_server(b.llama_cpp_bin) if "llama-server" in b.peers else None
    gguf = resolve_source(str(cfg.model.source), sha256=cfg.model.get("sha256")) if peer_binary else None
    results: dict[str, dict] = {}
    ours = served.start_ours(overrides, cfg.model.name, logs)
    try:
        plan.long_prompts = [served.long_prompt(ours.base_url, plan.prompt_tokens, r) for r in range(plan.repeats)]
        results["mistralrs-py"] = served.measure(ours, plan)
    finally:
        ours.stop()
    ray_threads = int(b.ray_replica_threads)
    for replicas in [int(n) for n in b.ray_replicas]:  # serve.backend=ray, same plan and prompts
        ray_overrides = [o for o in job if served.override_key(o) not in RAY_ROW_KEYS] + [
            f"engine.threads={ray_threads}", "serve.backend=ray", f"serve.replicas={replicas}",
            f"serve.replica_cpus={ray_threads}"]
        server = served.start_ours(ray_overrides, cfg.model.name, logs)
        try:
            measured = served.measure(server, plan)
            del measured["peak_rss_mb"]  # the ingress's alone: the replicas are Ray's processes, not measured
            results[f"mistralrs-py ray x{replicas}"] = {**measured, "replicas": replicas, "threads": ray_threads}
        finally:
            server.stop()
    if peer_binary is not None and gguf is not None:
        if gguf.suffix != ".gguf":
            print("llama-server skipped: it runs GGUF files and this model is not one")
        else:
            results["llama-server"] = served.measure_llama_server(peer_binary, gguf, threads, plan, logs)
    rows = []
    for engine, res in results.items():
        for n, r in res["decode"].items():
            # ray rows: threads per replica, and no peak RSS
            rows.append({**common, "engine": engine, "streams": n, "decode_tok_s": r["tok_s"],
                         "stream_decode_tok_s": r["decode_tok_s"], "ttft_s": res["ttft_s"],
                         **({"peak_rss_mb": res["peak_rss_mb"].get(n)} if "peak_rss_mb" in res else {}),
                         "threads": res.get("threads", threads), "replicas": res.get("replicas", 1)})
    _print_served(rows)
    _write_rows(out, rows)
    return rows[0]


RAY_ROW_KEYS = ("engine.threads", "serve.backend", "serve.replicas", "serve.replica_cpus")  # the bench sets them


def _print_served(rows: list[dict]) -> None:
    ours = {r["streams"]: r for r in rows if r["engine"] == "mistralrs-py"}
    print(f"{rows[0]['model']} served, {rows[0]['threads']} threads, {rows[0]['decode_tokens']} tokens per stream "
          f"[median of {rows[0]['repeats']}]")
    for r in rows:
        base = ours.get(r["streams"])
        ratio = f"  ours {base['decode_tok_s'] / r['decode_tok_s']:.2f}x" if base and r is not base and r["decode_tok_s"] else ""
        print(f"{r['engine']:>22} {r['streams']:>3} streams: {r['decode_tok_s']} tok/s aggregate, "
              f"{r['stream_decode_tok_s']} tok/s per stream, TTFT {r['ttft_s']} s ({r['prompt_tokens']}-token prompt)"
              + (f", peak RSS {r['peak_rss_mb']} MB" if "peak_rss_mb" in r else "") + ratio
              + (f"  [{r['replicas']} Ray replica(s), {r['threads']} thread(s) each]" if "ray" in r["engine"] else ""))


def run_peers(cfg: DictConfig, llm, prompt: list[int], ours: dict) -> list[dict]:
    """The configured peer engines on the same file, prompt and threads; prints ratios."""
    from mistralrs.engine.bench.peers import PeerError, PeerJob, run_llama_bench, run_peer
    from mistralrs.engine.bench.served import ServedBenchError, find_llama_server

    b = cfg.bench
    if not b.peers:
        return []
    if llm.loaded.checkpoint.format != "gguf":
        print("peers skipped: they run GGUF files and this model is not one")
        return []
    job = PeerJob(model=str(llm.loaded.checkpoint.path), prompt_ids=prompt,
                  prompt_text=llm.tokenizer.decode(prompt, skip_special=True),
                  run_prefix_ids=[llm.tokenizer.encode(f"Run {r}.", add_special=False)[0] for r in range(int(b.repeats))],
                  decode_tokens=int(b.decode_tokens), threads=torch.get_num_threads(), repeats=int(b.repeats))
    pythons = {"llama.cpp": b.llama_cpp_python, "mistral.rs": b.mistralrs_rs_python}
    rows = []
    for name in b.peers:
        try:
            if name == "llama-bench":
                result = run_llama_bench(find_llama_server(b.llama_cpp_bin).with_name("llama-bench"), job)
            else:
                result = run_peer(name, pythons.get(name), job)
        except (PeerError, ServedBenchError) as exc:
            print(f"{name}: not measured ({exc})")
            continue
        peer_row = {**ours, **result, "engine": name}
        rows.append(peer_row)
        print(f"{name:>12}: prompt {result['prefill_tok_s']} tok/s, decode {result['decode_tok_s']} tok/s  ->  ours is "
              f"{ours['prefill_tok_s'] / result['prefill_tok_s']:.2f}x prefill, "
              f"{ours['decode_tok_s'] / result['decode_tok_s']:.2f}x decode")
    return rows


def _output_path(configured: str | None) -> Path | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return Path(HydraConfig.get().sweep.dir) / "bench.jsonl"
    return Path(configured) if configured else None
