"""The GGUF reader: agreement with gguf-py's GGUFReader, and one clear error per kind of bad file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mistralrs.engine.formats.checkpoint import ModelFileError
from mistralrs.engine.formats.gguf_file import open_gguf
from mistralrs.registry import PluginHost


def write_gguf(path: Path, arch: str = "llama", tensors: dict | None = None, raw: list | None = None) -> Path:
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    writer.add_string("general.name", "test")
    writer.add_array("tokenizer.ggml.tokens", ["a", "b", "c"])
    writer.add_array("tokenizer.ggml.scores", [0.0, -1.5, 2.25])
    for name, array in (tensors or {"w": np.arange(64, dtype=np.float32).reshape(2, 32)}).items():
        writer.add_tensor(name, array)
    for name, data, shape, qtype in raw or []:
        writer.add_tensor(name, data, raw_shape=shape, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def known_types() -> set[str]:
    return set(PluginHost().registries.quant_types.names())


def test_reader_agrees_with_gguf_py(smollm2_gguf):
    from gguf import GGUFReader

    ours = open_gguf(smollm2_gguf, known_types())
    theirs = GGUFReader(smollm2_gguf)
    for key, field in theirs.fields.items():
        if key.startswith("GGUF."):
            continue
        expected = field.contents()
        got = ours.metadata[key]
        if isinstance(expected, float):
            assert got == pytest.approx(expected), key
        else:
            assert got == expected, key
    assert ours.tensor_names() == [t.name for t in theirs.tensors]
    for t in theirs.tensors[:40]:
        mine = ours.tensor(t.name)
        assert mine.qtype == t.tensor_type.name
        assert mine.shape == tuple(int(d) for d in reversed(t.shape.tolist()))
        assert mine.data.numpy().tobytes() == np.asarray(t.data).tobytes()


def test_small_file_roundtrip(tmp_path):
    path = write_gguf(tmp_path / "ok.gguf")
    ckpt = open_gguf(path, known_types())
    assert ckpt.metadata["tokenizer.ggml.scores"] == [0.0, -1.5, 2.25]
    assert ckpt.architecture().gguf == "llama"
    w = ckpt.tensor("w")
    assert w.shape == (2, 32) and w.data.flatten().tolist() == list(range(64))


def test_wrong_magic(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(ModelFileError, match=r"x\.gguf: not a GGUF file"):
        open_gguf(path)


def test_legacy_ggml_magic_is_named(tmp_path):
    path = tmp_path / "old.bin"
    path.write_bytes(b"tjgg" + bytes(100))
    with pytest.raises(ModelFileError, match="legacy ggjt"):
        open_gguf(path)


@pytest.mark.parametrize("keep", [10, 24, 60, 200, -8])
def test_truncated_file(tmp_path, keep):
    full = write_gguf(tmp_path / "full.gguf").read_bytes()
    path = tmp_path / "cut.gguf"
    path.write_bytes(full[:keep])
    with pytest.raises(ModelFileError, match=r"cut\.gguf: .*truncated"):
        open_gguf(path)


def test_unsupported_tensor_type(tmp_path):
    import gguf

    block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.IQ2_XXS]
    data = np.zeros((1, size), dtype=np.uint8)
    path = write_gguf(tmp_path / "iq.gguf", raw=[("odd", data, (1, size), gguf.GGMLQuantizationType.IQ2_XXS)])
    with pytest.raises(ModelFileError, match=r"iq\.gguf: tensor 'odd' has type IQ2_XXS"):
        open_gguf(path, known_types())


def test_unsupported_architecture(tmp_path):
    import mistralrs

    path = write_gguf(tmp_path / "falcon.gguf", arch="falcon")
    with pytest.raises(Exception, match="falcon") as err:
        mistralrs.load("model=llama", f"model.source={path}")
    assert "architecture" in str(err.value)


def test_absurd_counts_rejected_without_allocating(tmp_path):
    import struct

    path = tmp_path / "huge.gguf"
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 2**40, 2**40) + bytes(64))
    with pytest.raises(ModelFileError, match="truncated"):
        open_gguf(path)



def _two_tensor_file(tmp_path: Path) -> bytes:
    import gguf

    path = tmp_path / "two.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_string("test.key_aaa", "first")
    writer.add_string("test.key_bbb", "second")
    writer.add_tensor("tensor_one", np.zeros((2, 32), np.float32))
    writer.add_tensor("tensor_two", np.ones((2, 32), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _offset_field(data: bytes, name: bytes) -> int:
    """Byte position of ``name``'s data-offset field in the tensor-info table (after name, dims, type)."""
    import struct

    at = data.index(name) + len(name)
    n_dims = struct.unpack_from("<I", data, at)[0]
    return at + 4 + 8 * n_dims + 4


@pytest.mark.parametrize("mutation, message", [
    ("duplicate_tensor", "duplicate tensor name 'tensor_one'"),
    ("duplicate_key", "duplicate metadata key 'test.key_aaa'"),
    ("overlap", "'tensor_one' and 'tensor_two' overlap"),
    ("misaligned", "not a multiple of the alignment"),
])
def test_structurally_invalid_files_are_refused(tmp_path, mutation, message):
    """What llama.cpp's loader refuses too: one name for two tensors or two values, tensors sharing
    bytes, data that is not aligned. Each is an edit of a valid file's header."""
    import struct

    data = bytearray(_two_tensor_file(tmp_path))
    open_gguf(tmp_path / "two.gguf")  # the unedited file loads
    if mutation == "duplicate_tensor":
        at = data.index(b"tensor_two")
        data[at:at + 10] = b"tensor_one"
    elif mutation == "duplicate_key":
        at = data.index(b"test.key_bbb")
        data[at:at + 12] = b"test.key_aaa"
    else:
        field = _offset_field(bytes(data), b"tensor_two")
        # 64: inside tensor_one's 256 bytes and aligned; 260: past it but not on a 32-byte boundary
        data[field:field + 8] = struct.pack("<Q", 64 if mutation == "overlap" else 260)
    path = tmp_path / "bad.gguf"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match=message):
        open_gguf(path)


@pytest.mark.parametrize("key, value", [("llama.attention.layer_norm_rms_epsilon", float("nan")),
                                        ("llama.attention.layer_norm_rms_epsilon", -1e-5),
                                        ("llama.rope.freq_base", 0.0),
                                        ("llama.rope.freq_base", float("inf"))])
def test_nonsense_norm_and_rope_values_are_refused(key, value):
    from mistralrs.engine.llama_base.config import ConfigError, config_from_gguf

    meta = {"llama.embedding_length": 64, "llama.attention.head_count": 4, "llama.feed_forward_length": 128,
            "llama.block_count": 2, "llama.vocab_size": 100}
    config_from_gguf(meta)  # sane without the key
    with pytest.raises(ConfigError, match="positive finite"):
        config_from_gguf({**meta, key: value})
