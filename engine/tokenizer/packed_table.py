"""``PackedBytes`` / ``PackedStrings``: a vocabulary's per-token byte strings or texts in one buffer.

A Python list of 262,144 ``str`` or ``bytes`` objects (Gemma 3's vocabulary) holds 12-24 MB for a few
MB of text: every object carries a ~40-byte header. One ``bytes`` buffer plus an offsets array holds the
same in about 4 MB, and each lookup builds one small object.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable, Sequence

__all__ = ["PackedBytes", "PackedStrings", "as_attr_array"]


class PackedBytes(Sequence):
    """An immutable sequence of ``bytes`` stored back to back."""

    __slots__ = ("_data", "_ends")

    def __init__(self, items: Iterable[bytes]) -> None:
        chunks = []
        ends = array("q")
        total = 0
        for item in items:
            chunks.append(item)
            total += len(item)
            ends.append(total)
        self._data = b"".join(chunks)
        self._ends = ends

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, i):  # int -> bytes (slices are not needed by the tokenizer)
        if not isinstance(i, int):
            raise TypeError(f"{type(self).__name__} indices must be integers, not {type(i).__name__}")
        if i < 0:
            i += len(self._ends)
        end = self._ends[i]  # IndexError past the end
        return self._data[self._ends[i - 1] if i else 0:end]

    @property
    def nbytes(self) -> int:
        return len(self._data) + self._ends.itemsize * len(self._ends)


class PackedStrings(PackedBytes):
    """An immutable sequence of ``str`` stored as UTF-8 (``surrogatepass``: any Python string survives)."""

    __slots__ = ()

    def __init__(self, items: Iterable[str]) -> None:
        super().__init__(s.encode("utf-8", "surrogatepass") for s in items)

    def __getitem__(self, i) -> str:
        return super().__getitem__(i).decode("utf-8", "surrogatepass")


def as_attr_array(values: Sequence[int]) -> array:
    """Token attribute flags as a compact unsigned array."""
    return array("I", values)
