"""Legacy GGML llama files (ggml, ggmf v1, ggjt v1-v3), written by tests/ggml_writer.py.

The writer is checked against llama.cpp's own ``convert_llama_ggml_to_gguf.py`` (from the
llama-cpp-python sdist, fetched once into pytest's cache), whose reader must yield the same tensors
and vocabulary as ours; its GGUF output (one call fixed, see llama_cpp_ggml_driver.py) must load to
the same logits as our direct GGML load.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import mistralrs
from ggml_writer import (ALL_VERSIONS, FILE_TYPE, TYPE_ID, Hparams, Tensor, random_llama, readable_types,
                         sentencepiece_vocab, tensor, write_ggml, write_llama)
from mistralrs.conf.schema import ModelConfig
from mistralrs.engine.formats.checkpoint import ModelFileError
from mistralrs.engine.formats.ggml_file import gguf_name, open_ggml
from mistralrs.engine.loading.loader import open_checkpoint
from mistralrs.registry import registries

TESTS = Path(__file__).parent
SDIST = "llama-cpp-python==0.3.36"
DRIVER = TESTS / "llama_cpp_ggml_driver.py"


@pytest.fixture(scope="session")
def llama_cpp_dir(request, tmp_path_factory) -> Path:
    """vendor/llama.cpp of the llama-cpp-python sdist (the converter and its gguf-py), cached across runs."""
    cache = getattr(request.config, "cache", None)
    root = Path(cache.mkdir("llama-cpp-python-0.3.36")) if cache else tmp_path_factory.mktemp("llama-cpp")
    target = root / "llama.cpp"
    if (target / "convert_llama_ggml_to_gguf.py").is_file():
        return target
    download = tmp_path_factory.mktemp("sdist")
    done = subprocess.run([sys.executable, "-m", "pip", "download", SDIST, "--no-binary", ":all:", "--no-deps",
                           "-d", str(download)], capture_output=True, text=True)
    tarballs = list(download.glob("*.tar.gz"))
    if done.returncode or not tarballs:
        pytest.fail(f"could not download the {SDIST} sdist (llama.cpp's converter): {done.stderr[-2000:]}")
    staging = tmp_path_factory.mktemp("sdist-x")
    with tarfile.open(tarballs[0]) as tar:
        wanted = [m for m in tar.getmembers() if "/vendor/llama.cpp/" in m.name
                  and (m.name.endswith("/convert_llama_ggml_to_gguf.py") or "/vendor/llama.cpp/gguf-py/" in m.name)]
        tar.extractall(staging, members=wanted, filter="data")
    source = next(staging.glob("*/vendor/llama.cpp"))
    shutil.rmtree(target, ignore_errors=True)
    shutil.move(str(source), str(target))
    return target


def converter_read(llama_cpp: Path, paths: list[Path]) -> list[dict]:
    out = subprocess.run([sys.executable, str(DRIVER), str(llama_cpp), "read", *map(str, paths)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def converter_convert(llama_cpp: Path, src: Path, dst: Path, gqa: int = 1, eps: str = "5.0e-06") -> Path:
    subprocess.run([sys.executable, str(DRIVER), str(llama_cpp), "convert", str(src), str(dst), str(gqa), eps, "2048"],
                   capture_output=True, text=True, check=True)
    return dst


def label(kind: str, version: int) -> str:
    return f"{kind}-v{version}"


# ------------------------------------------------------------- (a) every version x every type vs llama.cpp

CASES = [(kind, version, qtype) for kind, version in ALL_VERSIONS for qtype in TYPE_ID]


@pytest.fixture(scope="session")
def written(tmp_path_factory, llama_cpp_dir) -> dict:
    """One small llama file per (version, type), and what llama.cpp's reader makes of each."""
    root = tmp_path_factory.mktemp("ggml-cases")
    weights = random_llama(n_vocab=260, n_embd=256, n_ff=256, n_layer=1, n_head=2)
    paths = {}
    for kind, version, qtype in CASES:
        paths[kind, version, qtype] = write_llama(root / f"{label(kind, version)}-{qtype}.bin", kind, version,
                                                   weights, qtype, n_head=2)
    results = converter_read(llama_cpp_dir, list(paths.values()))
    return {case: (path, result) for (case, path), result in zip(paths.items(), results)}


@pytest.mark.parametrize("kind,version,qtype", CASES, ids=[f"{label(k, v)}-{q}" for k, v, q in CASES])
def test_reader_agrees_with_llama_cpp(written, kind, version, qtype):
    path, theirs = written[kind, version, qtype]
    if qtype not in readable_types(kind, version):
        assert not theirs["ok"], theirs  # llama.cpp refuses the older block layout; so do we, by name
        with pytest.raises(ModelFileError, match=rf"{kind} .*(changed in ggjt v[23]|before ggjt v2)"):
            open_ggml(path)
        return
    assert theirs["ok"], theirs["error"]
    ours = open_ggml(path)
    assert ours.header.kind.upper() == theirs["format"] and (ours.header.version or 1) == theirs["version"]
    assert list(dataclasses.astuple(ours.header.hparams)) == theirs["hparams"]
    assert ours.metadata["llama.feed_forward_length"] == theirs["n_ff"]
    assert [[t.hex(), s] for t, s in ours.header.vocab] == [[t, pytest.approx(s)] for t, s in theirs["vocab"]]
    assert len(ours.header.tensors) == len(theirs["tensors"])
    raw = path.read_bytes()
    for mine, t in zip(ours.header.tensors, theirs["tensors"]):
        assert (mine.name, mine.qtype, mine.offset, mine.n_bytes) == (t["name"], t["type"], t["start"], t["n_bytes"])
        assert mine.shape == tuple(reversed(t["dims"]))
        got = ours.tensor(gguf_name(mine.name))
        assert got.shape == mine.shape and got.qtype == t["type"]
        assert got.data.numpy().tobytes() == raw[t["start"] : t["start"] + t["n_bytes"]]


# ------------------------------------------------------------- (b) a tiny llama: GGML vs HF and vs the converter's GGUF

_HF_PARTS = {
    "self_attn.q_proj": "attention.wq", "self_attn.k_proj": "attention.wk", "self_attn.v_proj": "attention.wv",
    "self_attn.o_proj": "attention.wo", "mlp.gate_proj": "feed_forward.w1", "mlp.down_proj": "feed_forward.w2",
    "mlp.up_proj": "feed_forward.w3", "input_layernorm": "attention_norm", "post_attention_layernorm": "ffn_norm",
}  # fmt: skip


def interleave_rope_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's rotate-half Q/K rows in the interleaved order llama.cpp (and its GGML files) store."""
    return w.reshape(n_heads, 2, w.shape[0] // n_heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def legacy_weights_from_hf(model, n_heads: int, n_kv_heads: int) -> dict[str, np.ndarray]:
    out = {}
    for name, p in model.state_dict().items():
        w = p.detach().float().numpy()
        if name == "model.embed_tokens.weight":
            out["tok_embeddings.weight"] = w
        elif name == "model.norm.weight":
            out["norm.weight"] = w
        elif name == "lm_head.weight":
            out["output.weight"] = w
        else:
            _, _, layer, *part, _ = name.split(".")
            part = ".".join(part)
            if part == "self_attn.q_proj":
                w = interleave_rope_rows(w, n_heads)
            elif part == "self_attn.k_proj":
                w = interleave_rope_rows(w, n_kv_heads)
            out[f"layers.{layer}.{_HF_PARTS[part]}.weight"] = w
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from tiny_models import BYTE_VOCAB, make_tiny_llama

    root = tmp_path_factory.mktemp("tiny-ggml")
    model = make_tiny_llama(root / "hf", seed=3)  # 4 heads, 2 KV heads, hidden 64, rms eps 1e-5
    weights = legacy_weights_from_hf(model, 4, 2)
    assert len(weights["tok_embeddings.weight"]) == BYTE_VOCAB
    return root, weights


def load(path: Path, *overrides: str):
    return mistralrs.load("model=llama", f"model.source={path}", "model.dtype=float32", "model.device=cpu", *overrides)


PROMPTS = [[1, 72, 101, 108, 108, 111], [1, 5, 200, 17, 3, 99, 250, 42, 8]]
TINY_OPTIONS = ("model.gqa=2", "model.rms_norm_eps=1e-5")  # gqa could be left out: the K shape says it


@pytest.mark.parametrize("kind,version", [("ggml", 0), ("ggmf", 1), ("ggjt", 3)])
def test_f32_ggml_matches_the_hf_model(tiny, kind, version):
    root, weights = tiny
    path = write_llama(root / f"{kind}{version}-f32.bin", kind, version, weights, "F32")
    ggml, hf = load(path, *TINY_OPTIONS), load(root / "hf")
    assert ggml.loaded.checkpoint.format == "ggml" and ggml.loaded.config.num_kv_heads == 2
    for ids in PROMPTS:
        torch.testing.assert_close(ggml.logits(ids), hf.logits(ids), atol=2e-5, rtol=0)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_1", "F16"])
def test_ggml_equals_the_gguf_llama_cpp_converts_it_to(tiny, llama_cpp_dir, qtype):
    root, weights = tiny
    path = write_llama(root / f"ggjt3-{qtype}.bin", "ggjt", 3, weights, qtype)
    gguf = converter_convert(llama_cpp_dir, path, root / f"{qtype}.gguf", gqa=2, eps="1e-5")
    ggml, converted = load(path, *TINY_OPTIONS), load(gguf)
    ours, theirs = ggml.loaded.checkpoint, converted.loaded.checkpoint
    # the vocabulary arrays from fresh readings: a loaded checkpoint hands them to its tokenizer
    from mistralrs.engine.formats.ggml_file import GGMLCheckpoint
    from mistralrs.engine.formats.gguf_file import VOCABULARY_ARRAYS, GGUFCheckpoint

    fresh = GGMLCheckpoint(path).metadata
    for key, value in GGUFCheckpoint(gguf).metadata.items():
        if key.startswith(("llama.", "tokenizer.")):
            mine = fresh[key] if key in VOCABULARY_ARRAYS else ours.metadata[key]
            assert mine == pytest.approx(value) if isinstance(value, float) else mine == value, key
    assert sorted(ours.tensor_names()) == sorted(theirs.tensor_names())
    for name in theirs.tensor_names():
        a, b = ours.tensor(name), theirs.tensor(name)
        assert (a.qtype, a.shape) == (b.qtype, b.shape) and torch.equal(a.data, b.data), name
    for ids in PROMPTS:
        assert torch.equal(ggml.logits(ids), converted.logits(ids))
    assert ggml.tokenizer.encode("hello a b") == converted.tokenizer.encode("hello a b")


def test_tokenizer_json_overrides_the_file_vocabulary(tiny):
    root, weights = tiny
    path = write_llama(root / "override.bin", "ggjt", 3, weights, "F32")
    llm = load(path, *TINY_OPTIONS, f"model.tokenizer={root / 'hf' / 'tokenizer.json'}")
    hf = load(root / "hf")
    assert llm.tokenizer.encode("héllo, world") == hf.tokenizer.encode("héllo, world")
    assert llm.tokenizer.encode("héllo") != load(path, *TINY_OPTIONS).tokenizer.encode("héllo")


def test_options_reach_the_config(tiny):
    root, weights = tiny
    path = write_llama(root / "options.bin", "ggjt", 3, weights, "F32")
    cfg = load(path, "model.gqa=2", "model.rope_freq_base=500000", "model.rms_norm_eps=1e-6",
               "model.max_seq_len=512").loaded.config
    assert (cfg.num_kv_heads, cfg.rope.theta, cfg.rms_norm_eps, cfg.max_position_embeddings) == (2, 500000.0, 1e-6, 512)
    defaults = open_checkpoint(path, registries(), ModelConfig(name="x", source=str(path))).metadata
    assert defaults["llama.attention.head_count_kv"] == 2 and defaults["llama.context_length"] == 2048
    assert defaults["llama.attention.layer_norm_rms_epsilon"] == 5e-6 and defaults["llama.rope.freq_base"] == 10000.0


def test_ggml_is_a_registered_format():
    regs = registries()
    assert "ggml" in regs.formats.names()


# ------------------------------------------------------------- (c) SmolLM2's GGUF blocks re-written as ggjt v3

def ggjt_from_gguf(src: Path, dst: Path) -> Path:
    """SmolLM2's tensors, bytes untouched, under legacy names (its tied head stored as output.weight)."""
    from mistralrs.engine.formats.gguf_file import open_gguf

    g = open_gguf(src)
    md = g.metadata
    legacy = {gguf_name(n): n for n in _all_legacy_names(md["llama.block_count"])}
    tensors = []
    for name in [*g.tensor_names(), "output.weight"]:
        raw = g.tensor(name if name in g.tensor_names() else "token_embd.weight")
        tensors.append(_raw_tensor(legacy[name], raw))
    tokens = md["tokenizer.ggml.tokens"]
    vocab = [(t.replace("\u2581", " ").encode(), 0.0) for t in tokens]
    heads = md["llama.attention.head_count"]
    hp = Hparams(len(tokens), md["llama.embedding_length"], 256, heads, md["llama.block_count"],
                 md["llama.embedding_length"] // heads, FILE_TYPE["Q4_1"])
    return write_ggml(dst, "ggjt", 3, hp, vocab, tensors)


def _all_legacy_names(n_layer: int) -> list[str]:
    parts = ["attention.wq", "attention.wk", "attention.wv", "attention.wo", "attention_norm", "feed_forward.w1",
             "feed_forward.w2", "feed_forward.w3", "ffn_norm"]
    return ["tok_embeddings.weight", "norm.weight", "output.weight"] + [
        f"layers.{i}.{p}.weight" for i in range(n_layer) for p in parts]


def _raw_tensor(name: str, raw) -> Tensor:
    return Tensor(name, raw.qtype, tuple(raw.shape), raw.data.numpy().tobytes())


def test_smollm2_as_ggjt_generates_what_its_gguf_does(smollm2_gguf, tmp_path):
    path = ggjt_from_gguf(smollm2_gguf, tmp_path / "smollm2.ggjt.bin")
    common = ("model=llama", "model.device=cpu")
    gguf = mistralrs.load(*common, f"model.source={smollm2_gguf}")
    eps = gguf.loaded.checkpoint.metadata["llama.attention.layer_norm_rms_epsilon"]
    ggml = mistralrs.load(*common, f"model.source={path}", "model.gqa=3", "model.rope_freq_base=100000",
                          f"model.rms_norm_eps={eps!r}")
    assert ggml.loaded.checkpoint.format == "ggml"
    ids = gguf.tokenizer.encode("The capital of France is")
    greedy = [[e.token for _, e in llm.run([ids], max_tokens=16, temperature=0, ignore_eos=True)] for llm in (gguf, ggml)]
    assert greedy[0] == greedy[1] and len(greedy[0]) == 16


# ------------------------------------------------------------- (d) what is refused, and how

@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    weights = random_llama(n_vocab=260, n_embd=64, n_ff=128, n_layer=1, n_head=4)
    return write_llama(tmp_path_factory.mktemp("good") / "good.bin", "ggjt", 3, weights, "Q8_0")


@pytest.mark.parametrize("keep", [3, 6, 20, 40, 500, 3000, -1, -100])
def test_truncated_files_name_the_problem(good, tmp_path, keep):
    path = tmp_path / "cut.bin"
    path.write_bytes(good.read_bytes()[:keep])
    with pytest.raises(ModelFileError, match=r"cut\.bin: .*(truncated|not a GGML file|no tensor)"):
        open_ggml(path)


def test_a_file_cut_between_tensors_is_incomplete(good, tmp_path):
    before_last = open_ggml(good).header.tensors[-2]
    path = tmp_path / "short.bin"
    path.write_bytes(good.read_bytes()[: before_last.offset + before_last.n_bytes])
    with pytest.raises(ModelFileError, match=r"short\.bin: ggjt v3: no tensor\(s\) blk\.0\.ffn_norm\.weight \(truncated"):
        open_ggml(path)


def _patched(good: Path, tmp_path: Path, at: int, value: bytes) -> Path:
    data = bytearray(good.read_bytes())
    data[at : at + len(value)] = value
    path = tmp_path / "bad.bin"
    path.write_bytes(bytes(data))
    return path


def test_wrong_magic(good, tmp_path):
    path = _patched(good, tmp_path, 0, b"xxxx")
    with pytest.raises(ModelFileError, match=r"bad\.bin: not a GGML file"):
        open_ggml(path)
    with pytest.raises(ModelFileError, match=r"bad\.bin: not a recognized model"):
        open_checkpoint(path, registries())


@pytest.mark.parametrize("magic,version", [(b"tjgg", 4), (b"tjgg", 0), (b"fmgg", 2)])
def test_unsupported_versions(good, tmp_path, magic, version):
    path = _patched(good, tmp_path, 0, magic + version.to_bytes(4, "little"))
    with pytest.raises(ModelFileError, match=rf"unsupported {'ggjt' if magic == b'tjgg' else 'ggmf'} version {version}"):
        open_ggml(path)


@pytest.mark.parametrize("type_id,name", [(4, "Q4_2"), (5, "Q4_3")])
def test_removed_tensor_types(tmp_path, type_id, name):
    weights = random_llama(n_vocab=260, n_embd=64, n_ff=128, n_layer=1, n_head=4)
    hp = Hparams(260, 64, 256, 4, 1, 16, FILE_TYPE["Q4_0"])
    tensors = [tensor(n, "Q4_0" if w.ndim == 2 else "F32", w) for n, w in weights.items()]
    path = write_ggml(tmp_path / "old.bin", "ggjt", 3, hp, sentencepiece_vocab(260), tensors,
                      type_ids={"layers.0.attention.wq.weight": type_id})
    with pytest.raises(ModelFileError, match=rf"old\.bin: tensor 'layers\.0\.attention\.wq\.weight' has type {name}"):
        open_ggml(path)


@pytest.mark.parametrize("ftype,problem", [(5, "MOSTLY_Q4_2"), (6, "MOSTLY_Q4_3"), (99, "unknown file type 99")])
def test_removed_or_unknown_file_types(good, tmp_path, ftype, problem):
    path = _patched(good, tmp_path, 8 + 24, ftype.to_bytes(4, "little"))
    with pytest.raises(ModelFileError, match=problem):
        open_ggml(path)


def test_old_quantized_tensor_in_an_otherwise_readable_ggjt_v2_file_is_refused(tmp_path):
    """llama.cpp's converter checks only the header's file type; we check every tensor."""
    weights = random_llama(n_vocab=260, n_embd=256, n_ff=256, n_layer=1, n_head=2)
    hp = Hparams(260, 256, 256, 2, 1, 128, FILE_TYPE["Q5_0"])
    tensors = [tensor(n, ("Q4_0" if "wq" in n else "Q5_0") if w.ndim == 2 else "F32", w) for n, w in weights.items()]
    path = write_ggml(tmp_path / "v2.bin", "ggjt", 2, hp, sentencepiece_vocab(260), tensors)
    with pytest.raises(ModelFileError, match=r"v2\.bin: ggjt v2 tensor 'layers\.0\.attention\.wq\.weight' has type Q4_0, "
                                             r"whose block layout changed in ggjt v3"):
        open_ggml(path)


@pytest.mark.parametrize("shape,qtype,data,problem", [
    ((48,), "Q8_0", bytes(34), r"bad shape \[48\] for type Q8_0"),  # 48 values are not whole 32-value blocks
    ((0,), "F32", b"", r"bad shape \[0\]"),
    ((1, 1, 1, 1, 64), "F32", bytes(256), "5 dimensions"),
])
def test_bad_shapes(tmp_path, shape, qtype, data, problem):
    weights = random_llama(n_vocab=260, n_embd=64, n_ff=128, n_layer=1, n_head=4)
    tensors = [tensor(n, "F32", w) for n, w in weights.items()]
    tensors[1] = Tensor("norm.weight", qtype, shape, data)
    path = write_ggml(tmp_path / "shape.bin", "ggjt", 3, Hparams(260, 64, 256, 4, 1, 16, 0), sentencepiece_vocab(260), tensors)
    with pytest.raises(ModelFileError, match=rf"shape\.bin: .*{problem}"):
        open_ggml(path)


def test_tensors_of_another_model_are_refused(tmp_path):
    weights = random_llama(n_vocab=260, n_embd=64, n_ff=128, n_layer=1, n_head=4)
    tensors = [tensor(n, "F32", w) for n, w in weights.items()]
    tensors.append(tensor("layers.1.attention.wq.weight", "F32", weights["layers.0.attention.wq.weight"]))
    path = write_ggml(tmp_path / "extra.bin", "ggjt", 3, Hparams(260, 64, 256, 4, 1, 16, 0), sentencepiece_vocab(260), tensors)
    with pytest.raises(ModelFileError, match=r"tensor 'layers\.1\.attention\.wq\.weight' is not a tensor of a 1-layer llama"):
        open_ggml(path)


def test_gqa_must_divide_the_heads(good):
    with pytest.raises(ModelFileError, match=r"good\.bin: model\.gqa=3 does not divide the 4 attention heads"):
        load(good, "model.gqa=3")


def test_gqa_must_agree_with_the_k_projection(tiny):
    root, weights = tiny
    path = write_llama(root / "gqa.bin", "ggjt", 3, weights, "F32")
    with pytest.raises(ModelFileError, match=r"model\.gqa=4 means 1 KV heads, but layers\.0\.attention\.wk\.weight "
                                             r"holds 2 \(model\.gqa=2\)"):
        load(path, "model.gqa=4")
    assert load(path).loaded.config.num_kv_heads == 2  # unset: read off the shape
