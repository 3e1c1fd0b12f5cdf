"""``TextTokenizer``: encoding and decoding with llama.cpp's semantics.

Build one with :func:`~.gguf_vocab.tokenizer_from_gguf` (GGUF metadata) or
:func:`~.hf_vocab.tokenizer_from_hf_dir` (an HF model directory).  Encoding runs in the HF
``tokenizers`` library, configured by those builders so that it makes the same decisions as
llama.cpp's ``llama_tokenize``.

Decoding does not go through ``tokenizers``: every token has a byte string, its *piece*, computed like
llama.cpp's ``token_to_piece`` (:func:`token_pieces`: byte-level decoding for gpt2 vocabularies;
U+2581 -> space and ``<0xXX>`` -> one byte for SentencePiece; the raw text for control and
user-defined tokens), and a decoded text is the UTF-8 decoding of the concatenated pieces.  That makes
streaming exact (see :class:`~.detokenizer.IncrementalDetokenizer`).

Differences from ``llama_detokenize``, both deliberate: no ``clean_up_tokenization_spaces`` pass
(it is not incremental; llama.cpp's own streaming path ``common_token_to_piece`` does not do it
either), and for ``add_space_prefix`` vocabularies the leading space is removed from the first
non-skipped token (HF's rule; llama.cpp keeps it when the list starts with BOS), so that
``decode(encode(text), skip_special=True) == text``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from mistralrs.engine.tokenizer.packed_table import PackedBytes, PackedStrings, as_attr_array

__all__ = [
    "ATTR_BYTE",
    "ATTR_CONTROL",
    "ATTR_NORMAL",
    "ATTR_UNDEFINED",
    "ATTR_UNKNOWN",
    "ATTR_UNUSED",
    "ATTR_USER_DEFINED",
    "SPECIAL_ATTRS",
    "TextTokenizer",
    "TokenizerError",
    "byte_token_value",
    "token_pieces",
]


class TokenizerError(ValueError):
    """The tokenizer description is unusable (unsupported model, missing vocabulary, bad ids...)."""


# llama.cpp ``enum llama_token_attr`` (bit flags)
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5

SPECIAL_ATTRS = ATTR_CONTROL | ATTR_UNKNOWN  # parsed only with parse_special; dropped by skip_special


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (llama.cpp ``unicode_byte_to_utf8_map``)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
_BYTE_TOKEN_RE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytelevel_to_bytes(text: str) -> bytes:
    dec = _BYTE_DECODER
    try:
        return bytes([dec[c] for c in text])
    except KeyError:
        # not a byte-level string: keep the characters that are, the others as UTF-8
        return b"".join(bytes([dec[c]]) if c in dec else c.encode("utf-8") for c in text)


def byte_token_value(text: str) -> int | None:
    """The byte a SentencePiece byte-fallback token ``<0xXX>`` stands for, else None."""
    m = _BYTE_TOKEN_RE.fullmatch(text)
    return int(m.group(1), 16) if m else None


def token_pieces(tokens: Sequence[str], attrs: Sequence[int], spm: bool) -> list[bytes]:
    """llama.cpp ``token_to_piece(special=True)`` for every token.

    ``spm``: normal tokens are SentencePiece text (U+2581 for spaces), else GPT-2 byte-level text.
    """
    raw = ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED
    out: list[bytes] = []
    app = out.append
    for t, a in zip(tokens, attrs):
        if a & raw:
            app(t.encode("utf-8"))
        elif a & ATTR_NORMAL:
            app(t.replace("▁", " ").encode("utf-8") if spm else _bytelevel_to_bytes(t))
        elif a & ATTR_BYTE:
            v = byte_token_value(t)
            app(bytes([v]) if v is not None else b"")
        else:  # unused / undefined tokens render as nothing
            app(b"")
    return out


_SURROGATE = re.compile("[\ud800-\udfff]")


def _utf8_safe(text: str) -> str:
    """``text`` if it encodes as UTF-8; a lone surrogate (JSON allows ``"\\ud800"``) becomes U+FFFD, as
    the native tokenizer takes UTF-8 only."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)


class TextTokenizer:
    """Encode/decode text with llama.cpp's semantics (see the module docstring).

    Build one with :func:`~.gguf_vocab.tokenizer_from_gguf` or :func:`~.hf_vocab.tokenizer_from_hf_dir`.
    Thread-safe.
    """

    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    eog_ids: frozenset[int]
    add_bos: bool
    add_eos: bool
    chat_template: str | None
    bos_token: str | None
    eos_token: str | None

    def __init__(
        self,
        *,
        hf_tokenizer: Tokenizer | None,
        tokens: Sequence[str],
        attrs: Sequence[int],
        pieces: Sequence[bytes],
        kind: str,
        bos_id: int | None,
        eos_id: int | None,
        eog_ids: frozenset[int] | set[int],
        add_bos: bool,
        add_eos: bool = False,
        strip_leading_space: bool = False,
        chat_template: str | None = None,
        named_chat_templates: Mapping[str, str] | None = None,
        special_ids: Mapping[str, int | None] | None = None,
        pre: str | None = None,
        native_spm: Any = None,
    ):
        """``native_spm``: the native kernels' ``SpmTokenizer`` for this vocabulary, which then encodes
        instead of ``hf_tokenizer`` (None for such a tokenizer)."""
        n = len(tokens)
        if (hf_tokenizer is None) == (native_spm is None):
            raise TokenizerError("a TextTokenizer encodes with either a tokenizers.Tokenizer or a native SPM tokenizer")
        if not (len(attrs) == len(pieces) == n):
            raise TokenizerError("tokens, attrs and pieces must have the same length")
        self._hf = hf_tokenizer
        self._spm = native_spm
        # packed: a list of Gemma 3's 262k token strings and pieces alone would hold 36 MB
        self._tokens = PackedStrings(tokens)
        self._attrs = as_attr_array(attrs)
        self._pieces = PackedBytes(pieces)
        self._special = frozenset(i for i, a in enumerate(self._attrs) if a & SPECIAL_ATTRS)
        self._lock = threading.Lock()
        self.kind = kind
        self.pre = pre
        self.vocab_size = n
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.eog_ids = frozenset(eog_ids)
        self.add_bos = bool(add_bos)
        self.add_eos = bool(add_eos)
        self.strip_leading_space = bool(strip_leading_space)
        self.chat_template = chat_template
        self.named_chat_templates = dict(named_chat_templates or {})
        self.special_ids = dict(special_ids or {})
        self.bos_token = self._tokens[bos_id] if bos_id is not None else None
        self.eos_token = self._tokens[eos_id] if eos_id is not None else None
        if self.add_bos and bos_id is None:
            raise TokenizerError("add_bos is true, but the vocabulary has no BOS token")
        if self.add_eos and eos_id is None:
            raise TokenizerError("add_eos is true, but the vocabulary has no EOS token")

    # ------------------------------------------------------------------ encoding
    def encode(self, text: str, *, add_special: bool = True, parse_special: bool = False) -> list[int]:
        """Token ids of ``text`` — llama.cpp's ``llama_tokenize(text, add_special, parse_special)``.

        ``add_special`` adds BOS (and EOS) as the vocabulary says (``add_bos`` / ``add_eos``);
        ``parse_special`` turns the text of control tokens (``<|im_start|>``...) into those tokens;
        user-defined tokens are always parsed.
        """
        if not isinstance(text, str):
            raise TypeError(f"encode() expects str, got {type(text).__name__}")
        if text and self._spm is not None:
            ids = self._spm.encode(_utf8_safe(text), parse_special)
        elif text:
            with self._lock:
                self._hf.encode_special_tokens = not parse_special
                ids = self._hf.encode(text, add_special_tokens=False).ids
        else:
            ids = []
        if add_special:
            if self.add_bos:
                ids.insert(0, self.bos_id)
            if self.add_eos:
                ids.append(self.eos_id)
        return ids

    # ------------------------------------------------------------------ decoding
    def _check_id(self, id: int) -> int:
        if not isinstance(id, (int, np.integer)) or isinstance(id, bool):
            raise TypeError(f"token id must be an int, got {type(id).__name__}")
        if not 0 <= id < self.vocab_size:
            raise TokenizerError(f"token id {int(id)} out of range [0, {self.vocab_size})")
        return int(id)

    def _render(self, ids: Sequence[int], skip_special: bool, first: bool) -> tuple[bytes, bool]:
        """Bytes of ``ids`` and whether the next token would still be the first of the text."""
        out = bytearray()
        pieces, special, strip = self._pieces, self._special, self.strip_leading_space
        for id in ids:
            id = self._check_id(id)
            if skip_special and id in special:
                continue
            piece = pieces[id]
            if first:
                first = False
                if strip and piece[:1] == b" ":
                    piece = piece[1:]
            out += piece
        return bytes(out), first

    def decode(self, ids: Sequence[int], *, skip_special: bool = False) -> str:
        """Text of ``ids``: concatenated pieces, decoded as UTF-8 (invalid bytes -> U+FFFD).

        ``skip_special`` drops control (and unknown) tokens such as BOS, ``<|im_end|>``.
        """
        data, _ = self._render(ids, skip_special, True)
        return data.decode("utf-8", errors="replace")

    def id_to_bytes(self, id: int) -> bytes:
        """The bytes token ``id`` stands for (llama.cpp ``token_to_piece(special=True)``)."""
        return self._pieces[self._check_id(id)]

    def id_to_piece(self, id: int) -> str:
        """``id_to_bytes`` decoded as UTF-8 (a lone byte-fallback token gives U+FFFD)."""
        return self.id_to_bytes(id).decode("utf-8", errors="replace")

    def id_to_token(self, id: int) -> str:
        """The vocabulary string of token ``id`` (e.g. ``'Ġworld'``, ``'▁world'``, ``'<0x0A>'``)."""
        return self._tokens[self._check_id(id)]

    def token_to_id(self, token: str) -> int | None:
        """Id of the vocabulary string ``token`` (not of arbitrary text: use ``encode``)."""
        if self._spm is not None:
            id = self._spm.token_to_id(_utf8_safe(token))
        else:  # the same vocabulary, without a second map of it
            id = self._hf.token_to_id(token)
        return id if id is not None and id >= 0 and self._tokens[id] == token else None

    def token_attr(self, id: int) -> int:
        """llama.cpp token attribute flags (``ATTR_*`` in this module)."""
        return self._attrs[self._check_id(id)]

    def is_special(self, id: int) -> bool:
        """Control/unknown token: dropped by ``decode(skip_special=True)``."""
        return self._check_id(id) in self._special

    def is_eog(self, id: int) -> bool:
        return id in self.eog_ids

    @property
    def hf_tokenizer(self) -> Tokenizer | None:
        """The underlying ``tokenizers.Tokenizer`` (encode with ``add_special_tokens=False``); None where
        the native SentencePiece tokenizer encodes."""
        return self._hf

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"TextTokenizer(kind={self.kind!r}, pre={self.pre!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, eog_ids={sorted(self.eog_ids)}, "
            f"add_bos={self.add_bos})"
        )
