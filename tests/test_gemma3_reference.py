"""Gemma-3-270M Q4_K_M (the real GGUF from PyPI) against the float reference and llama.cpp.

Reference files: tests/data/reference/gemma-3-270m-q4_k_m.{transformers,llamacpp}.{json,npz} (the
npz files keep only what these tests read: top-32 ids/logits per position, llama.cpp's argmax).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import mistralrs
from conftest import REFERENCE, assert_as_close_as_llamacpp, decode_path_logits, load_reference

STEM = "gemma-3-270m-q4_k_m"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llm(gemma3_gguf):
    return mistralrs.load("model=gemma3", f"model.source={gemma3_gguf}", "model.dtype=float32", "model.device=cpu")


@pytest.fixture(scope="module")
def float_ref():
    return load_reference(STEM, "transformers")


@pytest.fixture(scope="module")
def llamacpp_ref():
    return load_reference(STEM, "llamacpp")


def test_config_from_gguf(llm):
    cfg = llm.loaded.config
    assert llm.loaded.architecture == "gemma3"
    assert (cfg.num_layers, cfg.hidden_size, cfg.head_dim, cfg.num_heads, cfg.num_kv_heads) == (18, 640, 256, 4, 1)
    assert cfg.local_layers == [(i + 1) % 6 != 0 for i in range(18)]
    assert cfg.sliding_window == 512 and cfg.query_pre_attn_scalar == 256
    assert (cfg.rope.theta, cfg.local_rope.theta) == (1_000_000.0, 10_000.0)
    assert cfg.tie_word_embeddings and cfg.final_logit_softcapping is None


def test_top_logits_match_float_reference_at_every_position(llm, float_ref):
    meta, arrays = float_ref
    for i, prompt in enumerate(meta["prompts"]):
        logits = llm.logits(prompt["ids"])
        top_ids = torch.from_numpy(arrays[f"p{i}_top_ids"]).long()
        expected = torch.from_numpy(arrays[f"p{i}_top_logits"])
        err = (logits.gather(1, top_ids) - expected).abs().max().item()
        assert err < 0.02, f"prompt {i}: top-32 logits differ by {err}"


def test_greedy_tokens_equal_float_reference(llm, float_ref):
    meta, _ = float_ref
    for prompt in meta["prompts"]:
        tokens = [e.token for _, e in llm.run([prompt["ids"]], max_tokens=32, temperature=0.0, ignore_eos=True)]
        assert tokens == prompt["greedy_ids"], f"prompt {prompt['index']}"


def test_argmax_agrees_with_llamacpp(llm, llamacpp_ref):
    meta, arrays = llamacpp_ref
    agree = total = 0
    for i, prompt in enumerate(meta["prompts"]):
        ours = llm.logits(prompt["ids"]).argmax(-1)
        theirs = torch.from_numpy(arrays[f"p{i}_top_ids"][:, 0]).long()
        agree += int((ours == theirs).sum())
        total += len(theirs)
    assert agree / total >= 0.90, f"argmax agreement with llama.cpp {agree}/{total}"


def test_chat_uses_gemma_template(llm):
    ids = llm.chat_prompt_ids([{"role": "user", "content": "Hi"}])
    tok = llm.tokenizer
    assert ids[0] == tok.bos_id == 2
    assert tok.decode(ids[1:], skip_special=False) == "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def fast(gemma3_gguf):
    """The default path: weights stay quantized (repacked for the CPU kernels)."""
    return mistralrs.load("model=gemma3", f"model.source={gemma3_gguf}", "model.device=cpu")


def test_default_fast_path_agrees_with_float_reference_as_often_as_llamacpp(fast, float_ref, llamacpp_ref):
    meta, ref = float_ref
    _, cpp = llamacpp_ref
    ours = theirs = total = 0
    for i, prompt in enumerate(meta["prompts"]):
        truth = torch.from_numpy(ref[f"p{i}_top_ids"][:, 0]).long()
        ours += int((fast.logits(prompt["ids"]).argmax(-1) == truth).sum())
        theirs += int((torch.from_numpy(cpp[f"p{i}_top_ids"][:, 0]).long() == truth).sum())
        total += len(truth)
    assert ours >= theirs, f"argmax agreement with the float reference {ours}/{total} < llama.cpp's {theirs}/{total}"


def test_fast_paths_are_as_close_to_float_reference_as_llamacpp(fast, float_ref, llamacpp_ref):
    last = dict(np.load(REFERENCE / f"{STEM}.last_logits.npz"))
    assert_as_close_as_llamacpp(fast.logits, float_ref, llamacpp_ref, last)  # prefill
    assert_as_close_as_llamacpp(lambda ids: decode_path_logits(fast, ids), float_ref, llamacpp_ref, last)  # decode


@pytest.mark.parametrize("kv_dtype", ["float32", "float16", "bfloat16", "q8_0"])
def test_each_kv_cache_dtype_keeps_decode_as_close_as_llamacpp(fast, float_ref, llamacpp_ref, kv_dtype):
    """engine.kv_cache_dtype: keys and values stored in that dtype, read by the decode kernels; each
    stays within DESIGN.md's bar (llama.cpp's argmax agreement and last-position error)."""
    from mistralrs.engine.core.kv_cache import KV_CACHE_DTYPES

    last = dict(np.load(REFERENCE / f"{STEM}.last_logits.npz"))
    assert_as_close_as_llamacpp(lambda ids: decode_path_logits(fast, ids, KV_CACHE_DTYPES[kv_dtype]), float_ref,
                                llamacpp_ref, last)
