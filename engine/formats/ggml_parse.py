"""A bounds-checked parser for legacy llama.cpp GGML files (before GGUF), torch-free.

The layout, as llama.cpp's ``convert_llama_ggml_to_gguf.py`` reads it (all little-endian):

- a uint32 magic: ``ggml`` (0x67676d6c, no version), ``ggmf`` (0x67676d66) or ``ggjt`` (0x67676a74),
  the latter two followed by a uint32 version (ggmf: 1; ggjt: 1..3);
- seven uint32 hyper-parameters: n_vocab, n_embd, n_mult, n_head, n_layer, n_rot, ftype;
- n_vocab tokens: uint32 length, the token's bytes, then (not in ``ggml``) a float32 score;
- tensors up to the end of the file: uint32 n_dims, name length and type id, n_dims uint32 sizes
  (ggml order: the contiguous dimension first), the name, and (``ggjt`` only) zero padding to a
  multiple of 32 bytes from the start of the file; then the data.

The header holds no tensor count and no KV-head count, rope base or norm epsilon; the checkpoint
(ggml_file.py) takes those as options. Quantized block layouts changed twice while these formats
were current, so, as the converter does, older files are accepted only with layouts that are still
today's: before ggjt v2 only F32/F16, and in ggjt v2 no Q4_0/Q4_1/Q8_0 (their scales became f16 in v3).
Where the converter looks only at the header's file type, we check every tensor too, so a file
never has its bytes misread. Tensors cannot share bytes here (each one's data follows its own header,
read in order), unlike GGUF's offset table; a name that appears twice is refused, and so (in
ggml_file.py) are two legacy names of one tensor, such as ``layers.0.x`` and ``layers.00.x``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from mistralrs.engine.formats.tensor_types import stored_type
from mistralrs.registry import QuantTypeSpec

MAGICS = {b"lmgg": "ggml", b"fmgg": "ggmf", b"tjgg": "ggjt"}  # the uint32 magics as stored bytes
VERSIONS = {"ggmf": (1,), "ggjt": (1, 2, 3)}
ALIGNMENT = 32  # ggjt pads each tensor's data to this, counted from the start of the file
MAX_NAME = 4096  # the converter's sanity bound on token and tensor-name lengths
MAX_DIMS = 4
# the tensor types a llama GGML file can hold (ids and block sizes come from the quant-type table)
STORAGE_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
REMOVED_TYPES = {4: "Q4_2", 5: "Q4_3"}  # tensor type ids llama.cpp dropped; no reader knows their blocks
# header ftype ("mostly ...") ids; 5 and 6 were the removed Q4_2 / Q4_3
FILE_TYPES = {
    0: "ALL_F32", 1: "MOSTLY_F16", 2: "MOSTLY_Q4_0", 3: "MOSTLY_Q4_1", 4: "MOSTLY_Q4_1_SOME_F16",
    7: "MOSTLY_Q8_0", 8: "MOSTLY_Q5_0", 9: "MOSTLY_Q5_1", 10: "MOSTLY_Q2_K", 11: "MOSTLY_Q3_K_S",
    12: "MOSTLY_Q3_K_M", 13: "MOSTLY_Q3_K_L", 14: "MOSTLY_Q4_K_S", 15: "MOSTLY_Q4_K_M", 16: "MOSTLY_Q5_K_S",
    17: "MOSTLY_Q5_K_M", 18: "MOSTLY_Q6_K",
}  # fmt: skip
_FLOAT_FILE_TYPES = (0, 1)
_V3_CHANGED_FILE_TYPES = (2, 3, 4, 7)  # their Q4_0/Q4_1/Q8_0 blocks got f16 scales in ggjt v3
_V3_CHANGED_TYPES = ("Q4_0", "Q4_1", "Q8_0")


class GGMLFormatError(ValueError):
    pass


@dataclass(frozen=True)
class Hyperparameters:
    n_vocab: int
    n_embd: int
    n_mult: int
    n_head: int
    n_layer: int
    n_rot: int
    ftype: int


@dataclass(frozen=True)
class GGMLTensorEntry:
    name: str  # the legacy name, e.g. layers.0.attention.wq.weight
    qtype: str
    shape: tuple[int, ...]  # torch order: the stored sizes reversed
    offset: int  # absolute byte offset of the data
    n_bytes: int


@dataclass
class GGMLHeader:
    kind: str  # ggml | ggmf | ggjt
    version: int  # 0 for the unversioned ggml
    hparams: Hyperparameters
    vocab: list[tuple[bytes, float]]
    tensors: list[GGMLTensorEntry]

    @property
    def label(self) -> str:
        return _label(self.kind, self.version)


def _label(kind: str, version: int) -> str:
    return f"{kind} v{version}" if version else f"{kind} (unversioned)"


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGMLFormatError(f"truncated while reading {what} at byte {self.pos} (file has {len(self.buf)} bytes)")

    def unpack(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize(fmt)
        self.need(size, what)
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return values

    def take(self, n: int, what: str) -> bytes:
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw


def _magic_and_version(cur: _Cursor) -> tuple[str, int]:
    if len(cur.buf) < 4:
        raise GGMLFormatError(f"not a GGML file ({len(cur.buf)} bytes)")
    magic = cur.take(4, "magic")
    kind = MAGICS.get(magic)
    if kind is None:
        raise GGMLFormatError(f"not a GGML file (magic {magic!r}; expected one of {', '.join(map(repr, MAGICS))})")
    if kind == "ggml":
        return kind, 0
    (version,) = cur.unpack("<I", "version")
    if version not in VERSIONS[kind]:
        supported = ", ".join(str(v) for v in VERSIONS[kind])
        raise GGMLFormatError(f"unsupported {kind} version {version} (supported: {supported})")
    return kind, version


def _check_file_type(kind: str, version: int, ftype: int, label: str) -> None:
    if ftype not in FILE_TYPES:
        removed = {5: " (the removed MOSTLY_Q4_2)", 6: " (the removed MOSTLY_Q4_3)"}.get(ftype, "")
        raise GGMLFormatError(f"unknown file type {ftype}{removed} in the {label} header")
    if (kind != "ggjt" or version < 2) and ftype not in _FLOAT_FILE_TYPES:
        raise GGMLFormatError(
            f"{label} file of type {FILE_TYPES[ftype]}: quantized blocks changed in ggjt v2, so only F32/F16 "
            "files older than ggjt v2 can be read"
        )
    if kind == "ggjt" and version == 2 and ftype in _V3_CHANGED_FILE_TYPES:
        raise GGMLFormatError(
            f"{label} file of type {FILE_TYPES[ftype]}: the Q4_0/Q4_1/Q8_0 block layout changed in ggjt v3 "
            "(f16 scales), and this older layout cannot be read"
        )


def _check_tensor_type(kind: str, version: int, name: str, type_id: int, label: str) -> QuantTypeSpec:
    if type_id in REMOVED_TYPES:
        raise GGMLFormatError(f"tensor {name!r} has type {REMOVED_TYPES[type_id]} (id {type_id}), which llama.cpp removed")
    qtype, spec = stored_type(type_id)
    if spec is None or qtype not in STORAGE_TYPES:
        shown = f"id {type_id}" if qtype.startswith("UNKNOWN") else qtype
        raise GGMLFormatError(
            f"tensor {name!r} has type {shown}, not one a llama GGML file holds "
            f"({', '.join(STORAGE_TYPES)})"
        )
    if (kind != "ggjt" or version < 2) and qtype not in ("F32", "F16"):
        raise GGMLFormatError(f"{label} tensor {name!r} has type {qtype}: quantized blocks before ggjt v2 use an older layout")
    if kind == "ggjt" and version == 2 and qtype in _V3_CHANGED_TYPES:
        raise GGMLFormatError(f"{label} tensor {name!r} has type {qtype}, whose block layout changed in ggjt v3")
    return spec


def _read_vocab(cur: _Cursor, n_vocab: int, scores: bool) -> list[tuple[bytes, float]]:
    entry = 8 if scores else 4
    cur.need(n_vocab * entry, f"{n_vocab} vocabulary entries")  # rejects absurd counts before looping
    vocab = []
    for i in range(n_vocab):
        (n,) = cur.unpack("<I", f"length of token {i}")
        if n >= MAX_NAME:
            raise GGMLFormatError(f"token {i} has an absurd length {n}")
        text = cur.take(n, f"token {i}")
        score = cur.unpack("<f", f"score of token {i}")[0] if scores else 0.0
        vocab.append((text, score))
    return vocab


def _read_tensor(cur: _Cursor, kind: str, version: int, label: str) -> GGMLTensorEntry:
    at = cur.pos
    n_dims, name_len, type_id = cur.unpack("<3I", f"tensor header at byte {at}")
    if name_len >= MAX_NAME:
        raise GGMLFormatError(f"tensor at byte {at} has an absurd name length {name_len}")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGMLFormatError(f"tensor at byte {at} has {n_dims} dimensions (expected 1..{MAX_DIMS})")
    ne = cur.unpack(f"<{n_dims}I", f"shape of the tensor at byte {at}")
    name = cur.take(name_len, f"name of the tensor at byte {at}").decode("utf-8", errors="replace")
    spec = _check_tensor_type(kind, version, name, type_id, label)
    qtype = spec.name
    if kind == "ggjt":
        cur.pos = -(-cur.pos // ALIGNMENT) * ALIGNMENT
    block, type_size = spec.block_size, spec.type_size
    if min(ne) == 0 or ne[0] % block:
        raise GGMLFormatError(f"tensor {name!r} has a bad shape {list(ne)} for type {qtype} (block size {block})")
    n = 1
    for d in ne:
        n *= d
    n_bytes = n // block * type_size
    if cur.pos + n_bytes > len(cur.buf):
        raise GGMLFormatError(
            f"truncated: tensor {name!r} needs bytes {cur.pos}..{cur.pos + n_bytes} but the file has {len(cur.buf)}"
        )
    entry = GGMLTensorEntry(name, qtype, tuple(reversed(ne)), cur.pos, n_bytes)
    cur.pos += n_bytes
    return entry


def parse_ggml(buf: memoryview) -> GGMLHeader:
    cur = _Cursor(buf)
    kind, version = _magic_and_version(cur)
    label = _label(kind, version)
    hp = Hyperparameters(*cur.unpack("<7I", "hyper-parameters"))
    _check_file_type(kind, version, hp.ftype, label)
    if hp.n_vocab < 3:
        raise GGMLFormatError(f"vocabulary of {hp.n_vocab} tokens (at least <unk>, <s>, </s> expected)")
    vocab = _read_vocab(cur, hp.n_vocab, scores=kind != "ggml")
    tensors: list[GGMLTensorEntry] = []
    seen: set[str] = set()
    while cur.pos < len(buf):
        t = _read_tensor(cur, kind, version, label)
        if t.name in seen:
            raise GGMLFormatError(f"tensor {t.name!r} appears twice")
        seen.add(t.name)
        tensors.append(t)
    return GGMLHeader(kind, version, hp, vocab, tensors)
