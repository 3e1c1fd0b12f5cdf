"""YaRN and LongRoPE (engine/layers/rope.py) as transformers computes them: the frequencies and the
attention factor for several parameter sets, then whole tiny models from safetensors and GGUF.

- YaRN on a tiny Qwen2 (Qwen2.5's long-context setting) with an original context of 16, so the
  24-token prompts run past it.
- LongRoPE on the tiny Phi-3 (original context 16): which factor set runs is fixed by the context
  the engine is built for (``model.max_seq_len``), as llama.cpp fixes it by its context size; see
  ``inverse_frequencies`` for why a paged engine must not switch per step as transformers does.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

import mistralrs
from mistralrs.engine.layers.rope import attention_scale, inverse_frequencies
from mistralrs.engine.llama_base.config import ConfigError, config_from_hf, gguf_rope, hf_rope
from tiny_models import (PHI3_LONG_FACTORS, assert_matches_transformers, make_tiny_phi3,
                         make_tiny_qwen2, reference_logits, rewrite_gguf)

pytest.importorskip("transformers")

TINY = Path(__file__).parent / "data" / "tiny"
ATOL = 1e-4
IDS = [[1, *range(40, 63)], [1, *range(100, 123)]]  # 24 tokens: past the original context of 16
SHORT = [ids[:12] for ids in IDS]  # 12 tokens + 4 steps: within it
YARN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0}
YARN_QWEN2 = {"rope_parameters": YARN, "max_position_embeddings": 64}  # 64 / 16 = the factor


def load(family: str, source: Path, *overrides: str):
    return mistralrs.load(f"model={family}", f"model.source={source}", "model.dtype=float32", "model.device=cpu",
                          *overrides)


# --- the tables against transformers' own functions ---------------------------------------------
@pytest.mark.parametrize("params", [
    {"factor": 4.0, "original_max_position_embeddings": 16},
    {"factor": 8.0, "original_max_position_embeddings": 64, "beta_fast": 16, "beta_slow": 2, "truncate": False},
    {"factor": 4.0, "original_max_position_embeddings": 32768, "attention_factor": 1.5},  # Qwen2.5's 128k recipe, own factor
    {"factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0, "mscale_all_dim": 0.5},
], ids=["tiny", "betas-untruncated", "attention-factor", "mscale"])
def test_yarn_frequencies_and_attention_factor_are_transformers(params):
    from transformers import Qwen2Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = Qwen2Config(hidden_size=64, num_attention_heads=4, max_position_embeddings=256,
                         rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, **params})
    want_freq, want_scale = ROPE_INIT_FUNCTIONS["yarn"](config)
    rope = hf_rope(config.to_dict(), 16)
    assert rope.scaling == "yarn"
    torch.testing.assert_close(inverse_frequencies(rope), want_freq, atol=0, rtol=0)
    assert attention_scale(rope) == pytest.approx(want_scale, rel=1e-12)


@pytest.mark.parametrize("partial", [1.0, 0.75])
def test_longrope_frequencies_and_attention_factor_are_transformers(partial):
    from transformers import Phi3Config
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    dim = int(16 * partial)
    short, long = [1 + 0.1 * i for i in range(dim // 2)], [1 + 2.5 * i for i in range(dim // 2)]
    config = Phi3Config(hidden_size=64, num_attention_heads=4, max_position_embeddings=4096,
                        original_max_position_embeddings=256, partial_rotary_factor=partial, pad_token_id=0,
                        rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0,
                                         "short_factor": short, "long_factor": long})
    rope = hf_rope(config.to_dict(), 16)
    assert (rope.scaling, rope.dim, rope.original_max_position, rope.factor) == ("longrope", dim, 256, 16.0)
    for context, seq_len in [(256, None), (257, 257), (4096, 4096)]:
        want_freq, want_scale = ROPE_INIT_FUNCTIONS["longrope"](config, seq_len=seq_len)
        torch.testing.assert_close(inverse_frequencies(rope, context), want_freq, atol=0, rtol=0)
        assert attention_scale(rope) == pytest.approx(want_scale, rel=1e-12)


def test_phi3_128k_config_json_shape():
    """Phi-3-mini-128k-instruct's config.json: rope_scaling type "su" (now "longrope") beside a top-level
    original_max_position_embeddings, attention factor sqrt(1 + ln 32 / ln 4096) = 1.19024."""
    cfg = {"original_max_position_embeddings": 4096, "max_position_embeddings": 131072, "rope_theta": 10000.0,
           "rope_scaling": {"type": "su", "short_factor": [1.0] * 48, "long_factor": [2.0] * 48}}
    rope = hf_rope(cfg, 96)
    assert (rope.scaling, rope.original_max_position, rope.factor) == ("longrope", 4096, 32.0)
    assert attention_scale(rope) == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)))
    assert attention_scale(rope) == pytest.approx(1.19024, abs=1e-5)


def test_gguf_yarn_keys():
    meta = {"qwen2.context_length": 131072, "qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
            "qwen2.rope.scaling.original_context_length": 32768, "qwen2.rope.freq_base": 1e6,
            "qwen2.rope.scaling.yarn_beta_fast": 16.0, "qwen2.rope.scaling.yarn_beta_slow": 2.0}
    rope = gguf_rope(meta, "qwen2", 128)
    assert (rope.scaling, rope.factor, rope.original_max_position, rope.beta_fast, rope.beta_slow) == \
        ("yarn", 4.0, 32768, 16.0, 2.0)
    assert attention_scale(rope) == pytest.approx(0.1 * math.log(4) + 1)
    assert attention_scale(gguf_rope({**meta, "qwen2.rope.scaling.yarn_attn_factor": 1.25}, "qwen2", 128)) == 1.25
    no_factor = {k: v for k, v in meta.items() if k != "qwen2.rope.scaling.factor"}
    assert gguf_rope(no_factor, "qwen2", 128).factor == 4.0  # the context's growth


BASE = {"vocab_size": 100, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "max_position_embeddings": 256}


@pytest.mark.parametrize("rope, message", [
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 1.0}, "non-finite|no frequencies"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": -1.0}, "beta_fast"),
    ({"rope_type": "yarn", "factor": 4.0, "attention_factor": float("nan")}, "attention_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 7}, "long_factors"),
    ({"rope_type": "longrope", "long_factor": [1.0] * 8}, "short_factors"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 7 + [0.0], "long_factor": [1.0] * 8}, "short_factor"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
      "original_max_position_embeddings": 1}, "non-finite|no frequencies"),
    ({"rope_type": "longrope", "short_factor": "x", "long_factor": [1.0] * 8}, "short_factor"),
])
def test_nonsense_scaling_parameters_are_config_errors(rope, message):
    with pytest.raises(ConfigError, match=message):
        config_from_hf({**BASE, "rope_scaling": rope})


# --- YaRN: a tiny Qwen2 ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def yarn_qwen2(tmp_path_factory):
    path = tmp_path_factory.mktemp("qwen2-yarn")
    return path, make_tiny_qwen2(path, **YARN_QWEN2)


def test_yarn_qwen2_matches_transformers_beyond_the_original_context(yarn_qwen2, tmp_path):
    path, ref = yarn_qwen2
    llm = load("qwen2", path)
    rope = llm.loaded.config.rope
    assert (rope.scaling, rope.factor, rope.original_max_position) == ("yarn", 4.0, 16)
    assert_matches_transformers(llm, ref, IDS, 8)
    plain = make_tiny_qwen2(tmp_path)  # the same weights with plain RoPE: far from YaRN's numbers
    assert (reference_logits(plain, IDS[:1]) - reference_logits(ref, IDS[:1])).abs().max() > 10 * ATOL


def test_yarn_from_the_gguf_keys_llama_cpps_converter_writes(tmp_path):
    """The tiny Qwen2 GGUF with the keys convert_hf_to_gguf.py writes for this YaRN config.json
    (``rope.scaling.type`` yarn, ``.factor`` 4, ``.original_context_length`` 16: checked with
    llama-cpp-python 0.3.36's converter) equals transformers' YaRN model on the file's float16 weights.

    llama.cpp's own YaRN differs from transformers in two corners this follows transformers in: it
    ignores ``rope.scaling.yarn_attn_factor`` (a config.json ``attention_factor``) and always uses
    0.1 ln(factor) + 1, and it always rounds the ramp to whole dimensions (transformers' ``truncate``,
    which GGUF does not record, may turn that off). Neither shows with this config."""
    from fixtures.make_tiny_ggufs import round_to_f16

    ref = make_tiny_qwen2(tmp_path / "hf", **YARN_QWEN2)
    round_to_f16(ref)
    path = tmp_path / "qwen2-yarn.gguf"
    rewrite_gguf(TINY / "qwen2.gguf", path, lambda t: [(t.name, np.array(t.data), None, None)],
                 {"qwen2.rope.scaling.type": "yarn", "qwen2.rope.scaling.factor": 4.0,
                  "qwen2.rope.scaling.original_context_length": 16})
    llm = load("qwen2", path)
    assert llm.loaded.config.rope.scaling == "yarn"
    assert_matches_transformers(llm, ref, IDS, 8)


# --- LongRoPE: the tiny Phi-3 --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_phi3(tmp_path_factory):
    path = tmp_path_factory.mktemp("phi3")
    return path, make_tiny_phi3(path)


def test_longrope_within_the_original_context_takes_the_short_factors(tiny_phi3):
    """A context of at most the original one (model.max_seq_len=16): 12-token prompts and 4 greedy
    steps equal transformers, which takes the short factors while a sequence holds at most 16
    positions. The default context (256) takes the long factors for every position: on such short
    sequences it parts from transformers (by design, see ``inverse_frequencies``)."""
    path, ref = tiny_phi3
    short = load("phi3", path, "model.max_seq_len=16")
    assert_matches_transformers(short, ref, SHORT, 4)
    long = load("phi3", path)
    assert (long.logits(SHORT[0]) - reference_logits(ref, SHORT[:1])[0]).abs().max() > 1e-2


def test_longrope_beyond_the_original_context_takes_the_long_factors(tiny_phi3):
    path, ref = tiny_phi3
    llm = load("phi3", path, "engine.block_size=4", "engine.max_batch_tokens=5")  # chunked prefill, small pages
    assert llm.loaded.config.rope.long_factors == PHI3_LONG_FACTORS
    assert_matches_transformers(llm, ref, IDS, 8)
