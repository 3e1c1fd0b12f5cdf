"""The X-LoRA oracle (tests/data/xlora, from PEFT) laid out as each reader expects it."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from mistralrs.engine.core.batch import contiguous_batch
from mistralrs.engine.core.kv_cache import KVCache

DATA = Path(__file__).parent / "data" / "xlora"
BASE = DATA / "base_model"
ADAPTERS = DATA / "adapters"
VARIANTS = ["v1_default", "v2_layerwise_topk_temp"]
ATOL = 1e-4
STEPS = 6


def oracle(variant: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(DATA / "xlora" / variant / "oracle.safetensors"))


def mistralrs_layout(dest: Path, variant: str) -> Path:
    """mistral.rs: config, classifier, ordering file and the adapter folders side by side."""
    src = DATA / "xlora" / variant
    dest.mkdir(parents=True)
    for name in ("xlora_config.json", "xlora_classifier.safetensors", "ordering.json"):
        shutil.copy(src / name, dest / name)
    for adapter in json.loads((src / "ordering.json").read_text())["order"]:
        shutil.copytree(ADAPTERS / adapter, dest / adapter)
    return dest


def peft_layout(dest: Path, variant: str) -> Path:
    """PEFT: adapter_config.json (peft_type XLORA) naming the adapter folders, and the classifier."""
    src = DATA / "xlora" / variant
    dest.mkdir(parents=True)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["adapters"] = {name: str((src / path).resolve()) for name, path in cfg["adapters"].items()}
    (dest / "adapter_config.json").write_text(json.dumps(cfg))
    shutil.copy(src / "peft_classifier.safetensors", dest / "peft_classifier.safetensors")
    return dest


def load_xlora(source: Path, *overrides: str):
    import mistralrs

    return mistralrs.load("model=llama", f"model.source={BASE}", "model.dtype=float32", "model.device=cpu",
                          "adapter=xlora", f"adapter.source={source}", *overrides)


# -- decoding through the engine vs recomputing both passes ------------------------------------
def prompts(lengths: list[int], seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[1] + [rng.randrange(3, 256) for _ in range(n - 1)] for n in lengths]


def decode(llm, batch: list[list[int]], steps: int = STEPS) -> tuple[list[list[int]], list[list[float]]]:
    tokens, logprobs = [[] for _ in batch], [[] for _ in batch]
    for i, event in llm.run(batch, max_tokens=steps, temperature=0.0, ignore_eos=True, logprobs=1):
        tokens[i].append(event.token)
        logprobs[i].append(event.logprob.logprob)
    return tokens, logprobs


def reference_logits(model, ids: list[int], freeze_at: int | None = None) -> torch.Tensor:
    """Both passes over the whole sequence at once; ``freeze_at``: positions from there on take the
    scalings of the position before (the non-granular mode)."""
    n = len(ids)
    cache = KVCache(model.cache_spec(), 2 * n, torch.float32, torch.device("cpu"))
    x = torch.tensor(ids)
    with torch.inference_mode():
        scalings = model.scalings(x, contiguous_batch([0], [n], [0], [0], x.device), cache)
        if freeze_at is not None:
            scalings[freeze_at:] = scalings[freeze_at - 1]
        model.mixer.main_pass(scalings, torch.float32)
        try:
            hidden = model.base(x, contiguous_batch([0], [n], [0], [n], x.device), cache)
        finally:
            model.mixer.clear()
        return model.logits(hidden).log_softmax(-1)


def check_against_reference(llm, batch, tokens, logprobs, freeze_after: int | None = None) -> None:
    model = llm.loaded.model
    for ids, out, lps in zip(batch, tokens, logprobs):
        freeze_at = None if freeze_after is None else len(ids) + freeze_after
        ref = reference_logits(model, ids + out, freeze_at)
        steps = ref[len(ids) - 1 : len(ids) - 1 + len(out)]
        assert out == steps.argmax(-1).tolist()
        expected = steps.gather(1, torch.tensor(out).unsqueeze(1)).squeeze(1)
        torch.testing.assert_close(torch.tensor(lps), expected, atol=ATOL, rtol=0)
