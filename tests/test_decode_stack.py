"""The native decode stack (every layer's decode step in one call) against the module path it
replaces, on each family's tiny model with quantized weights, and where it must stand aside."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mistralrs
from conftest import decode_path_logits
from mistralrs.engine.kernels import native_ops
from tiny_models import engine_greedy, make_tiny_llama

TINY = Path(__file__).parent / "data" / "tiny"
PROMPTS = [[1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100], [1, 84, 104, 101], [1] + list(range(40, 70))]

pytestmark = pytest.mark.skipif(native_ops() is None, reason="no C++ toolchain here")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("llama")
    make_tiny_llama(path)
    return path


def load(family: str, source: Path, *overrides: str):
    return mistralrs.load(f"model={family}", f"model.source={source}", "model.device=cpu", *overrides)


def plan_of(llm):
    model = llm.loaded.model
    return getattr(model, "base", model).decode_plan  # an X-LoRA model wraps the family's


def both_paths(llm):
    """(native, module) results of teacher-forced decoding and of batched greedy decoding."""
    plan = plan_of(llm)
    out = []
    for enabled in (True, False):
        plan.enabled = enabled
        logits = [decode_path_logits(llm, p) for p in PROMPTS]
        out.append((logits, engine_greedy(llm, PROMPTS, steps=6)))
    plan.enabled = True
    return out


@pytest.mark.parametrize("family, quant, extra", [
    ("llama", "q4_0", ()),
    ("llama", "none", ("model.dtype=float32",)),  # float32 weights: BLAS products inside the stack
    ("mistral", "q8_0", ("model.sliding_window=8",)),  # windows shorter than the prompts
    ("gemma", "q5_1", ()),  # GeGLU, (1 + w) norms, scaled embeddings
    ("gemma2", "q4_k", ()),  # soft-capped attention and final logits, sandwich norms, alternating windows
    ("gemma3", "q8_0", ()),  # Q/K norms, sandwich norms, local/global layers with two RoPE tables
    ("qwen2", "q4_k", ()),  # biases on q/k/v
    ("qwen2", "none", ("model.dtype=float32",)),  # biases over float32 weights
    ("qwen3", "q6_k", ()),  # plain-weight Q/K norms, head_dim != hidden / heads
    ("phi3", "q4_k", ()),  # fused weights split at load, LongRoPE tables, partial rotary, window 8
    ("mixtral", "q8_0", ()),  # sparse mixture: rows routed to their top-2 of 4 experts
    ("mixtral", "none", ("model.dtype=float32",)),
    ("qwen3moe", "q4_k", ()),  # Qwen3's attention with a mixture
])
def test_native_stack_equals_module_path(family, quant, extra, tiny_llama):
    source = tiny_llama if family == "llama" else TINY / f"{family}.gguf"
    llm = load(family, source, f"quant={quant}", *extra)
    assert llm.loaded.model.decode_plan.stack() is not None
    (native_logits, (native_tokens, native_lp)), (module_logits, (module_tokens, module_lp)) = both_paths(llm)
    for a, b in zip(native_logits, module_logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert native_tokens == module_tokens
    torch.testing.assert_close(native_lp, module_lp, atol=1e-5, rtol=1e-5)


def test_stack_stands_aside_where_it_does_not_apply(tiny_llama):
    # bfloat16 activations and weights
    assert load("llama", tiny_llama, "model.dtype=bfloat16").loaded.model.decode_plan.stack() is None


def test_mixture_rows_reach_their_own_experts():
    """Native batched decode equals each prompt decoded alone: every row is routed by its own logits."""
    llm = load("qwen3moe", TINY / "qwen3moe.gguf", "quant=q8_0")
    assert llm.loaded.model.decode_plan.stack() is not None
    together = engine_greedy(llm, PROMPTS, steps=6)
    alone = [engine_greedy(llm, [p], steps=6) for p in PROMPTS]
    assert together[0] == [a[0][0] for a in alone]
    # the same numbers up to summation order: a batch's matmuls block rows differently from one row's
    torch.testing.assert_close(together[1], torch.cat([a[1] for a in alone]), atol=1e-4, rtol=0)


def test_a_subclass_computing_otherwise_is_not_fused(tiny_llama):
    """A third-party layer that overrides forward must keep its own computation."""
    from mistralrs.engine.llama_base.model import LlamaDecoderLayer

    llm = load("llama", tiny_llama, "quant=q8_0")
    layer = llm.loaded.model.model.layers[0]

    class Doubled(LlamaDecoderLayer):
        def forward(self, x, rope, cache, batch):
            return 2 * super().forward(x, rope, cache, batch)

    layer.__class__ = Doubled
    llm.loaded.model.decode_plan.reset()
    assert layer.decode_spec() is None and llm.loaded.model.decode_plan.stack() is None


def greedy_both_paths(llm, prompts, steps=6):
    plan, out = plan_of(llm), []
    for enabled in (True, False):
        plan.enabled = enabled
        out.append(engine_greedy(llm, prompts, steps))
    plan.enabled = True
    return out


ADAPTER_TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-3}  # logprobs, native vs module path


def assert_same_decoding(llm, prompts, tolerance=1e-5):
    (native_tokens, native_lp), (module_tokens, module_lp) = greedy_both_paths(llm, prompts)
    assert native_tokens == module_tokens
    torch.testing.assert_close(native_lp, module_lp, atol=tolerance, rtol=0)


@pytest.fixture(params=[torch.float32, torch.bfloat16], ids=["f32-factors", "bf16-factors"])
def adapter_dtype(request, monkeypatch):
    """The native stack streams adapter factors in bfloat16; with float32 ones it must match the
    module path exactly, which shows the terms' structure is right apart from that rounding."""
    from mistralrs.engine.layers import decode_stack

    monkeypatch.setattr(decode_stack, "ADAPTER_DTYPE", request.param)
    return request.param


@pytest.mark.parametrize("weights", [("quant=q8_0", "model.weights=packed"), ()], ids=["q8_0", "float32"])
def test_unmerged_lora_terms_run_natively(adapter_dtype, weights):
    from test_lora_peft import CASES, IDS, load_lora

    llm = load_lora(CASES["two"], "adapter.merge=false", *weights)
    stack = plan_of(llm).stack()
    assert stack is not None and stack.source is None  # constant scales, folded into B
    assert_same_decoding(llm, IDS, ADAPTER_TOLERANCE[adapter_dtype])


@pytest.mark.parametrize("variant", ["v1_default", "v2_layerwise_topk_temp"])
@pytest.mark.parametrize("non_granular", [None, 2])
@pytest.mark.parametrize("weights", [("quant=q8_0", "model.weights=packed"), ()], ids=["q8_0", "float32"])
def test_xlora_passes_run_natively(tmp_path, variant, non_granular, adapter_dtype, weights):
    """Scaling pass (no terms) and main pass (per-token, per-layer scalings) through the native
    stack, for sequences of different lengths decoding together, equal the module path."""
    from xlora_layouts import load_xlora, mistralrs_layout, prompts

    extra = [] if non_granular is None else [f"adapter.tgt_non_granular_index={non_granular}"]
    llm = load_xlora(mistralrs_layout(tmp_path / "x", variant), *weights, *extra)
    stack = plan_of(llm).stack()
    assert stack is not None and stack.source is llm.loaded.model.mixer
    assert_same_decoding(llm, prompts([3, 9, 14]), ADAPTER_TOLERANCE[adapter_dtype])
