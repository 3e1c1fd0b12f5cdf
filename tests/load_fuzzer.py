"""A seeded, bounded load fuzzer (issue #17): mutations of a tiny GGUF, a tiny HF directory and a tiny
legacy GGML file, each loaded through ``mistralrs.load`` in a driver subprocess that runs under an
address-space limit (``RLIMIT_AS``) and a wall-clock timeout per case.

Each case ends in one of three outcomes:

- ``clean``: a ``ModelFileError`` whose one-line message starts with the case's file or directory;
- ``loaded``: the model loaded, and tokenizing a text, a forward pass and two greedy steps worked;
- ``other``: anything else: another exception type (before or after loading), a message of several
  lines or naming no file, a crash, a timeout, memory exhaustion.

Mutations are structural (typed metadata values, extreme and wrong-typed, nested arrays, duplicate
and overlapping tensors, edited shapes, types and names, JSON replaced or edited) and byte-level
(truncations, byte flips). Case ``i`` of seed ``s`` is generated from its own RNG, so one case is
reproduced by ``python tests/load_fuzzer.py --seed s --only i --keep DIR``.

The files are written by this module (independently of the readers under test): GGUF and GGML are
re-serialized from a typed image of the fixture, the HF directory is written from numpy arrays.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import os
import random
import selectors
import shutil
import struct
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

TESTS = Path(__file__).resolve().parent
TINY = TESTS / "data" / "tiny"
GGUF_BASES = ("mistral", "mixtral", "gemma3", "gemma")  # tests/data/tiny/<name>.gguf
DEFAULT_AS_LIMIT = 4 << 30  # bytes of address space a driver may map
DEFAULT_TIMEOUT = 30.0  # seconds per case (a load takes well under one; a case that times out is retried once)
STARTUP_TIMEOUT = 300.0  # a driver's imports and first load, on a busy machine

# --------------------------------------------------------------------------- GGUF: a typed image

U8, I8, U16, I16, U32, I32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = range(13)
_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?", U64: "<Q",
        I64: "<q", F64: "<d"}


class Raw(bytes):
    """A value body written as is (for nested arrays deeper than Python's recursion)."""


def nested_array(depth: int, leaf: int = 7) -> Raw:
    """The body of an ARRAY value nested ``depth`` deep around one uint32."""
    return Raw(struct.pack("<IQ", ARRAY, 1) * (depth - 1) + struct.pack("<IQI", U32, 1, leaf))


def _enc(vtype: int, value: Any) -> bytes:
    if isinstance(value, Raw):
        return bytes(value)
    if vtype == STRING:
        raw = value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")
        return struct.pack("<Q", len(raw)) + raw
    if vtype == ARRAY:
        item_type, items = value
        return struct.pack("<IQ", item_type, len(items)) + b"".join(_enc(item_type, v) for v in items)
    return struct.pack(_FMT[vtype], value)


@dataclass
class GGUFImage:
    version: int
    kv: list[list]  # [key, vtype, value]; an ARRAY value is (item_type, items)
    tensors: list[list]  # [name, ne (ggml order), type id, offset from the data start]
    blob: bytes  # the data section

    def get(self, key: str) -> Any:
        return next((v for k, _, v in self.kv if k == key), None)

    def index(self, key: str) -> int | None:
        return next((i for i, (k, _, _) in enumerate(self.kv) if k == key), None)

    def set(self, key: str, vtype: int, value: Any) -> None:
        i = self.index(key)
        if i is None:
            self.kv.append([key, vtype, value])
        else:
            self.kv[i] = [key, vtype, value]

    @property
    def alignment(self) -> int:
        a = self.get("general.alignment")
        return a if isinstance(a, int) and a > 0 else 32

    def to_bytes(self) -> bytes:
        out = bytearray(b"GGUF" + struct.pack("<IQQ", self.version, len(self.tensors), len(self.kv)))
        for key, vtype, value in self.kv:
            out += _enc(STRING, key) + struct.pack("<I", vtype) + _enc(vtype, value)
        for name, ne, type_id, offset in self.tensors:
            out += _enc(STRING, name) + struct.pack(f"<I{len(ne)}QIQ", len(ne), *ne, type_id, offset)
        out += bytes(-len(out) % self.alignment)
        return bytes(out) + self.blob


def read_gguf_image(data: bytes) -> GGUFImage:
    pos = 0

    def take(fmt: str) -> Any:
        nonlocal pos
        (v,) = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        pos += n
        return data[pos - n : pos].decode("utf-8")

    def value(vtype: int) -> Any:
        if vtype == STRING:
            return string()
        if vtype == ARRAY:
            item_type, count = take("<I"), take("<Q")
            return item_type, [value(item_type) for _ in range(count)]
        return take(_FMT[vtype])

    assert data[:4] == b"GGUF"
    pos = 4
    version, n_tensors, n_kv = take("<I"), take("<Q"), take("<Q")
    kv = []
    for _ in range(n_kv):
        key = string()
        vtype = take("<I")
        kv.append([key, vtype, value(vtype)])
    tensors = []
    for _ in range(n_tensors):
        name = string()
        ne = [take("<Q") for _ in range(take("<I"))]
        tensors.append([name, ne, take("<I"), take("<Q")])
    img = GGUFImage(version, kv, tensors, b"")
    img.blob = data[pos + (-pos % img.alignment):]
    return img


# --------------------------------------------------------------------------- GGML: a typed image


@dataclass
class GGMLImage:
    magic: bytes
    version: int | None
    hparams: list[int]  # n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype
    vocab: list[list]  # [token bytes, score]
    tensors: list[list]  # [name bytes, ne (ggml order), type id, data bytes]

    def to_bytes(self) -> bytes:
        out = bytearray(self.magic)
        if self.version is not None:
            out += struct.pack("<I", self.version)
        out += struct.pack("<7I", *self.hparams)
        for text, score in self.vocab:
            out += struct.pack("<I", len(text)) + text
            if self.magic != b"lmgg":
                out += struct.pack("<f", score)
        for name, ne, type_id, payload in self.tensors:
            out += struct.pack(f"<3I{len(ne)}I", len(ne), len(name), type_id, *ne) + name
            if self.magic == b"tjgg":
                out += bytes(-len(out) % 32)
            out += payload
        return bytes(out)


_GGML_BLOCK = {0: (1, 4), 1: (1, 2)}  # the base files are F32 / F16


def read_ggml_image(data: bytes) -> GGMLImage:
    magic, pos = data[:4], 4
    version = None
    if magic != b"lmgg":
        (version,), pos = struct.unpack_from("<I", data, pos), pos + 4
    hparams = list(struct.unpack_from("<7I", data, pos))
    pos += 28
    vocab = []
    for _ in range(hparams[0]):
        (n,) = struct.unpack_from("<I", data, pos)
        text = data[pos + 4 : pos + 4 + n]
        pos += 4 + n
        score = 0.0
        if magic != b"lmgg":
            (score,) = struct.unpack_from("<f", data, pos)
            pos += 4
        vocab.append([text, score])
    tensors = []
    while pos < len(data):
        n_dims, name_len, type_id = struct.unpack_from("<3I", data, pos)
        ne = list(struct.unpack_from(f"<{n_dims}I", data, pos + 12))
        pos += 12 + 4 * n_dims
        name = data[pos : pos + name_len]
        pos += name_len
        if magic == b"tjgg":
            pos += -pos % 32
        block, size = _GGML_BLOCK[type_id]
        n_bytes = math.prod(ne) // block * size
        tensors.append([name, ne, type_id, data[pos : pos + n_bytes]])
        pos += n_bytes
    return GGMLImage(magic, version, hparams, vocab, tensors)


# --------------------------------------------------------------------------- the base models


def byte_bpe_tokenizer_json(merges: list[tuple[str, str]]) -> tuple[str, int]:
    """A byte-level BPE tokenizer.json (3 specials, the 256 byte symbols, one token per merge) and its size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from tokenizers.pre_tokenizers import ByteLevel

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    for a, b in merges:
        vocab[a + b] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok.to_str(), len(vocab)


HF_MERGES = [("Ġ", "t"), ("h", "e"), ("Ġ", "a"), ("i", "n"), ("Ġt", "he")]


def write_hf_llama(path: Path, seed: int = 0) -> Path:
    """A 2-layer llama HF directory: config.json, model.safetensors, tokenizer files, generation config."""
    from safetensors.numpy import save_file

    tokenizer, vocab = byte_bpe_tokenizer_json(HF_MERGES)
    hidden, ff, heads, kv_heads, layers = 64, 128, 4, 2, 2
    head_dim = hidden // heads
    rng = np.random.default_rng(seed)
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,),
              "lm_head.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (hidden,), p + "post_attention_layernorm.weight": (hidden,),
            p + "self_attn.q_proj.weight": (heads * head_dim, hidden),
            p + "self_attn.k_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.v_proj.weight": (kv_heads * head_dim, hidden),
            p + "self_attn.o_proj.weight": (hidden, heads * head_dim),
            p + "mlp.gate_proj.weight": (ff, hidden), p + "mlp.up_proj.weight": (ff, hidden),
            p + "mlp.down_proj.weight": (hidden, ff),
        })  # fmt: skip
    tensors = {name: (rng.standard_normal(shape) * (0.1 if len(shape) == 2 else 0.05)
                      + (0.0 if len(shape) == 2 else 1.0)).astype(np.float32) for name, shape in shapes.items()}
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
        "num_key_value_heads": kv_heads, "max_position_embeddings": 256, "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu", "torch_dtype": "float32",
        "bos_token_id": 1, "eos_token_id": 2,
    }  # fmt: skip
    (path / "config.json").write_text(json.dumps(config, indent=1))
    (path / "tokenizer.json").write_text(tokenizer)
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True,
         "chat_template": "{% for m in messages %}{{ m['content'] }}{% endfor %}"}))
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2, "temperature": 0.7}))
    return path


GGML_VARIANTS = (("tjgg", 3, "F32"), ("fmgg", 1, "F16"), ("lmgg", None, "F32"))


def write_ggml_llama(path: Path, magic: str = "tjgg", version: int | None = 3, qtype: str = "F32") -> Path:
    from ggml_writer import random_llama, sentencepiece_vocab, write_llama

    kind = {"tjgg": "ggjt", "fmgg": "ggmf", "lmgg": "ggml"}[magic]
    weights = random_llama(n_vocab=300, n_embd=64, n_ff=128, n_layer=2, n_head=4, n_kv_head=2, seed=5)
    return write_llama(path, kind, version or 0, weights, qtype, n_head=4, vocab=sentencepiece_vocab(300, seed=5))


@dataclass
class Bases:
    """The unmutated files, made once: bytes of each GGUF / GGML base and the HF directory."""

    root: Path
    gguf: dict[str, bytes] = field(default_factory=dict)
    ggml: dict[tuple, bytes] = field(default_factory=dict)
    hf: Path | None = None
    gguf_choices: tuple[str, ...] = (*GGUF_BASES, "mistral", "gpt2")  # the GGUF bases cases draw from

    @classmethod
    def make(cls, root: Path, extra_gguf: dict[str, Path] | None = None) -> "Bases":
        b = cls(root)
        root.mkdir(parents=True, exist_ok=True)
        for name in GGUF_BASES:
            b.gguf[name] = (TINY / f"{name}.gguf").read_bytes()
        for name, path in (extra_gguf or {}).items():
            b.gguf[name] = Path(path).read_bytes()
        if extra_gguf:
            b.gguf_choices = tuple(extra_gguf)
        b.gguf["gpt2"] = gpt2_variant(b.gguf["mistral"])
        for variant in GGML_VARIANTS:
            b.ggml[variant] = write_ggml_llama(root / f"base-{variant[0]}.bin", *variant).read_bytes()
        b.hf = write_hf_llama(root / "base-hf")
        return b


def gpt2_variant(base: bytes) -> bytes:
    """The tiny Mistral GGUF with a byte-level BPE tokenizer: gpt2 model, merges of adjacent tokens."""
    img = read_gguf_image(base)
    tokens = img.get("tokenizer.ggml.tokens")[1]
    present = set(tokens)
    merges = [f"{t[:k]} {t[k:]}" for t in tokens[3:] for k in range(1, len(t)) if t[:k] in present and t[k:] in present]
    img.set("tokenizer.ggml.model", STRING, "gpt2")
    img.set("tokenizer.ggml.pre", STRING, "smollm")
    img.set("tokenizer.ggml.merges", ARRAY, (STRING, merges[:40]))
    return img.to_bytes()


# --------------------------------------------------------------------------- value pools

INT_VALUES = [0, 1, 2, 3, 7, 255, 65536, 10**5, 10**6, 2**31 - 1, 2**31, 2**32 - 1, 2**63 - 1, 2**64 - 1]
NEG_VALUES = [-1, -7, -(2**31), -(2**63)]
FLOAT_VALUES = [0.0, -0.0, -1.0, 1e-30, 0.5, 3.5, 1e30, 1e308, float("nan"), float("inf"), float("-inf")]
STRING_VALUES = ["", "x", "llama", "gpt2", "linear", "yarn", "\x00", "1e3", "z" * 5000]
_INT_RANGE = {U8: (0, 255), I8: (-128, 127), U16: (0, 65535), I16: (-32768, 32767), U32: (0, 2**32 - 1),
              I32: (-(2**31), 2**31 - 1), U64: (0, 2**64 - 1), I64: (-(2**63), 2**63 - 1)}


def random_typed_value(rng: random.Random) -> tuple[int, Any, str]:
    """(vtype, value, description): an extreme or a wrong-typed GGUF value."""
    kind = rng.choice(["int", "int", "int", "neg", "float", "float", "bool", "string", "array", "nested"])
    if kind in ("int", "neg"):
        vtype = rng.choice([U8, I8, U16, I16, U32, I32, U64, I64]) if kind == "int" else rng.choice([I8, I16, I32, I64])
        lo, hi = _INT_RANGE[vtype]
        v = rng.choice([x for x in INT_VALUES + NEG_VALUES if lo <= x <= hi])
        return vtype, v, f"int{vtype}={v}"
    if kind == "float":
        v = rng.choice(FLOAT_VALUES)
        vtype = rng.choice([F32, F64])
        if vtype == F32 and abs(v) > 3e38 and math.isfinite(v):
            v = float("inf")
        return vtype, v, f"float={v!r}"
    if kind == "bool":
        v = rng.choice([True, False])
        return BOOL, v, f"bool={v}"
    if kind == "string":
        v = rng.choice(STRING_VALUES)
        return STRING, v, f"string={v[:8]!r}"
    if kind == "array":
        choice = rng.choice([(U32, []), (U32, [1, 2, 3]), (STRING, ["a", "b"]), (F32, [float("nan")]),
                             (I64, [2**63 - 1]), (ARRAY, [(U32, [1])])])
        return ARRAY, choice, f"array={choice!r}"[:60]
    depth = rng.choice([2, 40, 1500, 3000, 20000])
    return ARRAY, nested_array(depth), f"nested array depth {depth}"


JSON_VALUES: list[Any] = [0, -1, 1, 2, 3, 7, 10**6, 2**31, 2**63, 2**70, 1.5, 1e308, float("inf"), float("-inf"),
                          float("nan"), "x", "", "silu", "gelu", "linear", [], [1, 2], ["x"], {}, {"a": 1}, None,
                          True, False]
JSON_TEXTS: list[bytes] = [b"", b"[]", b"{}", b"null", b"1", b'"s"', b"{", b"[1,", b"\xff\xfe\x00", b"{\"a\": 1}",
                           b"[" * 5000 + b"]" * 5000, b'{"x": ' + b"[" * 3000 + b"]" * 3000 + b"}",
                           b'{"x": ' + b"1" * 5000 + b"}", b"NaN", b"\xef\xbb\xbf{}"]


def random_json_value(rng: random.Random) -> Any:
    if rng.random() < 0.1:
        depth = rng.choice([50, 3000])
        v: Any = 1
        for _ in range(depth):
            v = [v]
        return v
    return rng.choice(JSON_VALUES)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


# --------------------------------------------------------------------------- byte-level mutations


def truncate(data: bytes, rng: random.Random, header: int) -> tuple[bytes, str]:
    cut = rng.randrange(0, header) if rng.random() < 0.7 else rng.randrange(0, len(data))
    return data[:cut], f"truncated to {cut} bytes"


def flip_bytes(data: bytes, rng: random.Random, header: int) -> tuple[bytes, str]:
    out = bytearray(data)
    n = rng.choice([1, 1, 2, 4, 16])
    at = []
    for _ in range(n):
        i = rng.randrange(0, header if rng.random() < 0.8 else len(out))
        out[i] = rng.choice([0x00, 0xFF, 0x7F, 0x80, rng.randrange(256), out[i] ^ (1 << rng.randrange(8))])
        at.append(i)
    return bytes(out), f"{n} byte(s) changed at {sorted(at)[:4]}"


# --------------------------------------------------------------------------- GGUF mutations

def _gguf_header_len(img: GGUFImage, data: bytes) -> int:
    return len(data) - len(img.blob)


def mutate_gguf(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    img = read_gguf_image(data)
    arch = img.get("general.architecture")
    op = rng.choices(["set", "set_hp", "delete", "dup_key", "nested", "tensor", "tokens", "merges", "truncate", "flip"],
                     weights=[2, 5, 1, 1, 1, 4, 1, 1, 2, 3])[0]
    if op in ("truncate", "flip"):
        f = truncate if op == "truncate" else flip_bytes
        return f(data, rng, _gguf_header_len(img, data))
    if op in ("set", "set_hp"):
        keys = [k for k, _, _ in img.kv if op == "set" or k.startswith(f"{arch}.") or k.endswith("_token_id")]
        extra = [f"{arch}.{k}" for k in ("attention.key_length", "attention.value_length", "rope.dimension_count",
                                         "rope.scaling.type", "rope.scaling.factor", "attention.sliding_window",
                                         "expert_count", "expert_used_count", "vocab_size", "context_length",
                                         "attention.sliding_window_pattern", "final_logit_softcapping")]
        key = rng.choice(keys + extra + ["general.alignment", "general.architecture"])
        vtype, value, what = random_typed_value(rng)
        img.set(key, vtype, value)
        return img.to_bytes(), f"{key} := {what}"
    if op == "delete":
        i = rng.randrange(len(img.kv))
        key = img.kv.pop(i)[0]
        return img.to_bytes(), f"deleted {key}"
    if op == "dup_key":
        key, vtype, value = rng.choice(img.kv)
        img.kv.append([key, vtype, value])
        return img.to_bytes(), f"duplicate key {key}"
    if op == "nested":
        depth = rng.choice([1500, 3000, 100000])
        key = rng.choice([f"{arch}.block_count", "tokenizer.ggml.tokens", "x.nested"])
        img.set(key, ARRAY, nested_array(depth))
        return img.to_bytes(), f"{key} := array nested {depth} deep"
    if op == "tokens":
        vals = list(img.get("tokenizer.ggml.tokens")[1])
        how = rng.choice(["drop", "dup", "empty", "ints", "huge_id", "extra"])
        if how == "drop":
            vals.pop(rng.randrange(len(vals)))
        elif how == "dup":
            vals[rng.randrange(3, len(vals))] = vals[rng.randrange(3, len(vals))]
        elif how == "empty":
            vals = []
        elif how == "extra":
            vals += [f"extra{i}" for i in range(rng.choice([1, 300]))]
        if how == "ints":
            img.set("tokenizer.ggml.tokens", ARRAY, (U32, list(range(len(vals)))))
        elif how == "huge_id":
            key = rng.choice(["tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                              "tokenizer.ggml.eot_token_id", "tokenizer.ggml.unknown_token_id"])
            vtype, value = rng.choice([(F32, float("inf")), (F64, float("nan")), (F32, 1.5), (U64, 2**63 - 1),
                                       (I32, -1), (I64, 2**62), (STRING, "1")])
            img.set(key, vtype, value)
            return img.to_bytes(), f"{key} := {value!r}"
        else:
            img.set("tokenizer.ggml.tokens", ARRAY, (STRING, vals))
        return img.to_bytes(), f"tokens: {how}"
    if op == "merges":
        merges = list((img.get("tokenizer.ggml.merges") or (STRING, ["a b"]))[1])
        img.set("tokenizer.ggml.model", STRING, "gpt2")
        if not merges:
            merges = ["a b"]
        i = rng.randrange(len(merges))
        merges[i] = rng.choice(["zz# q", "x", "", " ", "a  b", "\u2581\u2581 \u2581", "a b c", "\udcff b"])
        img.set("tokenizer.ggml.merges", ARRAY, (STRING, merges))
        return img.to_bytes(), f"merge #{i} := {merges[i]!r}"
    # tensors
    t = rng.randrange(len(img.tensors))
    name = img.tensors[t][0]
    how = rng.choice(["dup", "dup_other_offset", "overlap", "misalign", "dim", "add_dim", "drop_dim", "type",
                      "drop", "rename", "rename_block", "offset_far"])
    if how == "dup":
        img.tensors.append(list(img.tensors[t]))
    elif how == "dup_other_offset":
        other = rng.choice(img.tensors)
        img.tensors.append([name, list(img.tensors[t][1]), img.tensors[t][2], other[3]])
    elif how == "overlap":
        other = rng.choice(img.tensors)
        img.tensors[t][3] = other[3] + rng.choice([0, img.alignment])
    elif how == "misalign":
        img.tensors[t][3] += rng.choice([1, 2, 4, 16])
    elif how == "offset_far":
        img.tensors[t][3] = rng.choice([2**40, 2**64 - 32])
    elif how == "dim":
        ne = img.tensors[t][1]
        ne[rng.randrange(len(ne))] = rng.choice([0, 1, 2, 3, 32, 2**31, 2**32 + 32, 2**62, 2**64 - 1])
    elif how == "add_dim":
        img.tensors[t][1].append(rng.choice([1, 2, 0]))
    elif how == "drop_dim":
        ne = img.tensors[t][1]
        if len(ne) > 1:
            ne.pop()
        else:
            ne.clear()
    elif how == "type":
        img.tensors[t][2] = rng.choice([0, 1, 2, 3, 8, 12, 14, 16, 30, 39, 1000, 2**32 - 1])
    elif how == "drop":
        img.tensors.pop(t)
    elif how == "rename":
        img.tensors[t][0] = rng.choice(["output.weight", "token_embd.weight", "x", "", "blk.0.attn_q.weight",
                                        "blk.1.ffn_up.bias", "rope_freqs.weight", "\udcff"])
    elif how == "rename_block":
        img.tensors[t][0] = name.replace("blk.0.", f"blk.{rng.choice([2, 9, 10**6, 2**40])}.", 1) \
            if name.startswith("blk.0.") else name.replace("blk.", "blk.1", 1)
    return img.to_bytes(), f"tensor {name}: {how}"


# --------------------------------------------------------------------------- GGML mutations

def mutate_ggml(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    img = read_ggml_image(data)
    op = rng.choices(["hparam", "tensor", "vocab", "truncate", "flip"], weights=[4, 5, 1, 2, 3])[0]
    if op == "truncate":
        return truncate(data, rng, len(data))
    if op == "flip":
        return flip_bytes(data, rng, len(data))
    if op == "hparam":
        i = rng.randrange(7)
        img.hparams[i] = rng.choice([0, 1, 2, 3, 5, 7, 8, 16, 63, 64, 65, 299, 301, 2**16, 10**6, 2**31, 2**32 - 1])
        names = ("n_vocab", "n_embd", "n_mult", "n_head", "n_layer", "n_rot", "ftype")
        return img.to_bytes(), f"{names[i]} := {img.hparams[i]}"
    if op == "vocab":
        i = rng.randrange(len(img.vocab))
        how = rng.choice(["bytes", "score", "empty"])
        if how == "bytes":
            img.vocab[i][0] = rng.choice([b"\xff\xfe", b"\x00", b"a" * 4000, img.vocab[5][0]])
        elif how == "score":
            img.vocab[i][1] = rng.choice([float("nan"), float("inf"), -1e38])
        else:
            img.vocab[i][0] = b""
        return img.to_bytes(), f"token {i}: {how}"
    t = rng.randrange(len(img.tensors))
    name = img.tensors[t][0].decode()
    how = rng.choice(["dup", "dup_renamed", "alias", "drop", "dim", "add_dim", "type", "rename", "rename_block"])
    if how == "dup":
        img.tensors.append(list(img.tensors[t]))
    elif how == "dup_renamed":
        img.tensors.insert(t + 1, [img.tensors[(t + 1) % len(img.tensors)][0], *img.tensors[t][1:]])
    elif how == "alias":  # a second spelling of the same layer index (layers.00 is layers.0)
        if name.startswith("layers."):
            i = name.split(".")[1]
            img.tensors.append([name.replace(f"layers.{i}.", f"layers.0{i}.", 1).encode(), *img.tensors[t][1:]])
        else:
            img.tensors.append(list(img.tensors[t]))
    elif how == "drop":
        img.tensors.pop(t)
    elif how == "dim":
        ne = img.tensors[t][1]
        k = rng.randrange(len(ne))
        block, size = _GGML_BLOCK[img.tensors[t][2]]
        ne[k] = rng.choice([0, 1, 2, 32, 128, 2**31])
        img.tensors[t][3] = img.tensors[t][3][: math.prod(ne) // block * size]  # keep the file self-consistent
    elif how == "add_dim":
        img.tensors[t][1].append(1)
    elif how == "type":
        img.tensors[t][2] = rng.choice([1 - img.tensors[t][2], 2, 4, 12, 99])
    elif how == "rename":
        img.tensors[t][0] = rng.choice([b"output.weight", b"norm.weight", b"x", b"", b"layers.0.attention.wq.bias",
                                        b"\xff\xfe"])
    elif how == "rename_block":
        img.tensors[t][0] = name.replace("layers.1.", f"layers.{rng.choice([2, 7, 10**6])}.", 1).encode()
    return img.to_bytes(), f"tensor {name}: {how}"


# --------------------------------------------------------------------------- HF mutations

HF_KEYS = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "max_position_embeddings", "rms_norm_eps", "rope_theta", "head_dim",
           "rope_scaling", "partial_rotary_factor", "tie_word_embeddings", "hidden_act", "architectures",
           "attention_bias", "mlp_bias", "rope_parameters", "torch_dtype", "bos_token_id", "eos_token_id"]
ROPE_SCALINGS = [{"type": "linear", "factor": 0}, {"type": "linear", "factor": -2.0}, {"rope_type": "llama3"},
                 {"rope_type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 1,
                  "original_max_position_embeddings": 0}, {"rope_type": "yarn", "factor": 4},
                 {"rope_type": "dynamic", "factor": "x"}, {"type": None}, {"rope_theta": 0}, []]


def _safetensors_split(data: bytes) -> tuple[dict, bytes]:
    (n,) = struct.unpack_from("<Q", data)
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _safetensors_join(header: dict, body: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def mutate_hf(files: dict[str, bytes], rng: random.Random) -> str:
    """Edits ``files`` (name -> bytes; a None value deletes the file); returns the description."""
    op = rng.choices(["config_key", "config_delete", "config_text", "rope", "gen", "tokenizer", "tok_config",
                      "safetensors", "remove", "flip"], weights=[6, 1, 2, 1, 2, 3, 1, 4, 1, 2])[0]
    if op in ("config_key", "config_delete", "rope"):
        cfg = json.loads(files["config.json"])
        key = rng.choice(HF_KEYS)
        if op == "config_delete":
            cfg.pop(key, None)
            what = f"config.json: deleted {key}"
        elif op == "rope":
            key = rng.choice(["rope_scaling", "rope_parameters"])
            cfg[key] = rng.choice(ROPE_SCALINGS)
            what = f"config.json: {key} := {_short(cfg[key])}"
        else:
            cfg[key] = random_json_value(rng)
            what = f"config.json: {key} := {_short(cfg[key])}"
        files["config.json"] = json.dumps(cfg).encode()
        return what
    if op == "config_text":
        files["config.json"] = rng.choice(JSON_TEXTS)
        return f"config.json := {files['config.json'][:16]!r}"
    if op == "gen":
        if rng.random() < 0.5:
            files["generation_config.json"] = rng.choice(JSON_TEXTS)
            return f"generation_config.json := {files['generation_config.json'][:16]!r}"
        gen = json.loads(files["generation_config.json"])
        key = rng.choice(["eos_token_id", "bos_token_id", "temperature", "top_k", "top_p", "do_sample"])
        gen[key] = random_json_value(rng)
        files["generation_config.json"] = json.dumps(gen).encode()
        return f"generation_config.json: {key} := {_short(gen[key])}"
    if op == "tok_config":
        if rng.random() < 0.3:
            files["tokenizer_config.json"] = rng.choice(JSON_TEXTS)
            return f"tokenizer_config.json := {files['tokenizer_config.json'][:16]!r}"
        cfg = json.loads(files["tokenizer_config.json"])
        key = rng.choice(["bos_token", "eos_token", "add_bos_token", "add_eos_token", "chat_template", "unk_token"])
        cfg[key] = rng.choice([random_json_value(rng), {"content": 5}, [{"name": 1, "template": 2}], "<nope>"])
        files["tokenizer_config.json"] = json.dumps(cfg).encode()
        return f"tokenizer_config.json: {key} := {_short(cfg[key])}"
    if op == "tokenizer":
        spec = json.loads(files["tokenizer.json"])
        how = rng.choice(["merge", "merge", "vocab_drop", "model_type", "added_id", "text", "truncate", "decoder"])
        if how == "merge":
            merges = spec["model"]["merges"]
            i = rng.randrange(len(merges))
            bad = rng.choice(["zz q", "Ġ", "a b c", "", ["x"], ["Ġ", "qq"], 5, None])
            merges[i] = bad
            what = f"merge #{i} := {bad!r}"
        elif how == "vocab_drop":
            token = rng.choice(["Ġt", "he", "Ġ", "<s>", "a"])
            spec["model"]["vocab"].pop(token, None)
            what = f"vocab entry {token!r} removed"
        elif how == "model_type":
            spec["model"]["type"] = rng.choice(["Foo", "WordPiece", "Unigram", 5])
            what = f"model.type := {spec['model']['type']!r}"
        elif how == "added_id":
            spec["added_tokens"][0]["id"] = rng.choice([10**9, -1, "x", 2**64, None])
            what = f"added_tokens[0].id := {spec['added_tokens'][0]['id']!r}"
        elif how == "decoder":
            spec["decoder"] = rng.choice([None, 5, {"type": "Strip", "content": " ", "start": "x"},
                                          {"type": "Sequence", "decoders": 5}, {"type": "Nope"}])
            what = f"decoder := {_short(spec['decoder'])}"
        elif how == "text":
            files["tokenizer.json"] = rng.choice(JSON_TEXTS)
            return f"tokenizer.json := {files['tokenizer.json'][:16]!r}"
        else:
            raw = files["tokenizer.json"]
            files["tokenizer.json"] = raw[: rng.randrange(len(raw))]
            return "tokenizer.json truncated"
        files["tokenizer.json"] = json.dumps(spec).encode()
        return f"tokenizer.json: {what}"
    if op == "safetensors":
        data = files["model.safetensors"]
        (n,) = struct.unpack_from("<Q", data)
        how = rng.choice(["truncate", "flip", "dtype", "shape", "offsets", "rename", "drop", "extra_layer", "length"])
        if how == "truncate":
            files["model.safetensors"], what = truncate(data, rng, 8 + n)
            return f"model.safetensors {what}"
        if how == "flip":
            files["model.safetensors"], what = flip_bytes(data, rng, 8 + n)
            return f"model.safetensors: {what}"
        if how == "length":
            files["model.safetensors"] = struct.pack("<Q", rng.choice([0, 1, 2**40, 2**64 - 1, n - 1])) + data[8:]
            return "model.safetensors: header length edited"
        header, body = _safetensors_split(data)
        names = sorted(k for k in header if k != "__metadata__")
        name = rng.choice(names)
        if how == "dtype":
            header[name]["dtype"] = rng.choice(["F64", "I8", "BOOL", "U8", "F16", "BF16", "I64", "F8_E4M3"])
        elif how == "shape":
            shape = header[name]["shape"]
            if rng.random() < 0.5:
                shape[rng.randrange(len(shape))] = rng.choice([0, 1, 2, 10**6])
            else:
                header[name]["shape"] = list(reversed(shape)) if len(shape) > 1 else [*shape, 1]
        elif how == "offsets":
            other = header[rng.choice(names)]["data_offsets"]
            header[name]["data_offsets"] = rng.choice([list(other), [0, 0], [2**40, 2**40 + 4]])
        elif how == "rename":
            new = (name.replace("layers.1.", f"layers.{rng.choice([2, 5, 10**6])}.") if name.startswith("model.layers.1.")
                   else rng.choice(["x", "model.layers.0.self_attn.q_proj.weight", "lm_head.weight", "model.rotary_emb.inv_freq"]))
            header[new] = header.pop(name)
        elif how == "drop":
            header.pop(name)
        elif how == "extra_layer":
            for k in names:
                if k.startswith("model.layers.1."):
                    header[k.replace("layers.1.", "layers.2.")] = dict(header[k])
        files["model.safetensors"] = _safetensors_join(header, body)
        return f"model.safetensors: {name} {how}"
    if op == "remove":
        name = rng.choice(["tokenizer.json", "model.safetensors", "generation_config.json", "tokenizer_config.json"])
        files[name] = None
        return f"removed {name}"
    name = rng.choice(["config.json", "tokenizer.json", "generation_config.json", "tokenizer_config.json"])
    files[name], what = flip_bytes(files[name], rng, len(files[name]))
    return f"{name}: {what}"


# --------------------------------------------------------------------------- cases


@dataclass
class Case:
    index: int
    kind: str  # gguf | ggml | hf
    base: str
    what: str
    write: Callable[[Path], Path] | None  # materializes the case in a directory, returns the model source


def make_case(bases: Bases, seed: int, index: int, kinds: tuple[str, ...] = ("gguf", "hf", "ggml")) -> Case:
    rng = random.Random(f"{seed}:{index}")
    kind = kinds[index % len(kinds)]
    steps = 2 if rng.random() < 0.15 else 1
    if kind == "gguf":
        base = rng.choice(bases.gguf_choices)
        data, whats = bases.gguf[base], []
        for _ in range(steps):
            try:
                data, what = mutate_gguf(data, rng)
            except Exception:  # a second edit of a file the first one broke: keep the first
                break
            whats.append(what)

        def write(d: Path, data=data) -> Path:
            (d / "model.gguf").write_bytes(data)
            return d / "model.gguf"

        return Case(index, kind, base, "; ".join(whats), write)
    if kind == "ggml":
        variant = rng.choice(GGML_VARIANTS)
        data, whats = bases.ggml[variant], []
        for _ in range(steps):
            try:
                data, what = mutate_ggml(data, rng)
            except Exception:  # a second edit of a file the first one broke: keep the first
                break
            whats.append(what)

        def write(d: Path, data=data) -> Path:
            (d / "model.bin").write_bytes(data)
            return d / "model.bin"

        return Case(index, kind, f"{variant[0]}-{variant[2]}", "; ".join(whats), write)
    files: dict[str, bytes | None] = {p.name: p.read_bytes() for p in bases.hf.iterdir()}
    whats = []
    for _ in range(steps):
        try:
            whats.append(mutate_hf(files, rng))
        except Exception:  # a second edit of a file the first one broke: keep the first
            break

    def write(d: Path, files=dict(files)) -> Path:
        model = d / "hf"
        model.mkdir()
        for name, data in files.items():
            if data is not None:
                (model / name).write_bytes(data)
        return model

    return Case(index, kind, "llama-hf", "; ".join(whats), write)


# --------------------------------------------------------------------------- the cases, by name


def _gguf_named(bases: Bases, index: int, what: str, edit: Callable[[GGUFImage], None], base: str = "mistral") -> Case:
    img = read_gguf_image(bases.gguf[base])
    edit(img)
    data = img.to_bytes()

    def write(d: Path) -> Path:
        (d / "model.gguf").write_bytes(data)
        return d / "model.gguf"

    return Case(index, "gguf", base, what, write)


def _ggml_named(bases: Bases, index: int, what: str, edit: Callable[[GGMLImage], None]) -> Case:
    img = read_ggml_image(bases.ggml[GGML_VARIANTS[0]])
    edit(img)
    data = img.to_bytes()

    def write(d: Path) -> Path:
        (d / "model.bin").write_bytes(data)
        return d / "model.bin"

    return Case(index, "ggml", "tjgg-F32", what, write)


def _hf_named(bases: Bases, index: int, what: str, edit: Callable[[dict], None]) -> Case:
    files: dict[str, Any] = {p.name: p.read_bytes() for p in bases.hf.iterdir()}
    edit(files)

    def write(d: Path) -> Path:
        (d / "hf").mkdir()
        for name, data in files.items():
            if data is not None:
                (d / "hf" / name).write_bytes(data)
        return d / "hf"

    return Case(index, "hf", "llama-hf", what, write)


def _json_set(name: str, **values: Any) -> Callable[[dict], None]:
    def edit(files: dict) -> None:
        files[name] = json.dumps({**json.loads(files[name]), **values}).encode()
    return edit


def _json_text(name: str, text: bytes) -> Callable[[dict], None]:
    def edit(files: dict) -> None:
        files[name] = text
    return edit


def _tensor(img: GGUFImage, name: str) -> list:
    return next(t for t in img.tensors if t[0] == name)


def _bad_merge(files: dict) -> None:
    spec = json.loads(files["tokenizer.json"])
    spec["model"]["merges"][0] = ["Ġ", "qq"]
    files["tokenizer.json"] = json.dumps(spec).encode()


def _ggml_tensor(img: GGMLImage, name: bytes) -> list:
    return next(t for t in img.tensors if t[0] == name)


def named_cases(bases: Bases) -> list[tuple[Case, str]]:
    """The malformed files issue #17 lists, one each, and the message each must give (a regex)."""
    def kv(key: str, vtype: int, value: Any) -> Callable[[GGUFImage], None]:
        return lambda img: img.set(key, vtype, value)

    gguf = [
        ("block_count 10^6", kv("llama.block_count", U32, 10**6), r"'llama\.block_count' is 1000000, outside 1\.\.16384"),
        ("block_count 1000", kv("llama.block_count", U32, 1000),
         r"llama\.block_count is 1000, but the file holds the tensors of 2 blocks"),
        ("rope.dimension_count 2^31", kv("llama.rope.dimension_count", U32, 2**31), r"'llama\.rope\.dimension_count' is 2147483648"),
        ("rope.dimension_count 0", kv("llama.rope.dimension_count", U32, 0), r"'llama\.rope\.dimension_count' is 0"),
        ("rope.dimension_count 3", kv("llama.rope.dimension_count", U32, 3), r"rope dimension 3 .*must be even"),
        ("rope.dimension_count 7", kv("llama.rope.dimension_count", U32, 7), r"rope dimension 7 .*must be even"),
        ("rope.dimension_count 32 > head_dim", kv("llama.rope.dimension_count", U32, 32), r"between 2 and head_dim 16"),
        ("context_length -1", kv("llama.context_length", I32, -1), r"'llama\.context_length' is -1"),
        ("head_count 0", kv("llama.attention.head_count", U32, 0), r"'llama\.attention\.head_count' is 0"),
        ("head_count_kv 3", kv("llama.attention.head_count_kv", U32, 3), r"not a multiple of num_kv_heads 3"),
        ("embedding_length 0", kv("llama.embedding_length", U32, 0), r"'llama\.embedding_length' is 0"),
        ("embedding_length 2^40", kv("llama.embedding_length", U64, 2**40), r"'llama\.embedding_length' is 1099511627776"),
        ("an array where an int belongs", kv("llama.embedding_length", ARRAY, (U32, [64])),
         r"'llama\.embedding_length' must be an integer, got \[64\]"),
        ("a string where an int belongs", kv("llama.feed_forward_length", STRING, "128"),
         r"'llama\.feed_forward_length' must be an integer, got '128'"),
        ("an inf token id", kv("tokenizer.ggml.bos_token_id", F32, float("inf")),
         r"'tokenizer\.ggml\.bos_token_id' must be an integer, got inf"),
        ("a NaN rms_eps", kv("llama.attention.layer_norm_rms_epsilon", F32, float("nan")), r"rms_norm_eps must be a positive finite"),
        ("metadata nested 1500 deep", kv("llama.block_count", ARRAY, nested_array(1500)), r"arrays nested more than 8 deep"),
        ("a zero dimension", lambda img: _tensor(img, "token_embd.weight")[1].__setitem__(0, 0),
         r"tensor 'token_embd\.weight' has shape \[259, 0\], but llama\.vocab_size"),
        ("a projection of another shape", lambda img: _tensor(img, "blk.0.attn_k.weight")[1].__setitem__(1, 16),
         r"tensor 'blk\.0\.attn_k\.weight' has shape \[16, 64\], but llama\.attention\.head_count_kv"),
        ("duplicate tensor names", lambda img: img.tensors.append(list(img.tensors[3])), r"duplicate tensor name"),
        ("overlapping tensors", lambda img: img.tensors[4].__setitem__(3, img.tensors[3][3]), r"overlap in the file"),
        ("unknown architecture", kv("general.architecture", STRING, "falcon"), r"unknown model architecture 'falcon'"),
    ]
    cases = [(_gguf_named(bases, i, what, edit), expected) for i, (what, edit, expected) in enumerate(gguf)]
    cases += [
        (_gguf_named(bases, 100, "a corrupted merge", lambda img: img.get("tokenizer.ggml.merges")[1].__setitem__(0, "zz q"),
                     base="gpt2"), r"tokenizer\.ggml\.merges: .*out of vocabulary"),
        (_gguf_named(bases, 101, "expert_count 10^6", kv("llama.expert_count", U32, 10**6), base="mixtral"),
         r"tensor 'blk\.0\.ffn_gate_inp\.weight' has shape \[4, 64\], but llama\.expert_count"),
        (_gguf_named(bases, 102, "expert_count inf", kv("llama.expert_count", F32, float("inf")), base="mixtral"),
         r"'llama\.expert_count' must be an integer, got inf"),
        (_gguf_named(bases, 103, "gemma3 block_count 5000", kv("gemma3.block_count", U32, 5000), base="gemma3"),
         r"gemma3\.block_count is 5000, but the file holds the tensors of 6 blocks"),
        (_gguf_named(bases, 104, "gemma3 window pattern as string", kv("gemma3.attention.sliding_window_pattern", STRING, "x"),
                     base="gemma3"), r"'gemma3\.attention\.sliding_window_pattern' must be an integer"),
    ]
    hf = [
        ("num_hidden_layers 10^6", _json_set("config.json", num_hidden_layers=10**6), r"'num_hidden_layers' is 1000000, outside"),
        ("num_hidden_layers 1000", _json_set("config.json", num_hidden_layers=1000),
         r"num_hidden_layers is 1000, but the file holds the tensors of 2 blocks"),
        ("vocab_size 2^70", _json_set("config.json", vocab_size=2**70), r"'vocab_size' is 1180591620717411303424, outside"),
        ("num_attention_heads 0", _json_set("config.json", num_attention_heads=0), r"'num_attention_heads' is 0"),
        ("hidden_size as a list", _json_set("config.json", hidden_size=[64]), r"'hidden_size' must be an integer"),
        ("max_position_embeddings -1", _json_set("config.json", max_position_embeddings=-1), r"'max_position_embeddings' is -1"),
        ("rope_scaling dynamic", _json_set("config.json", rope_scaling={"rope_type": "dynamic", "factor": 4.0}),
         r"unsupported rope scaling 'dynamic'"),
        ("yarn rope with a negative beta", _json_set("config.json", rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                                                                 "beta_fast": -1}), r"beta_fast"),
        ("longrope without short factors", _json_set("config.json", rope_scaling={"rope_type": "longrope",
                                                                                  "long_factor": [1.0] * 8}),
         r"LongRoPE has no short_factors"),
        ("llama3 rope without bands", _json_set("config.json", rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                                             "low_freq_factor": 0}), r"low_freq_factor"),
        ("partial_rotary_factor 1e308", _json_set("config.json", partial_rotary_factor=1e308), r"'partial_rotary_factor' must be in"),
        ("config.json = []", _json_text("config.json", b"[]"), r"config\.json: must hold a JSON object, got list"),
        ("config.json not UTF-8", _json_text("config.json", b"\xff\xfe\x00"), r"config\.json: unreadable JSON"),
        ("config.json nested 5000 deep", _json_text("config.json", b"[" * 5000 + b"]" * 5000), r"config\.json: unreadable JSON"),
        ("generation_config.json cut", _json_text("generation_config.json", b"{\"eos"), r"generation_config\.json: unreadable JSON"),
        ("generation_config.json not UTF-8", _json_text("generation_config.json", b"\x80{}"),
         r"generation_config\.json: unreadable JSON"),
        ("generation_config.json = []", _json_text("generation_config.json", b"[]"),
         r"generation_config\.json: must hold a JSON object"),
        ("tokenizer.json with a corrupted merge", _bad_merge, r"tokenizer\.json"),
        ("tokenizer_config.json not UTF-8", _json_text("tokenizer_config.json", b"\xff"), r"tokenizer_config\.json"),
    ]
    cases += [(_hf_named(bases, 200 + i, what, edit), expected) for i, (what, edit, expected) in enumerate(hf)]

    def hparam(i: int, value: int) -> Callable[[GGMLImage], None]:
        return lambda img: img.hparams.__setitem__(i, value)

    def alias(img: GGMLImage) -> None:
        t = _ggml_tensor(img, b"layers.0.attention.wq.weight")
        img.tensors.append([b"layers.00.attention.wq.weight", *t[1:]])

    ggml = [
        ("n_layer 2^32 - 1", hparam(4, 2**32 - 1), r"n_layer is 4294967295, but the file holds the tensors of 2 layers"),
        ("n_layer 10^6", hparam(4, 10**6), r"n_layer is 1000000, but the file holds the tensors of 2 layers"),
        ("n_head 0", hparam(3, 0), r"bad hyper-parameters"),
        ("n_embd 32 (tensors 64)", hparam(1, 32), r"tensor 'token_embd\.weight' has shape \[300, 64\], but"),
        ("duplicate tensor names", lambda img: img.tensors.append(list(img.tensors[5])), r"appears twice"),
        ("two spellings of one tensor", alias, r"'layers\.0\.attention\.wq\.weight' and 'layers\.00\.attention\.wq\.weight' are both"),
    ]
    cases += [(_ggml_named(bases, 300 + i, what, edit), expected) for i, (what, edit, expected) in enumerate(ggml)]
    return cases


# --------------------------------------------------------------------------- the driver (a subprocess)

PROBE_TEXT = "Hello world, the answer is 42."


def _classify_load(source: str, case_dir: str) -> dict:
    import mistralrs
    from mistralrs.engine.formats.errors import ModelFileError

    try:
        llm = mistralrs.load("model=llama", f"model.source={source}", "model.architecture=null",
                             "model.dtype=float32", "model.device=cpu", "engine.threads=1",
                             "engine.kv_cache_memory_gb=0.1")  # the default 2 GB pool would crowd the limit
    except ModelFileError as exc:
        message = str(exc)
        if "\n" in message:
            return {"outcome": "other", "type": "ModelFileError", "message": "message of several lines: " + message[:300]}
        if not message.startswith(case_dir):
            return {"outcome": "other", "type": "ModelFileError", "message": "names no file: " + message[:300]}
        return {"outcome": "clean", "type": "ModelFileError", "message": message[len(case_dir):][:300]}
    except BaseException as exc:  # noqa: BLE001 - the point is to see every other kind
        return _other(exc, "load")
    try:
        tok = llm.tokenizer
        ids = tok.encode(PROBE_TEXT, add_special=True, parse_special=False)
        tok.decode(ids)
        llm.logits(ids[: llm.max_seq_len] or [0])
        llm.logits([tok.vocab_size - 1])  # the tokenizer's last id: inside the model's vocabulary
        steps = []  # a context of one token (max_position_embeddings 1) leaves no room for a step
        if llm.max_seq_len >= 2:
            steps = [e.token for _, e in llm.run([ids[: llm.max_seq_len - 1] or [0]], max_tokens=2,
                                                    temperature=0.0, ignore_eos=True)]
        return {"outcome": "loaded", "type": "", "message": f"{len(ids)} ids, greedy {steps}"}
    except BaseException as exc:  # noqa: BLE001
        return _other(exc, "after loading")
    finally:
        del llm


def _other(exc: BaseException, stage: str) -> dict:
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    where = f"{Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else "?"
    text = str(exc).splitlines()[0][:300] if str(exc) else ""
    return {"outcome": "other", "type": type(exc).__name__, "message": f"{stage} ({where}): {text}"}


def driver_main(as_limit: int) -> None:
    """Read cases (JSON lines: source, dir) on stdin, answer one JSON line each on the original stdout."""
    import gc
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever the libraries print goes to stderr, not into the answers
    import logging

    logging.disable(logging.CRITICAL)
    import torch

    torch.set_num_threads(1)
    importlib.import_module("mistralrs.engine.api")  # the heavy imports once, before the first case
    # one good load first: lazy imports and the native kernels' build (or cache check) are not a case's time
    warm = _classify_load(str(TINY / "mistral.gguf"), str(TINY))
    gc.collect()

    out.write(json.dumps({"ready": warm["outcome"] == "loaded", "warm": warm}) + "\n")
    out.flush()
    for line in sys.stdin:
        case = json.loads(line)
        result = _classify_load(case["source"], case["dir"])
        gc.collect()
        out.write(json.dumps(result) + "\n")
        out.flush()


class Driver:
    """A long-lived driver process; a case that hangs or crashes it is reported and the driver restarted."""

    def __init__(self, as_limit: int = DEFAULT_AS_LIMIT, log: Path | None = None):
        self.as_limit, self.log = as_limit, log
        self.proc: subprocess.Popen | None = None
        self.buf = b""
        self.restarts = 0

    def _start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]),
               "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
               "TQDM_DISABLE": "1"}
        stderr = open(self.log, "ab") if self.log else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--driver", str(self.as_limit)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, env=env)
        if self.log:
            stderr.close()
        self.buf = b""
        answer = self._read(STARTUP_TIMEOUT)
        if not (answer and answer.get("ready")):
            self.close()
            raise RuntimeError(f"the load-fuzz driver did not start: {answer}")

    def _read(self, timeout: float) -> dict | None:
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while b"\n" not in self.buf:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    return {"timeout": True}
                chunk = os.read(fd, 65536)
                if not chunk:
                    return None
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def run(self, source: Path, case_dir: Path, timeout: float) -> dict:
        """The case's outcome; a timeout is retried once in a fresh driver, so that a machine busy for a
        moment is not taken for a hang."""
        answer = self._run(source, case_dir, timeout)
        if answer["type"] == "timeout":
            answer = self._run(source, case_dir, timeout)
        return answer

    def _run(self, source: Path, case_dir: Path, timeout: float) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        assert self.proc is not None and self.proc.stdin is not None
        start = time.monotonic()
        try:
            self.proc.stdin.write((json.dumps({"source": str(source), "dir": str(case_dir)}) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        answer = self._read(timeout)
        seconds = time.monotonic() - start
        if answer is None or answer.get("timeout"):
            timed_out = answer is not None
            self.close()
            code = self.proc.returncode if self.proc else None
            self.restarts += 1
            if timed_out:
                return {"outcome": "other", "type": "timeout", "message": f"no answer in {timeout:.0f} s", "seconds": seconds}
            return {"outcome": "other", "type": "crash", "message": f"driver exited with {code}", "seconds": seconds}
        answer["seconds"] = seconds
        return answer

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# --------------------------------------------------------------------------- running and reporting


@dataclass
class Result:
    case: Case
    outcome: str
    type: str
    message: str
    seconds: float


def run_cases(cases: Iterable[Case], workdir: Path, timeout: float = DEFAULT_TIMEOUT, as_limit: int = DEFAULT_AS_LIMIT,
              keep: bool = False, log: Path | None = None) -> list[Result]:
    """Each case in turn through one driver (restarted after a case that kills it); ``cases`` may be a
    generator, so that only one mutated file is in memory at a time."""
    driver = Driver(as_limit, log)
    results = []
    try:
        for case in cases:
            d = workdir / f"case-{case.index:05d}"
            d.mkdir(parents=True, exist_ok=True)
            source = case.write(d)
            answer = driver.run(source, d, timeout)
            results.append(Result(dataclasses.replace(case, write=None), answer["outcome"], answer.get("type", ""), answer.get("message", ""),
                                  answer.get("seconds", 0.0)))
            if not keep:
                shutil.rmtree(d, ignore_errors=True)
    finally:
        driver.close()
    return results


def fuzz(seed: int, n: int, workdir: Path, extra_gguf: dict[str, Path] | None = None,
         kinds: tuple[str, ...] = ("gguf", "hf", "ggml"), **kwargs: Any) -> list[Result]:
    """``n`` cases of ``seed``, taking turns over ``kinds``; ``extra_gguf`` (name -> path): GGUF files
    to mutate instead of the tiny ones."""
    bases = Bases.make(workdir / "bases", extra_gguf)
    return run_cases((make_case(bases, seed, i, kinds) for i in range(n)), workdir, **kwargs)


def table(results: list[Result], title: str = "") -> str:
    rows = []
    for kind in ("gguf", "hf", "ggml", None):
        rs = [r for r in results if kind is None or r.case.kind == kind]
        if kind is not None and not rs:
            continue
        count = {o: sum(r.outcome == o for r in rs) for o in ("clean", "loaded", "other")}
        rows.append(f"| {kind or 'all':5} | {len(rs):5} | {count['clean']:5} | {count['loaded']:6} | {count['other']:5} |")
    head = ["| files | tried | clean | loaded | other |", "| ----- | ----- | ----- | ------ | ----- |"]
    return "\n".join(([title] if title else []) + head + rows)


def others(results: list[Result]) -> str:
    return "\n".join(f"  #{r.case.index} {r.case.kind}/{r.case.base} [{r.case.what}] -> {r.type}: {r.message}"
                     for r in results if r.outcome == "other")


def main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--driver", type=int, metavar="AS_LIMIT", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--cases", type=int, default=150)
    p.add_argument("--only", type=int, nargs="*", help="run only these case indices")
    p.add_argument("--keep", type=Path, help="write the cases here and keep them")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT)
    p.add_argument("--verbose", "-v", action="store_true", help="print every case's outcome")
    args = p.parse_args(argv)
    if args.driver is not None:
        driver_main(args.driver)
        return 0
    sys.path.insert(0, str(TESTS))
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        bases = Bases.make(Path(tmp) / "bases")
        indices = args.only if args.only is not None else range(args.cases)
        start = time.monotonic()
        results = run_cases((make_case(bases, args.seed, i) for i in indices), work, args.timeout,
                            keep=args.keep is not None, log=Path(tmp) / "driver.log")
        if args.verbose:
            for r in results:
                print(f"#{r.case.index} {r.case.kind}/{r.case.base} [{r.case.what}] -> {r.outcome} {r.type}: "
                      f"{r.message} ({r.seconds:.2f}s)")
        print(table(results, f"seed {args.seed}, {len(results)} cases, {time.monotonic() - start:.0f} s"))
        if any(r.outcome == "other" for r in results):
            print("other:\n" + others(results))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
