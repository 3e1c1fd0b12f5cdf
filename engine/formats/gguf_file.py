"""GGUF checkpoints: memory-mapped, tensors handed out as zero-copy torch views of the map."""

from __future__ import annotations

import mmap
import warnings
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from mistralrs.engine.formats.checkpoint import ArchitectureHint, ModelFileError, RawTensor
from mistralrs.engine.formats.gguf_parse import MAGIC, GGUFFormatError, parse_gguf

LEGACY_MAGICS = {b"lmgg": "ggml (unversioned)", b"fmgg": "ggmf", b"tjgg": "ggjt"}
_TYPED = {"F32": np.float32, "F16": np.float16}


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) == MAGIC


class GGUFLayoutCheckpoint:
    """Tensors with GGUF names and types, as zero-copy views of a memory map, and a tokenizer from
    GGUF metadata: GGUF files, and the legacy GGML files that present themselves as GGUF ones.
    A subclass sets ``path``, ``metadata``, ``_entries`` (name -> entry with qtype, shape, offset,
    n_bytes) and ``_bytes`` (the map as uint8)."""

    path: Path
    metadata: dict[str, Any]
    _entries: dict[str, Any]
    _bytes: np.ndarray
    _tokenizer: Any = None

    def tensor_names(self) -> list[str]:
        return list(self._entries)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """A tensor's element shape (torch order) without touching its data."""
        return self._entries[name].shape

    def tensor(self, name: str) -> RawTensor:
        e = self._entries[name]
        data = self._bytes[e.offset : e.offset + e.n_bytes]
        if e.qtype in _TYPED:
            if e.offset % np.dtype(_TYPED[e.qtype]).itemsize:  # unpadded legacy GGML data: copy, never view unaligned
                data = data.copy()
            data = data.view(_TYPED[e.qtype]).reshape(e.shape)
        with warnings.catch_warnings():  # the map is read-only and nothing writes to these views
            warnings.simplefilter("ignore", UserWarning)
            return RawTensor(name, e.qtype, e.shape, torch.from_numpy(data),
                             release=lambda start, end: self._drop_pages(e.offset + start, e.offset + end))

    def tensors(self) -> Iterator[RawTensor]:
        for name in self._entries:
            yield self.tensor(name)

    def file_tensor_bytes(self) -> int:
        return sum(e.n_bytes for e in self._entries.values())

    def configure(self, options: Any) -> None:
        """GGUF metadata says everything the model needs (legacy GGML files override this)."""

    def release_pages(self, names: list[str] | None = None) -> None:
        """Drop the pages of these tensors (default: the whole file) from this process once the
        model holds its own copies (repacked blocks, float tensors): loading then never holds a
        model twice. Safe either way: a page read again is faulted back in from the page cache."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        if names is None:
            self._map.madvise(mmap.MADV_DONTNEED)
            return
        for name in names:
            e = self._entries.get(name)
            if e is not None:
                self._drop_pages(e.offset, e.offset + e.n_bytes)

    def _drop_pages(self, start: int, end: int) -> None:
        """Drop the whole pages inside the file's bytes [start, end) (a page shared with a neighbour
        stays: the neighbour may not be copied yet)."""
        if not hasattr(mmap, "MADV_DONTNEED"):
            return
        first = -(-start // mmap.PAGESIZE) * mmap.PAGESIZE
        last = end // mmap.PAGESIZE * mmap.PAGESIZE
        if last > first:
            self._map.madvise(mmap.MADV_DONTNEED, first, last - first)

    def tokenizer(self) -> Any:
        """The file's tokenizer, built once. The vocabulary arrays then leave the metadata: the tokenizer
        holds what it needs, and for a 262k vocabulary (Gemma 3) they are 40 MB of Python objects."""
        if self._tokenizer is None:
            from mistralrs.engine.tokenizer.gguf_vocab import tokenizer_from_gguf

            try:
                self._tokenizer = tokenizer_from_gguf(self.metadata)
            except ValueError as exc:
                raise ModelFileError(self.path, f"tokenizer: {exc}") from exc
            for key in VOCABULARY_ARRAYS:
                if key in self.metadata:
                    self.metadata[key] = _Released(len(self.metadata[key]))
        return self._tokenizer


    def recommended_sampling(self) -> dict[str, float | int]:
        from mistralrs.engine.formats.recommended_sampling import from_gguf

        return from_gguf(self.metadata, str(self.path))


VOCABULARY_ARRAYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type",
                     "tokenizer.ggml.merges")


class _Released:
    """A vocabulary array after the tokenizer took it: its length stays readable (for counting)."""

    def __init__(self, length: int):
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __repr__(self) -> str:
        return f"<{self.length} entries, in the tokenizer>"


class GGUFCheckpoint(GGUFLayoutCheckpoint):
    format = "gguf"

    def __init__(self, path: Path, known_types: set[str] | None = None):
        self.path = Path(path)
        with self.path.open("rb") as f:
            magic = f.read(4)
            if magic in LEGACY_MAGICS:
                raise ModelFileError(self.path, f"legacy {LEGACY_MAGICS[magic]} file, not GGUF (the ggml format reads it)")
            if magic != MAGIC:
                raise ModelFileError(self.path, f"not a GGUF file (magic {magic!r}, expected {MAGIC!r})")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            header = parse_gguf(memoryview(self._map))
        except GGUFFormatError as exc:
            raise ModelFileError(self.path, str(exc)) from exc
        self.version = header.version
        self.metadata: dict[str, Any] = header.metadata
        self._entries = {t.name: t for t in header.tensors}
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        if known_types is not None:
            for t in header.tensors:
                if t.qtype not in known_types:
                    raise ModelFileError(
                        self.path,
                        f"tensor {t.name!r} has type {t.qtype}, which no registered quant type supports "
                        f"(supported: {', '.join(sorted(known_types))})",
                    )

    def architecture(self) -> ArchitectureHint:
        arch = self.metadata.get("general.architecture")
        if not isinstance(arch, str):
            raise ModelFileError(self.path, "GGUF metadata has no general.architecture")
        return ArchitectureHint(gguf=arch)

def open_gguf(path: Path, known_types: set[str] | None = None) -> GGUFCheckpoint:
    return GGUFCheckpoint(path, known_types)
