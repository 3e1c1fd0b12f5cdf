"""A quant type registered by an out-of-tree plugin (tests/plugins/toyquant: TOY_Q8, GGUF type id 200)
is read, dequantized, run and quantized to like a built-in type, through the normal API."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import mistralrs
from cli_helpers import run_cli
from mistralrs.engine.formats.checkpoint import ModelFileError
from mistralrs.engine.quant.dequant import dequantize
from mistralrs.registry import DuplicateRegistration, PluginHost, QuantTypeSpec, hookimpl, registries, reset_plugin_host
from plugin_helpers import install_plugins
from tiny_models import rewrite_gguf

TINY_GGUF = Path(__file__).parent / "data" / "tiny" / "mistral.gguf"
TOY_ID, TOY_BLOCK = 200, 16
LINEAR_PARTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


# --- the format, independently in numpy: per 16 elements, a float16 scale then 16 int8 codes ----
def toy_encode(w: np.ndarray) -> np.ndarray:
    blocks = w.astype(np.float32).reshape(-1, TOY_BLOCK)
    scale = (np.abs(blocks).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float16)
    with np.errstate(divide="ignore"):
        inverse = np.where(scale == 0, np.float32(0), np.float32(1) / scale.astype(np.float32))
    codes = np.clip(np.round(blocks * inverse), -127, 127).astype(np.int8)
    return np.concatenate([scale.view(np.uint8), codes.view(np.uint8)], axis=1).reshape(w.shape[0], -1)


def toy_decode(data: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    blocks = data.reshape(-1, 2 + TOY_BLOCK)
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)
    return (blocks[:, 2:].view(np.int8).astype(np.float32) * scale).reshape(shape)


@pytest.fixture(scope="module")
def toy_site(tmp_path_factory) -> Path:
    return install_plugins(tmp_path_factory.mktemp("site"), "toyquant")


@pytest.fixture
def toy_plugin(toy_site, monkeypatch):
    """The toyquant plugin visible to the process-wide plugin host, for this test only."""
    monkeypatch.syspath_prepend(str(toy_site))
    reset_plugin_host()
    yield
    monkeypatch.undo()
    reset_plugin_host()


def _store(path: Path, toy: bool) -> Path:
    """The tiny F16 model with its linear weights as TOY_Q8 blocks (``toy``) or float32."""

    def convert(t):
        data = np.array(t.data)
        if t.name.rsplit(".", 2)[-2] not in LINEAR_PARTS:
            yield t.name, data, None, None
        elif toy:  # int8 bytes: the writer takes their shape as given instead of looking the type up
            yield t.name, toy_encode(data).view(np.int8), TOY_ID, data.shape
        else:
            yield t.name, data.astype(np.float32), None, None

    rewrite_gguf(TINY_GGUF, path, convert)
    return path


def _load(path: Path, *overrides: str):
    return mistralrs.load("model=mistral", f"model.source={path}", "model.dtype=float32", "model.device=cpu",
                          *overrides)


def test_plugin_type_is_in_the_table(toy_plugin):
    types = registries().quant_types
    spec = types.get("TOY_Q8")
    assert types.by_ggml_type(TOY_ID) is spec
    assert (spec.block_size, spec.type_size, spec.native) == (TOY_BLOCK, 2 + TOY_BLOCK, False)
    assert types.registered("TOY_Q8").plugin == "toyquant"


def test_plugin_dequantizes_as_the_format_says(toy_plugin):
    w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
    w[3, :16] = 0  # an all-zero block: scale 0
    data = toy_encode(w)
    got = dequantize(torch.from_numpy(data), "TOY_Q8", w.shape)
    np.testing.assert_array_equal(got.numpy(), toy_decode(data, w.shape))
    assert np.abs(got.numpy() - w).max() < np.abs(w).max() / 127


def test_plugin_quantizer_writes_the_format(toy_plugin):
    from mistralrs.engine.quant.quantize import quantize

    w = np.random.default_rng(1).standard_normal((4, 48)).astype(np.float32)
    assert quantize(torch.from_numpy(w), "TOY_Q8").numpy().tobytes() == toy_encode(w).tobytes()


def test_gguf_model_in_the_plugin_type_runs(toy_plugin, tmp_path):
    float_llm = _load(_store(tmp_path / "f32.gguf", toy=False))
    path = _store(tmp_path / "toy.gguf", toy=True)
    llm = _load(path)
    ckpt = llm.loaded.checkpoint
    raw = ckpt.tensor("blk.0.ffn_down.weight")
    assert raw.qtype == "TOY_Q8"
    weight = llm.loaded.model.get_parameter("model.layers.0.mlp.down_proj.weight")
    np.testing.assert_array_equal(weight.numpy(), toy_decode(raw.data.numpy(), raw.shape))

    ids = [1, 72, 101, 108, 108, 111, 44, 32, 119, 111, 114, 108, 100]
    expected = float_llm.logits(ids)
    got = llm.logits(ids)
    error = (got - expected).abs().max().item()
    assert 0 < error < 0.02 * expected.abs().max().item()  # quantized, and within int8 rounding

    packed = _load(path, "model.weights=packed")  # the compact-weights path: non-native types run dequantized
    assert packed.loaded.model.get_submodule("model.layers.0.mlp.down_proj").packed.kind == "dense"
    torch.testing.assert_close(packed.logits(ids), got, atol=1e-5, rtol=0)

    isq = _load(_store(tmp_path / "f32.gguf", toy=False), "quant.type=toy_q8")  # ISQ to the plugin's type
    torch.testing.assert_close(isq.logits(ids), got, atol=1e-5, rtol=0)


def test_unregistered_type_id_is_refused(tmp_path):
    with pytest.raises(ModelFileError, match=r"has type UNKNOWN\(200\), which no registered quant type supports"):
        _load(_store(tmp_path / "toy.gguf", toy=True))


def test_task_plugins_lists_the_type(toy_site):
    result = run_cli("task=plugins", extra_path=toy_site)
    assert result.returncode == 0, result.stderr
    assert "TOY_Q8" in result.stdout and "mistralrs-toyquant 0.0.1" in result.stdout


def test_a_type_id_belongs_to_one_type():
    impostor = type("Impostor", (), {})()

    @hookimpl
    def register_quant_types(register):
        register(QuantTypeSpec(name="MY_Q4", ggml_type=2, block_size=32, type_size=18, dequantize="x:y"))

    impostor.register_quant_types = register_quant_types
    with pytest.raises(DuplicateRegistration, match=r"GGUF type id '2'.*'quant'.*'impostor'"):
        PluginHost(extra_plugins=[("impostor", impostor)]).registries


def test_a_plugin_type_cannot_claim_native_kernels():
    """The C++ kernels know only the built-in types' layouts: a plugin saying native=True is refused."""
    from mistralrs.registry import RegistryError

    boaster = type("Boaster", (), {})()

    @hookimpl
    def register_quant_types(register):
        register(QuantTypeSpec(name="MY_Q9", ggml_type=201, block_size=32, type_size=33, dequantize="x:y", native=True))

    boaster.register_quant_types = register_quant_types
    with pytest.raises(RegistryError, match=r"'MY_Q9' from plugin 'boaster' says native=True"):
        PluginHost(extra_plugins=[("boaster", boaster)]).registries
