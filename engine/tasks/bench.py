"""``task=bench``: prompt (prefill) and decode tokens/s for the configured model, median of repeats.

Under ``-m`` (multirun) each job appends one JSON row to ``<sweep dir>/bench.jsonl``; otherwise a
row goes to ``bench.output`` when set.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path

import torch
from omegaconf import DictConfig

from .common import load_llm
from mistralrs.engine.bench.peak_rss import peak_rss_mb

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


def time_one(llm, prompt: list[int], decode_tokens: int) -> tuple[float, float]:
    start = time.perf_counter()
    first = None
    count = 0
    for _ in llm.run([prompt], max_tokens=decode_tokens, temperature=0.0, ignore_eos=True):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    prefill = len(prompt) / (first - start)
    decode = (count - 1) / (end - first) if count > 1 else float("nan")
    return prefill, decode


def run(cfg: DictConfig) -> dict:
    llm = load_llm(cfg)
    b = cfg.bench
    prompt = bench_prompt(llm.tokenizer, int(b.prompt_tokens))
    for w in range(int(b.warmup)):
        time_one(llm, bench_prompt(llm.tokenizer, 32, run=-1 - w), 8)
    results = [time_one(llm, bench_prompt(llm.tokenizer, int(b.prompt_tokens), run=r), int(b.decode_tokens))
               for r in range(int(b.repeats))]
    row = {
        "engine": "mistralrs-py",
        "model": cfg.model.name,
        "source": str(cfg.model.source),
        "architecture": llm.loaded.architecture,
        "quant": cfg.quant.type,
        "dtype": str(llm.loaded.dtype).removeprefix("torch."),
        "device": str(llm.loaded.device),
        "threads": torch.get_num_threads(),
        "prompt_tokens": len(prompt),
        "decode_tokens": int(b.decode_tokens),
        "repeats": int(b.repeats),
        "prefill_tok_s": round(statistics.median(r[0] for r in results), 2),
        "decode_tok_s": round(statistics.median(r[1] for r in results), 2),
        "load_s": round(llm.loaded.load_seconds, 2),
        "peak_rss_mb": peak_rss_mb(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"{row['model']} ({row['architecture']}, {row['dtype']}, {row['device']}, {row['threads']} threads): "
          f"prompt {row['prefill_tok_s']} tok/s ({row['prompt_tokens']} tokens), "
          f"decode {row['decode_tok_s']} tok/s ({row['decode_tokens']} tokens), "
          f"load {row['load_s']} s, peak RSS {row['peak_rss_mb']} MB  [median of {row['repeats']}]")
    rows = [row] + run_peers(cfg, llm, prompt, row)
    out = _output_path(b.output)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        with out.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")
    return row


def run_peers(cfg: DictConfig, llm, prompt: list[int], ours: dict) -> list[dict]:
    """The configured peer engines on the same file, prompt and threads; prints ratios."""
    from mistralrs.engine.bench.peers import PeerError, PeerJob, run_peer

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
            result = run_peer(name, pythons.get(name), job)
        except PeerError as exc:
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
