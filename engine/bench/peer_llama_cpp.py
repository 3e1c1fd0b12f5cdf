"""Benchmark llama.cpp (through llama-cpp-python) on a GGUF file; run by engine/bench/peers.py in
whatever Python has llama_cpp installed. Reads a JSON job from argv[1], prints one JSON result.

Same measurement as ours: prefill = evaluating the prompt ids, decode = greedy tokens fed back one
at a time (EOS ignored), wall-clock, median over repeats."""

import json
import statistics
import sys
import time

from peak_rss import peak_rss_mb  # this script's folder is on sys.path


def main() -> None:
    job = json.loads(sys.argv[1])
    import numpy as np
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(model_path=job["model"], n_threads=job["threads"], n_threads_batch=job["threads"],
                n_ctx=len(job["prompt_ids"]) + job["decode_tokens"] + 8, n_batch=512, verbose=False)
    load_s = time.perf_counter() - start
    n_vocab = llm.n_vocab()

    def greedy() -> int:  # the last position's logits, read straight from the context
        return int(np.argmax(np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(n_vocab,))))

    prefill, decode = [], []
    for run in range(job["repeats"]):
        ids = [job["run_prefix_ids"][run % len(job["run_prefix_ids"])]] + job["prompt_ids"][1:]
        llm.reset()
        t0 = time.perf_counter()
        llm.eval(ids)
        t1 = time.perf_counter()
        token = greedy()
        for _ in range(job["decode_tokens"] - 1):
            llm.eval([token])
            token = greedy()
        t2 = time.perf_counter()
        prefill.append(len(ids) / (t1 - t0))
        decode.append((job["decode_tokens"] - 1) / (t2 - t1))
    print(json.dumps({
        "engine": "llama.cpp",
        "prefill_tok_s": round(statistics.median(prefill), 2),
        "decode_tok_s": round(statistics.median(decode), 2),
        "load_s": round(load_s, 2),
        "peak_rss_mb": peak_rss_mb(),
    }))


if __name__ == "__main__":
    main()
