"""Benchmark mistral.rs (its `mistralrs` PyPI wheel, in its own environment since it shares our import
name) on a GGUF file; run by engine/bench/peers.py. Reads a JSON job from argv[1], prints one JSON
result. mistral.rs takes a text prompt, so this one sends the benchmark text and reports the
engine's own prompt/completion throughput (its `usage`), median over repeats."""

import json
import os
import statistics
import sys
import time

from peak_rss import peak_rss_mb  # this script's folder is on sys.path


def main() -> None:
    job = json.loads(sys.argv[1])
    os.environ.setdefault("RAYON_NUM_THREADS", str(job["threads"]))
    from mistralrs import CompletionRequest, Runner, Which

    start = time.perf_counter()
    directory, name = os.path.split(job["model"])
    runner = Runner(which=Which.GGUF(quantized_model_id=directory, quantized_filename=name), max_seqs=1,
                    prefix_cache_n=0, token_source="none")
    load_s = time.perf_counter() - start
    prefill, decode = [], []
    for run in range(job["repeats"]):
        request = CompletionRequest(model="default", prompt=f"Run {run}. " + job["prompt_text"],
                                    max_tokens=job["decode_tokens"], temperature=0.0)
        usage = runner.send_completion_request(request).usage
        prefill.append(usage.avg_prompt_tok_per_sec)
        decode.append(usage.avg_compl_tok_per_sec)
    print(json.dumps({
        "engine": "mistral.rs",
        "prefill_tok_s": round(statistics.median(prefill), 2),
        "decode_tok_s": round(statistics.median(decode), 2),
        "load_s": round(load_s, 2),
        "peak_rss_mb": peak_rss_mb(),
    }))


if __name__ == "__main__":
    main()
