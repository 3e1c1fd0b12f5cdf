"""A fast, bounds-checked GGUF header parser over a read-only memory map.

gguf-py's ``GGUFReader`` builds one numpy view per array element, which takes 4 s for SmolLM2's
49k-token vocabulary and over 20 s for Gemma 3's 262k here; this parser reads the same header in a
fraction of a second. It takes the value types from the ``gguf`` package and tensor types with their
block sizes from the quant-type table (tensor_types.py: plugins' types read too), and tests check it
against ``GGUFReader`` on real files.
Every read is bounds-checked: a damaged or hostile file gives ``GGUFFormatError``, never a crash or
a huge allocation.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFValueType

from mistralrs.engine.formats.tensor_types import stored_type
from mistralrs.registry import QuantTypeSpec

MAGIC = b"GGUF"
DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4
# arrays of arrays: gguf-py writes them, llama.cpp reads none; a few levels are plenty, and a bound
# keeps a crafted file from recursing until Python gives up
MAX_NESTING = 8

_SCALAR = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H",
    GGUFValueType.INT16: "<h", GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i",
    GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?", GGUFValueType.UINT64: "<Q",
    GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}
_NUMPY = {
    GGUFValueType.UINT8: "<u1", GGUFValueType.INT8: "<i1", GGUFValueType.UINT16: "<u2",
    GGUFValueType.INT16: "<i2", GGUFValueType.UINT32: "<u4", GGUFValueType.INT32: "<i4",
    GGUFValueType.FLOAT32: "<f4", GGUFValueType.BOOL: "?", GGUFValueType.UINT64: "<u8",
    GGUFValueType.INT64: "<i8", GGUFValueType.FLOAT64: "<f8",
}


class GGUFFormatError(ValueError):
    pass


@dataclass(frozen=True)
class TensorEntry:
    name: str
    qtype: str  # the quant type's name, as tensor_types.stored_type gives it
    shape: tuple[int, ...]  # torch order: ggml's ne reversed
    offset: int  # absolute byte offset in the file
    n_bytes: int


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, Any]
    tensors: list[TensorEntry]
    data_offset: int


class _Cursor:
    def __init__(self, buf: memoryview):
        self.buf, self.pos = buf, 0

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFFormatError(f"truncated while reading {what} at byte {self.pos} (file has {len(self.buf)} bytes)")

    def unpack(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        self.need(n, what)
        raw = bytes(self.buf[self.pos : self.pos + n])
        self.pos += n
        return raw.decode("utf-8", errors="replace")

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype == GGUFValueType.STRING:
            return self.string(what)
        if vtype == GGUFValueType.ARRAY:
            if depth >= MAX_NESTING:  # recursion would otherwise end in a RecursionError
                raise GGUFFormatError(f"{what}: arrays nested more than {MAX_NESTING} deep")
            item_type = self.unpack("<I", what)
            count = self.unpack("<Q", what)
            return self.array(item_type, count, what, depth + 1)
        try:
            fmt = _SCALAR[GGUFValueType(vtype)]
        except (ValueError, KeyError):
            raise GGUFFormatError(f"{what}: unknown value type {vtype}") from None
        return self.unpack(fmt, what)

    def array(self, item_type: int, count: int, what: str, depth: int = 1) -> list[Any]:
        if item_type == GGUFValueType.STRING:
            self.need(count * 8, what)  # every string has at least its 8-byte length
            return [self.string(what) for _ in range(count)]
        if item_type == GGUFValueType.ARRAY:
            self.need(count * 12, what)
            return [self.value(GGUFValueType.ARRAY, what, depth) for _ in range(count)]
        try:
            dtype = np.dtype(_NUMPY[GGUFValueType(item_type)])
        except (ValueError, KeyError):
            raise GGUFFormatError(f"{what}: unknown array item type {item_type}") from None
        self.need(count * dtype.itemsize, what)
        values = np.frombuffer(self.buf, dtype=dtype, count=count, offset=self.pos)
        self.pos += count * dtype.itemsize
        return values.tolist()


def _tensor_bytes(name: str, qtype: str, spec: QuantTypeSpec | None, ne: list[int]) -> int:
    """Bytes of a tensor's data. A type no plugin registered is refused by name when read, but its
    bytes still count, from gguf's table where gguf knows the type, so the bounds checks stay whole."""
    if spec is not None:
        block, type_size = spec.block_size, spec.type_size
    elif qtype in GGMLQuantizationType.__members__ and GGMLQuantizationType[qtype] in GGML_QUANT_SIZES:
        block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType[qtype]]
    else:
        return 0
    if ne and ne[0] % block:
        raise GGUFFormatError(f"tensor {name!r}: row length {ne[0]} is not a multiple of the {qtype} block size {block}")
    n = 1
    for d in ne:
        n *= d
    return n // block * type_size


def parse_gguf(buf: memoryview) -> GGUFHeader:
    cur = _Cursor(buf)
    if len(buf) < 4:
        raise GGUFFormatError(f"not a GGUF file ({len(buf)} bytes)")
    if bytes(buf[:4]) != MAGIC:
        raise GGUFFormatError(f"not a GGUF file (bad magic {bytes(buf[:4])!r}, expected {MAGIC!r})")
    cur.pos = 4
    version = cur.unpack("<I", "version")
    if version not in (2, 3):
        raise GGUFFormatError(f"unsupported GGUF version {version} (supported: 2, 3)")
    n_tensors = cur.unpack("<Q", "tensor count")
    n_kv = cur.unpack("<Q", "metadata count")
    cur.need(n_kv * 13 + n_tensors * 24, "header counts")  # minimal sizes; rejects absurd counts early
    metadata: dict[str, Any] = {}
    for i in range(n_kv):
        key = cur.string(f"metadata key #{i}")
        if key in metadata:  # which value counts would be a guess (llama.cpp refuses these files too)
            raise GGUFFormatError(f"duplicate metadata key {key!r}")
        vtype = cur.unpack("<I", f"type of {key!r}")
        metadata[key] = cur.value(vtype, f"metadata {key!r}")
    infos = []
    names: set[str] = set()
    for i in range(n_tensors):
        name = cur.string(f"tensor name #{i}")
        if name in names:
            raise GGUFFormatError(f"duplicate tensor name {name!r}")
        names.add(name)
        n_dims = cur.unpack("<I", f"dims of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(f"tensor {name!r}: {n_dims} dimensions (expected 1..{MAX_DIMS})")
        ne = [cur.unpack("<Q", f"shape of {name!r}") for _ in range(n_dims)]
        qtype, spec = stored_type(cur.unpack("<I", f"type of {name!r}"))
        offset = cur.unpack("<Q", f"offset of {name!r}")
        infos.append((name, qtype, spec, ne, offset))
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"general.alignment {alignment!r} is not a power of two")
    data_offset = -(-cur.pos // alignment) * alignment
    tensors = []
    for name, qtype, spec, ne, offset in infos:
        n_bytes = _tensor_bytes(name, qtype, spec, ne)
        if offset % alignment:
            raise GGUFFormatError(f"tensor {name!r}: data offset {offset} is not a multiple of the alignment {alignment}")
        start = data_offset + offset
        if start + n_bytes > len(buf):
            raise GGUFFormatError(
                f"truncated: tensor {name!r} needs bytes {start}..{start + n_bytes} but the file has {len(buf)}"
            )
        tensors.append(TensorEntry(name, qtype, tuple(reversed(ne)), start, n_bytes))
    _refuse_overlaps(tensors)
    return GGUFHeader(version, metadata, tensors, data_offset)


def _refuse_overlaps(tensors: list[TensorEntry]) -> None:
    """Two tensors sharing bytes: a crafted or corrupt file (a writer lays tensors out one after another)."""
    ordered = sorted((t for t in tensors if t.n_bytes), key=lambda t: t.offset)
    for before, after in zip(ordered, ordered[1:]):
        if after.offset < before.offset + before.n_bytes:
            raise GGUFFormatError(f"tensors {before.name!r} and {after.name!r} overlap in the file "
                                  f"(bytes {before.offset}..{before.offset + before.n_bytes} and {after.offset}..)")


def read_gguf_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """All key/value metadata of a GGUF file as plain Python values."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            raise GGUFFormatError(f"{path}: not a GGUF file (empty)")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            view = memoryview(mm)
            try:
                return parse_gguf(view).metadata
            finally:
                view.release()
