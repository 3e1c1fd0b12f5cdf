"""A model file's recommended sampling fills the sampling.* values the user left unset."""

from __future__ import annotations

import json
import logging

import pytest

from mistralrs.engine.formats.recommended_sampling import from_gguf, from_generation_config


def test_gguf_general_sampling_keys(caplog):
    md = {"general.sampling.temp": 0.6, "general.sampling.top_k": 20, "general.sampling.top_p": 0.95,
          "general.sampling.min_p": float("nan")}
    with caplog.at_level(logging.INFO):
        assert from_gguf(md, "m.gguf") == {"temperature": 0.6, "top_k": 20, "top_p": 0.95}
    assert "ignoring the recommended min_p=nan" in caplog.text
    assert from_gguf({"general.sampling.temp": "hot", "general.sampling.top_k": -1}, "m.gguf") == {}


def test_generation_config_and_do_sample_false():
    assert from_generation_config({"temperature": 0.3, "top_p": 0.9, "top_k": 50}, "g.json") == {
        "temperature": 0.3, "top_p": 0.9, "top_k": 50}
    assert from_generation_config({"do_sample": False, "temperature": 0.9}, "g.json") == {"temperature": 0.0}
    assert from_generation_config({"top_k": True, "top_p": 2.0}, "g.json") == {}


pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tiny_models import make_tiny_llama

    path = tmp_path_factory.mktemp("recommended") / "llama"
    make_tiny_llama(path)
    config = json.loads((path / "generation_config.json").read_text())
    config.update({"do_sample": True, "temperature": 0.25, "top_k": 7})
    (path / "generation_config.json").write_text(json.dumps(config))
    return path


def test_unset_values_take_the_models_recommendation(model_dir):
    import mistralrs

    llm = mistralrs.load("model=llama", f"model.source={model_dir}", "model.dtype=float32", "model.device=cpu")
    s = llm.config.sampling
    assert (s.temperature, s.top_k, s.top_p, s.min_p) == (0.25, 7, 1.0, 0.0)  # the rest: built-in defaults
    given = mistralrs.load("model=llama", f"model.source={model_dir}", "model.dtype=float32", "model.device=cpu",
                           "sampling.temperature=1.5")
    assert (given.config.sampling.temperature, given.config.sampling.top_k) == (1.5, 7)  # the user's value wins
