"""Writes legacy GGML llama files (ggml, ggmf v1, ggjt v1-v3) for the tests.

Written from the format's facts, independently of the reader (engine/formats/ggml_parse.py): the
constants are spelled out here rather than taken from the gguf package.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

MAGIC = {"ggml": 0x67676D6C, "ggmf": 0x67676D66, "ggjt": 0x67676A74}  # written as little-endian uint32
TYPE_ID = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14,
}  # fmt: skip
# header ftype for a file whose matrices are all of one type (K-types: the _M / plain variant)
FILE_TYPE = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "Q5_0": 8, "Q5_1": 9,
    "Q2_K": 10, "Q3_K": 12, "Q4_K": 15, "Q5_K": 17, "Q6_K": 18,
}  # fmt: skip
# (elements per block, bytes per block)
BLOCK = {
    "F32": (1, 4), "F16": (1, 2), "Q4_0": (32, 18), "Q4_1": (32, 20), "Q5_0": (32, 22), "Q5_1": (32, 24),
    "Q8_0": (32, 34), "Q2_K": (256, 84), "Q3_K": (256, 110), "Q4_K": (256, 144), "Q5_K": (256, 176),
    "Q6_K": (256, 210),
}  # fmt: skip
ALL_VERSIONS = [("ggml", 0), ("ggmf", 1), ("ggjt", 1), ("ggjt", 2), ("ggjt", 3)]


def readable_types(kind: str, version: int) -> list[str]:
    """The tensor types llama.cpp's converter accepts in a file of this version."""
    if kind != "ggjt" or version < 2:
        return ["F32", "F16"]
    if version == 2:  # Q4_0 / Q4_1 / Q8_0 blocks had f32 scales until ggjt v3
        return [t for t in TYPE_ID if t not in ("Q4_0", "Q4_1", "Q8_0")]
    return list(TYPE_ID)


@dataclass
class Hparams:
    n_vocab: int
    n_embd: int
    n_mult: int
    n_head: int
    n_layer: int
    n_rot: int
    ftype: int

    def pack(self) -> bytes:
        return struct.pack("<7I", self.n_vocab, self.n_embd, self.n_mult, self.n_head, self.n_layer, self.n_rot, self.ftype)


@dataclass
class Tensor:
    name: str  # legacy name: tok_embeddings.weight, layers.0.attention.wq.weight, ...
    qtype: str
    shape: tuple[int, ...]  # torch order (rows, columns); the file stores it reversed
    data: bytes


def tensor(name: str, qtype: str, values: np.ndarray) -> Tensor:
    """``values``: float32 in torch order, stored as ``qtype`` (blocks from the project's quantizer, which
    matches gguf-py bit for bit where gguf-py implements the type; only the layout is under test here)."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    if qtype == "F32":
        data = values.tobytes()
    elif qtype == "F16":
        data = values.astype(np.float16).tobytes()
    else:
        import torch

        from mistralrs.engine.quant.quantize import quantize

        data = quantize(torch.from_numpy(values), qtype).numpy().tobytes()
    return Tensor(name, qtype, tuple(values.shape), data)


def write_ggml(path: Path, kind: str, version: int, hp: Hparams, vocab: list[tuple[bytes, float]],
               tensors: list[Tensor], type_ids: dict[str, int] | None = None) -> Path:
    """``type_ids`` overrides the stored type id of some tensors (by name), to write removed types."""
    out = bytearray(struct.pack("<I", MAGIC[kind]))
    if kind != "ggml":
        out += struct.pack("<I", version)
    out += hp.pack()
    for text, score in vocab:
        out += struct.pack("<I", len(text)) + text
        if kind != "ggml":  # the unversioned format has no scores
            out += struct.pack("<f", score)
    for t in tensors:
        block, size = BLOCK[t.qtype]
        ne = tuple(reversed(t.shape))
        n = int(np.prod(ne))
        assert len(t.data) == n // block * size, (t.name, len(t.data))
        name = t.name.encode()
        type_id = (type_ids or {}).get(t.name, TYPE_ID[t.qtype])
        out += struct.pack(f"<3I{len(ne)}I", len(ne), len(name), type_id, *ne) + name
        if kind == "ggjt":  # data aligned to 32 bytes from the start of the file
            out += bytes(-len(out) % 32)
        out += t.data
    path.write_bytes(bytes(out))
    return path


LAYER_PARTS = ("attention.wq", "attention.wk", "attention.wv", "attention.wo", "feed_forward.w1",
               "feed_forward.w2", "feed_forward.w3")


def random_llama(n_vocab: int = 300, n_embd: int = 256, n_ff: int = 512, n_layer: int = 1, n_head: int = 4,
                 n_kv_head: int | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights under their legacy names (torch order: [out, in])."""
    rng = np.random.default_rng(seed)
    n_kv_head = n_kv_head or n_head
    kv = n_embd // n_head * n_kv_head
    shapes = {"tok_embeddings.weight": (n_vocab, n_embd), "norm.weight": (n_embd,), "output.weight": (n_vocab, n_embd)}
    for i in range(n_layer):
        p = f"layers.{i}."
        shapes.update({
            p + "attention.wq.weight": (n_embd, n_embd), p + "attention.wk.weight": (kv, n_embd),
            p + "attention.wv.weight": (kv, n_embd), p + "attention.wo.weight": (n_embd, n_embd),
            p + "feed_forward.w1.weight": (n_ff, n_embd), p + "feed_forward.w2.weight": (n_embd, n_ff),
            p + "feed_forward.w3.weight": (n_ff, n_embd), p + "attention_norm.weight": (n_embd,),
            p + "ffn_norm.weight": (n_embd,),
        })  # fmt: skip
    out = {}
    for name, shape in shapes.items():
        scale = 0.1 if len(shape) == 2 else 0.05
        out[name] = (rng.standard_normal(shape) * scale + (1.0 if len(shape) == 1 else 0.0)).astype(np.float32)
    return out


def sentencepiece_vocab(n_vocab: int, seed: int = 0) -> list[tuple[bytes, float]]:
    """A llama-style legacy vocabulary: 3 specials, the 256 bytes, then distinct word pieces with scores
    (spaces as plain spaces, as the legacy converters stored SentencePiece's U+2581)."""
    rng = np.random.default_rng(seed)
    vocab = [(b"", 0.0), (b" <s>", 0.0), (b"</s>", 0.0)] + [(bytes([b]), 0.0) for b in range(256)]
    letters = "abcdefghijklmnopqrstuvwxyz"
    i = 0
    while len(vocab) < n_vocab:
        word, k = "", i
        while True:
            word, k = letters[k % 26] + word, k // 26 - 1
            if k < 0:
                break
        text = (" " + word if i % 2 else word).encode()
        vocab.append((text, -float(rng.uniform(1, 100))))
        i += 1
    return vocab[:n_vocab]


def write_llama(path: Path, kind: str, version: int, weights: dict[str, np.ndarray], qtype: str = "F32",
                n_head: int = 4, vocab: list[tuple[bytes, float]] | None = None,
                ftype: int | None = None) -> Path:
    """A llama file whose matrices are ``qtype`` and whose norms stay F32 (as llama.cpp stored them)."""
    n_vocab, n_embd = weights["tok_embeddings.weight"].shape
    n_layer = sum(1 for n in weights if n.endswith("attention_norm.weight"))
    hp = Hparams(n_vocab, n_embd, 256, n_head, n_layer, n_embd // n_head, FILE_TYPE[qtype] if ftype is None else ftype)
    tensors = [tensor(name, qtype if w.ndim == 2 else "F32", w) for name, w in weights.items()]
    return write_ggml(path, kind, version, hp, vocab or sentencepiece_vocab(n_vocab), tensors)
