"""Text tokenizers that reproduce llama.cpp's tokenization exactly.

Two sources:

* GGUF metadata (``tokenizer_from_gguf``): the vocabulary, token types, scores and merges that
  llama.cpp itself reads.  Tokenization runs in the HF ``tokenizers`` library, configured so that it
  makes the same decisions as llama.cpp's ``llama_tokenize`` (``src/llama-vocab.cpp``):

  - ``tokenizer.ggml.model == "gpt2"``: byte-level BPE from ``tokens`` + ``merges``, with the
    pre-tokenizer regexes llama.cpp picks for ``tokenizer.ggml.pre``;
  - ``tokenizer.ggml.model == "llama"``: llama.cpp's SentencePiece (SPM) algorithm, which greedily
    merges the adjacent pair whose concatenation is the vocabulary token with the highest score.
    A ``tokenizers`` BPE model whose merges are every split ``(a, b)`` of every token ``a+b`` with
    both halves in the vocabulary, ranked by the score of ``a+b`` (highest first), makes the same
    merges; ``byte_fallback`` gives the ``<0xXX>`` tokens for characters that are not in the vocab;
    spaces become U+2581 and a leading one is added only when ``tokenizer.ggml.add_space_prefix``.
  - special tokens: llama.cpp splits the text on CONTROL / UNKNOWN tokens only when
    ``parse_special`` is true, but on USER_DEFINED tokens always; these become ``AddedToken``s
    (``special=True`` / ``special=False``) and ``parse_special=False`` maps to the ``tokenizers``
    switch ``encode_special_tokens=True``.  The end-of-generation set and the type overrides that
    llama.cpp derives from token texts (``<|im_end|>``, ``<end_of_turn>``, FIM tokens, ...) are
    reproduced in ``_llama_special_tokens``.

* An HF model directory (``tokenizer_from_hf_dir``): ``tokenizer.json`` as is, plus BOS/EOS/EOG and
  chat template from ``tokenizer_config.json``, ``generation_config.json``, ``chat_template.jinja``.

Decoding does not go through ``tokenizers``: every token has a byte string, its *piece*, computed like
llama.cpp's ``token_to_piece`` (byte-level decoding for gpt2 vocabularies; U+2581 -> space and
``<0xXX>`` -> one byte for SentencePiece; the raw text for control and user-defined tokens), and a
decoded text is the UTF-8 decoding of the concatenated pieces.  That makes streaming exact:
``IncrementalDetokenizer`` feeds the same bytes through an incremental UTF-8 decoder, so it never
emits half a character and its pieces concatenate to ``decode(ids)``.

Differences from ``llama_detokenize``, both deliberate: no ``clean_up_tokenization_spaces`` pass
(it is not incremental; llama.cpp's own streaming path ``common_token_to_piece`` does not do it
either), and for ``add_space_prefix`` vocabularies the leading space is removed from the first
non-skipped token (HF's rule; llama.cpp keeps it when the list starts with BOS), so that
``decode(encode(text), skip_special=True) == text``.
"""

from __future__ import annotations

import codecs
import json
import logging
import os
import re
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers

__all__ = [
    "IncrementalDetokenizer",
    "TextTokenizer",
    "TokenizerError",
    "tokenizer_from_gguf",
    "tokenizer_from_hf_dir",
]

log = logging.getLogger(__name__)


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

# GGUF ``tokenizer.ggml.token_type`` (llama.cpp ``enum llama_token_type``) -> attribute
_TOKEN_TYPE_ATTR = {
    0: ATTR_UNDEFINED,
    1: ATTR_NORMAL,
    2: ATTR_UNKNOWN,
    3: ATTR_CONTROL,
    4: ATTR_USER_DEFINED,
    5: ATTR_UNUSED,
    6: ATTR_BYTE,
}

_SPECIAL_ATTRS = ATTR_CONTROL | ATTR_UNKNOWN  # parsed only with parse_special; dropped by skip_special

# --- token texts llama.cpp uses to find special tokens (llama-vocab.cpp, llama-cpp-python 0.3.36) ---
_EOT_TEXTS = (
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
    "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
)  # fmt: skip
_EOM_TEXTS = ("<|eom_id|>",)
_FIM_PRE_TEXTS = (
    "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
    "<|code_prefix|>", "<|prefix|>",
)  # fmt: skip
_FIM_SUF_TEXTS = (
    "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
    "<|code_suffix|>", "<|suffix|>",
)  # fmt: skip
_FIM_MID_TEXTS = (
    "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
    "<|code_middle|>", "<|middle|>",
)  # fmt: skip
_FIM_PAD_TEXTS = ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]")
_FIM_REP_TEXTS = ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>")
_FIM_SEP_TEXTS = ("<|file_sep|>",)
_EOG_TEXTS = frozenset((
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
    "<｜end▁of▁sentence｜>", "[e~[",
))  # fmt: skip
_ALWAYS_RENDER_TEXTS = ("<|channel|>", "<|message|>", "<|start|>", "<|constrain|>")  # gpt-oss hack

# --- pre-tokenizer regexes (llm_tokenizer_bpe in llama-vocab.cpp) ---
_GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_PRE_GPT2 = {
    "gpt2", "gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
    "a.x-4.0", "mellum", "modern-bert", "mpt", "olmo", "jais", "trillion", "granite-docling",
    "exaone4", "jina-v1-en", "jina-v2-code", "roberta-bpe",
}  # fmt: skip
_PRE_DIGITS_GPT2 = {
    "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b", "mellum2",
}  # fmt: skip
_PRE_LLAMA3 = {
    "llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0", "lfm2",
    "jina-v5-nano",
}  # fmt: skip
_PRE_LLAMA3_REGEX_ONLY = {"dbrx", "smaug-bpe"}
_PRE_QWEN2 = {
    "qwen2", "deepseek-r1-qwen", "kormo", "f2llmv2", "megrez", "stablelm2", "hunyuan", "solar-open",
}  # fmt: skip


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


_BYTE_ENCODER = _bytes_to_unicode()
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}
_BYTE_TOKEN_RE = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _bytelevel_to_bytes(text: str) -> bytes:
    dec = _BYTE_DECODER
    try:
        return bytes([dec[c] for c in text])
    except KeyError:
        # not a byte-level string: keep the characters that are, the others as UTF-8
        return b"".join(bytes([dec[c]]) if c in dec else c.encode("utf-8") for c in text)


def _byte_token_value(text: str) -> int | None:
    m = _BYTE_TOKEN_RE.fullmatch(text)
    return int(m.group(1), 16) if m else None


class TextTokenizer:
    """Encode/decode text with llama.cpp's semantics (see the module docstring).

    Build one with :func:`tokenizer_from_gguf` or :func:`tokenizer_from_hf_dir`.  Thread-safe.
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
        hf_tokenizer: Tokenizer,
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
    ):
        n = len(tokens)
        if not (len(attrs) == len(pieces) == n):
            raise TokenizerError("tokens, attrs and pieces must have the same length")
        self._hf = hf_tokenizer
        self._tokens = list(tokens)
        self._attrs = list(attrs)
        self._pieces = list(pieces)
        self._special = frozenset(i for i, a in enumerate(self._attrs) if a & _SPECIAL_ATTRS)
        self._text_to_id: dict[str, int] | None = None
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
        if text:
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
        if self._text_to_id is None:
            self._text_to_id = {t: i for i, t in enumerate(self._tokens)}
        return self._text_to_id.get(token)

    def token_attr(self, id: int) -> int:
        """llama.cpp token attribute flags (``ATTR_*`` in this module)."""
        return self._attrs[self._check_id(id)]

    def is_special(self, id: int) -> bool:
        """Control/unknown token: dropped by ``decode(skip_special=True)``."""
        return self._check_id(id) in self._special

    def is_eog(self, id: int) -> bool:
        return id in self.eog_ids

    @property
    def hf_tokenizer(self) -> Tokenizer:
        """The underlying ``tokenizers.Tokenizer`` (encode with ``add_special_tokens=False``)."""
        return self._hf

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"TextTokenizer(kind={self.kind!r}, pre={self.pre!r}, vocab_size={self.vocab_size}, "
            f"bos_id={self.bos_id}, eos_id={self.eos_id}, eog_ids={sorted(self.eog_ids)}, "
            f"add_bos={self.add_bos})"
        )


class IncrementalDetokenizer:
    """Streaming text from token ids.

    ``push(id)`` returns the text completed by that token ("" while a UTF-8 character is still
    incomplete); ``flush()`` returns what is left (an incomplete character becomes U+FFFD).  The
    concatenation of everything returned equals ``tokenizer.decode(ids, skip_special=...)``.

    ``prompt_ids`` (the ids before the first pushed one) make the text continue the prompt: it is
    then ``decode(prompt_ids + ids)`` minus ``decode(prompt_ids)`` — no leading-space removal for
    ``add_space_prefix`` vocabularies, and a character whose first bytes end the prompt is
    completed by the generated bytes.
    """

    def __init__(self, tokenizer: TextTokenizer, *, skip_special: bool = True, prompt_ids: Sequence[int] = ()):
        self._tok = tokenizer
        self._skip = skip_special
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._first = True
        if len(prompt_ids):
            data, self._first = tokenizer._render(prompt_ids, skip_special, True)
            # an incomplete character at the end of the prompt is completed by the generation
            tail = _incomplete_tail(data)
            if tail:
                self._decoder.decode(tail)

    def push(self, id: int) -> str:
        data, self._first = self._tok._render((id,), self._skip, self._first)
        return self._decoder.decode(data) if data else ""

    def flush(self) -> str:
        out = self._decoder.decode(b"", final=True)
        self._decoder.reset()
        return out


def _incomplete_tail(data: bytes) -> bytes:
    """The trailing bytes of ``data`` that start a UTF-8 character not yet complete (else b"")."""
    for back in range(1, min(4, len(data)) + 1):
        b = data[-back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        return data[-back:] if need > back else b""
    return b""


# ====================================================================== GGUF
def _as_list(value: Any, key: str) -> list:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TokenizerError(f"GGUF metadata {key!r} must be an array, got {type(value).__name__}")


def _meta_id(md: Mapping[str, Any], key: str, default: int | None, n: int) -> int | None:
    """A special token id from metadata, llama.cpp style (out-of-range values fall back)."""
    if default is not None and default >= n:
        default = None
    if key not in md:
        return default
    try:
        v = int(md[key])
    except (TypeError, ValueError):
        raise TokenizerError(f"GGUF metadata {key!r} must be an integer, got {md[key]!r}") from None
    if not 0 <= v < n:
        log.warning("bad special token %s = %s (vocab size %d), using default %s", key, v, n, default)
        return default
    return v


def _meta_bool(md: Mapping[str, Any], key: str, default: bool) -> bool:
    v = md.get(key)
    return default if v is None else bool(v)


def _llama_special_tokens(
    tokens: Sequence[str], attrs: list[int], ids: dict[str, int | None]
) -> set[int]:
    """llama.cpp's text-based special-token detection (mutates ``attrs``/``ids``); returns EOG ids.

    llama.cpp walks an ``unordered_map`` and keeps the first match of each kind; where several
    texts of one kind are in a vocabulary (e.g. ``<repo_name>`` and ``<reponame>``) we keep the
    lowest id, which is deterministic.
    """
    present: dict[str, int] = {}
    wanted = set(_EOT_TEXTS + _EOM_TEXTS + _FIM_PRE_TEXTS + _FIM_SUF_TEXTS + _FIM_MID_TEXTS)
    wanted |= set(_FIM_PAD_TEXTS + _FIM_REP_TEXTS + _FIM_SEP_TEXTS + _ALWAYS_RENDER_TEXTS) | _EOG_TEXTS
    for i, t in enumerate(tokens):
        if t in wanted and t not in present:
            present[t] = i

    def force_control(i: int) -> None:
        if not attrs[i] & ATTR_CONTROL:
            log.debug("control-looking token %d %r was not control-type; overriding", i, tokens[i])
            attrs[i] |= ATTR_CONTROL

    for kind, texts in (
        ("eot", _EOT_TEXTS),
        ("eom", _EOM_TEXTS),
        ("fim_pre", _FIM_PRE_TEXTS),
        ("fim_suf", _FIM_SUF_TEXTS),
        ("fim_mid", _FIM_MID_TEXTS),
        ("fim_pad", _FIM_PAD_TEXTS),
        ("fim_rep", _FIM_REP_TEXTS),
        ("fim_sep", _FIM_SEP_TEXTS),
    ):
        if ids.get(kind) is None:
            found = [present[t] for t in texts if t in present]
            if found:
                ids[kind] = min(found)
                force_control(ids[kind])

    eog: set[int] = set()
    for kind in ("fim_pad", "fim_rep", "fim_sep"):
        if ids.get(kind) is not None:
            eog.add(ids[kind])
    for t in _EOG_TEXTS:
        if t in present:
            eog.add(present[t])
            force_control(present[t])
    for t in _ALWAYS_RENDER_TEXTS:
        if t in present:
            attrs[present[t]] = ATTR_USER_DEFINED
    for kind in ("eos", "eot", "eom"):
        if ids.get(kind) is not None:
            eog.add(ids[kind])

    eog_texts = {tokens[i]: i for i in eog}
    has_call = "<|call|>" in eog_texts or "<|calls|>" in eog_texts
    if "<|end|>" in eog_texts and has_call and ("<|return|>" in eog_texts or "<|flush|>" in eog_texts):
        end_id = eog_texts["<|end|>"]
        eog.discard(end_id)
        attrs[end_id] = ATTR_USER_DEFINED
    if "<|tool_response>" in eog_texts and "</s>" in eog_texts:
        s_id = eog_texts["</s>"]
        eog.discard(s_id)
        attrs[s_id] = ATTR_NORMAL
    return eog


def _spm_merges(tokens: Sequence[str], scores: Sequence[float]) -> list[tuple[str, str]]:
    """BPE merges equivalent to llama.cpp's SPM: every two-way split ``(a, b)`` of a vocabulary
    token ``a+b`` with both halves in the vocabulary, best score of ``a+b`` first."""
    vocab_get = {t: i for i, t in enumerate(tokens)}.get
    merged: list[int] = []
    left: list[int] = []
    right: list[int] = []
    m_app, l_app, r_app = merged.append, left.append, right.append
    for i, t in enumerate(tokens):
        n = len(t)
        if n < 2:
            continue
        for k in range(1, n):
            a = vocab_get(t[:k])
            if a is not None:
                b = vocab_get(t[k:])
                if b is not None:
                    m_app(i)
                    l_app(a)
                    r_app(b)
    if not merged:
        return []
    m = np.asarray(merged, dtype=np.int64)
    a_ids = np.asarray(left, dtype=np.int64)
    b_ids = np.asarray(right, dtype=np.int64)
    s = np.asarray(scores, dtype=np.float64)[m]
    # primary: higher score first; then the merged token's id, then the halves (deterministic)
    order = np.lexsort((b_ids, a_ids, m, -s))
    return [(tokens[a], tokens[b]) for a, b in zip(a_ids[order].tolist(), b_ids[order].tolist())]


def _bpe_pre_tokenizer(pre: str | None) -> tuple[Any, bool, bool, str]:
    """(pre_tokenizer, ignore_merges, add_bos default, effective name) for a gpt2-kind vocab."""

    def split(pattern: str) -> Any:
        return pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False)

    bytelevel_regex = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=True)
    bytelevel_plain = pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    if pre is None or pre == "" or pre == "default":
        if not pre:
            log.warning("GGUF has no tokenizer.ggml.pre; using llama.cpp's 'default' pre-tokenizer")
        chain = [
            split(r"[\p{P}\$\+<=>\^~\|]+"),
            split(_GPT2_PATTERN),
            split(r"\p{N}+"),
            split(r"[0-9][0-9][0-9]"),
            bytelevel_plain,
        ]
        return pre_tokenizers.Sequence(chain), False, False, "default"
    if pre in _PRE_DIGITS_GPT2:
        return pre_tokenizers.Sequence([split(r"\p{N}"), bytelevel_regex]), False, False, pre
    if pre in _PRE_GPT2:
        return bytelevel_regex, False, False, pre
    if pre in _PRE_LLAMA3:
        return pre_tokenizers.Sequence([split(_LLAMA3_PATTERN), bytelevel_plain]), True, True, pre
    if pre in _PRE_LLAMA3_REGEX_ONLY:
        return pre_tokenizers.Sequence([split(_LLAMA3_PATTERN), bytelevel_plain]), False, False, pre
    if pre in _PRE_QWEN2:
        return pre_tokenizers.Sequence([split(_QWEN2_PATTERN), bytelevel_plain]), False, False, pre
    log.warning("unsupported tokenizer.ggml.pre %r: using the GPT-2 pre-tokenizer (tokenization may differ from llama.cpp)", pre)
    return bytelevel_regex, False, False, "gpt2"


def tokenizer_from_gguf(metadata: Mapping[str, Any] | str | os.PathLike) -> TextTokenizer:
    """A :class:`TextTokenizer` from GGUF metadata (a ``read_gguf_metadata`` dict, or a path)."""
    if isinstance(metadata, (str, os.PathLike)):
        from ..formats.gguf_parse import read_gguf_metadata

        metadata = read_gguf_metadata(metadata)
    md = metadata
    model = md.get("tokenizer.ggml.model")
    if model is None:
        raise TokenizerError("GGUF metadata has no 'tokenizer.ggml.model': the file carries no tokenizer")
    if model not in ("gpt2", "llama"):
        raise TokenizerError(
            f"unsupported tokenizer.ggml.model {model!r}: only 'gpt2' (byte-level BPE) and 'llama' (SentencePiece) are supported"
        )
    if "tokenizer.ggml.tokens" not in md:
        raise TokenizerError("GGUF metadata has no 'tokenizer.ggml.tokens' (the vocabulary)")
    tokens = [str(t) for t in _as_list(md["tokenizer.ggml.tokens"], "tokenizer.ggml.tokens")]
    n = len(tokens)
    if n == 0:
        raise TokenizerError("GGUF 'tokenizer.ggml.tokens' is empty")
    for i, t in enumerate(tokens):
        if not t:
            log.warning("empty token at index %d", i)
            tokens[i] = f"[EMPTY_{i}]"
    if len(set(tokens)) != n:
        seen: dict[str, int] = {}
        for i, t in enumerate(tokens):
            if t in seen:
                raise TokenizerError(f"duplicate token in vocabulary: {t!r} has ids {seen[t]} and {i}")
            seen[t] = i

    if "tokenizer.ggml.token_type" in md:
        types = _as_list(md["tokenizer.ggml.token_type"], "tokenizer.ggml.token_type")
        if len(types) < n:
            raise TokenizerError(f"tokenizer.ggml.token_type has {len(types)} entries for {n} tokens")
        attrs = [_TOKEN_TYPE_ATTR.get(int(t), ATTR_UNDEFINED) for t in types[:n]]
    else:
        attrs = [ATTR_NORMAL] * n

    spm = model == "llama"
    # defaults (llama_vocab::impl::load)
    if spm:
        ids: dict[str, int | None] = {"bos": 1, "eos": 2, "unk": 0}
        add_bos, add_space_prefix = True, True
    else:
        ids = {"bos": 11, "eos": 11, "unk": None}
        add_bos, add_space_prefix = False, False
    key_of = {
        "bos": "bos_token_id", "eos": "eos_token_id", "eot": "eot_token_id", "eom": "eom_token_id",
        "unk": "unknown_token_id", "sep": "seperator_token_id", "pad": "padding_token_id",
        "mask": "mask_token_id", "fim_pre": "fim_pre_token_id", "fim_suf": "fim_suf_token_id",
        "fim_mid": "fim_mid_token_id", "fim_pad": "fim_pad_token_id", "fim_rep": "fim_rep_token_id",
        "fim_sep": "fim_sep_token_id",
    }  # fmt: skip
    for kind, key in key_of.items():
        ids[kind] = _meta_id(md, "tokenizer.ggml." + key, ids.get(kind), n)
    for kind, key in (("fim_pre", "prefix_token_id"), ("fim_suf", "suffix_token_id"), ("fim_mid", "middle_token_id")):
        if "tokenizer.ggml." + key in md:  # deprecated names
            ids[kind] = _meta_id(md, "tokenizer.ggml." + key, ids[kind], n)

    pre = md.get("tokenizer.ggml.pre")
    if spm:
        hf_pre, ignore_merges, pre_name = None, False, None
    else:
        hf_pre, ignore_merges, bos_default, pre_name = _bpe_pre_tokenizer(pre)
        add_bos = add_bos or bos_default
    add_space_prefix = _meta_bool(md, "tokenizer.ggml.add_space_prefix", add_space_prefix)
    add_bos = _meta_bool(md, "tokenizer.ggml.add_bos_token", add_bos)
    add_eos = _meta_bool(md, "tokenizer.ggml.add_eos_token", False)

    eog = _llama_special_tokens(tokens, attrs, ids)

    # ---- the tokenizers pipeline
    vocab = {t: i for i, t in enumerate(tokens)}
    if spm:
        if "tokenizer.ggml.scores" in md:
            scores = _as_list(md["tokenizer.ggml.scores"], "tokenizer.ggml.scores")
            if len(scores) < n:
                raise TokenizerError(f"tokenizer.ggml.scores has {len(scores)} entries for {n} tokens")
            scores = scores[:n]
        else:
            log.warning("SentencePiece GGUF without tokenizer.ggml.scores: all scores 0")
            scores = [0.0] * n
        merges = _spm_merges(tokens, scores)
        unk = tokens[ids["unk"]] if ids.get("unk") is not None else None
        bpe = models.BPE(vocab=vocab, merges=merges, byte_fallback=True, unk_token=unk, fuse_unk=True)
        hf = Tokenizer(bpe)
        norm = [normalizers.Replace(" ", "▁")]
        if add_space_prefix:
            norm.insert(0, normalizers.Prepend(" "))
        hf.normalizer = normalizers.Sequence(norm) if len(norm) > 1 else norm[0]
    else:
        if "tokenizer.ggml.merges" not in md:
            raise TokenizerError("gpt2-kind GGUF has no 'tokenizer.ggml.merges'")
        merges = []
        for m in _as_list(md["tokenizer.ggml.merges"], "tokenizer.ggml.merges"):
            pos = m.find(" ", 1)
            if pos < 0:
                continue  # llama.cpp stores ("", "") for it: never matches
            merges.append((m[:pos], m[pos + 1 :]))
        bpe = models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges)
        hf = Tokenizer(bpe)
        hf.pre_tokenizer = hf_pre

    added = []
    for i, a in enumerate(attrs):
        if a & _SPECIAL_ATTRS:
            added.append(AddedToken(tokens[i], special=True, normalized=False))
        elif a & ATTR_USER_DEFINED:
            added.append(AddedToken(tokens[i], special=False, normalized=False))
    if added:
        hf.add_tokens(added)

    pieces = _gguf_pieces(tokens, attrs, spm)
    templates = {
        k[len("tokenizer.chat_template.") :]: v
        for k, v in md.items()
        if k.startswith("tokenizer.chat_template.") and isinstance(v, str)
    }
    chat_template = md.get("tokenizer.chat_template")
    return TextTokenizer(
        hf_tokenizer=hf,
        tokens=tokens,
        attrs=attrs,
        pieces=pieces,
        kind=model,
        pre=pre_name,
        bos_id=ids["bos"],
        eos_id=ids["eos"],
        eog_ids=eog,
        add_bos=add_bos,
        add_eos=add_eos,
        strip_leading_space=spm and add_space_prefix,
        chat_template=chat_template if isinstance(chat_template, str) else None,
        named_chat_templates=templates,
        special_ids=ids,
    )


def _gguf_pieces(tokens: Sequence[str], attrs: Sequence[int], spm: bool) -> list[bytes]:
    """llama.cpp ``token_to_piece(special=True)`` for every token."""
    raw = ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED
    out: list[bytes] = []
    app = out.append
    for t, a in zip(tokens, attrs):
        if a & raw:
            app(t.encode("utf-8"))
        elif a & ATTR_NORMAL:
            app(t.replace("▁", " ").encode("utf-8") if spm else _bytelevel_to_bytes(t))
        elif a & ATTR_BYTE:
            v = _byte_token_value(t)
            app(bytes([v]) if v is not None else b"")
        else:  # unused / undefined tokens render as nothing
            app(b"")
    return out


# ====================================================================== HF directory
def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise TokenizerError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def _token_content(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _hf_decoder_kind(decoder: Any) -> tuple[str, bool]:
    """('bytelevel' | 'spm' | 'generic', strip the first leading space) from tokenizer.json's decoder."""
    kind, strip = "generic", False
    stack = [decoder]
    while stack:
        d = stack.pop()
        if not isinstance(d, Mapping):
            continue
        typ = d.get("type")
        if typ == "Sequence":
            stack.extend(reversed(d.get("decoders") or []))
        elif typ == "ByteLevel":
            kind = "bytelevel"
        elif typ == "Metaspace":
            kind = "spm"
            scheme = d.get("prepend_scheme")
            strip = strip or scheme in ("always", "first") or (scheme is None and bool(d.get("add_prefix_space", True)))
        elif typ == "Replace":
            pattern = d.get("pattern") or {}
            if pattern.get("String") == "▁" and d.get("content") == " ":
                kind = "spm"
        elif typ == "ByteFallback" and kind == "generic":
            kind = "spm"
        elif typ == "Strip":
            if d.get("content") == " " and int(d.get("start", 0)) >= 1:
                strip = True
    return kind, strip


def tokenizer_from_hf_dir(path: str | os.PathLike) -> TextTokenizer:
    """A :class:`TextTokenizer` from an HF model directory.

    Reads ``tokenizer.json`` (required), ``tokenizer_config.json`` (BOS/EOS tokens,
    ``add_bos_token``/``add_eos_token``, chat template), ``special_tokens_map.json``,
    ``generation_config.json`` (``eos_token_id``: int or list -> end-of-generation ids) and
    ``chat_template.jinja`` / ``chat_template.json`` (take precedence over tokenizer_config's).
    """
    root = Path(path)
    tj = root / "tokenizer.json"
    if not tj.is_file():
        raise TokenizerError(f"{root}: no tokenizer.json")
    try:
        raw_json = tj.read_text(encoding="utf-8")
        spec = json.loads(raw_json)
        hf = Tokenizer.from_str(raw_json)
    except Exception as exc:  # tokenizers raises plain Exception subclasses
        raise TokenizerError(f"cannot load {tj}: {exc}") from exc
    cfg = _read_json(root / "tokenizer_config.json")
    stm = _read_json(root / "special_tokens_map.json")
    gen = _read_json(root / "generation_config.json")

    vocab = hf.get_vocab(with_added_tokens=True)
    if not vocab:
        raise TokenizerError(f"{tj}: empty vocabulary")
    n = max(vocab.values()) + 1
    tokens = [""] * n
    attrs = [ATTR_UNDEFINED] * n
    for t, i in vocab.items():
        tokens[i] = t
        attrs[i] = ATTR_NORMAL
    model_spec = spec.get("model") or {}
    if model_spec.get("type") == "BPE" and model_spec.get("byte_fallback"):
        for i, t in enumerate(tokens):
            if attrs[i] == ATTR_NORMAL and _byte_token_value(t) is not None and len(t) == 6:
                attrs[i] = ATTR_BYTE
    for at in spec.get("added_tokens") or []:
        i = at.get("id")
        if isinstance(i, int) and 0 <= i < n:
            attrs[i] = ATTR_CONTROL if at.get("special") else ATTR_USER_DEFINED

    def tok_id(name: str) -> int | None:
        content = _token_content(cfg.get(name)) or _token_content(stm.get(name))
        return hf.token_to_id(content) if content is not None else None

    bos_id = tok_id("bos_token")
    eos_id = tok_id("eos_token")
    gen_eos = gen.get("eos_token_id")
    gen_eos_ids = [gen_eos] if isinstance(gen_eos, int) else [x for x in (gen_eos or []) if isinstance(x, int)]
    gen_eos_ids = [i for i in gen_eos_ids if 0 <= i < n]
    if eos_id is None and gen_eos_ids:
        eos_id = gen_eos_ids[0]
    if bos_id is None and isinstance(gen.get("bos_token_id"), int) and 0 <= gen["bos_token_id"] < n:
        bos_id = gen["bos_token_id"]

    eog = set(gen_eos_ids)
    if eos_id is not None:
        eog.add(eos_id)
    # llama.cpp's text heuristics, restricted to special tokens (what a GGUF conversion would get)
    for t in _EOG_TEXTS:
        i = vocab.get(t)
        if i is not None and attrs[i] & ATTR_CONTROL:
            eog.add(i)

    # BOS/EOS: tokenizer_config's add_*_token, else what the post-processor does
    with_sp = hf.encode("a", add_special_tokens=True).ids
    without = hf.encode("a", add_special_tokens=False).ids
    add_bos = cfg.get("add_bos_token")
    if not isinstance(add_bos, bool):
        add_bos = bos_id is not None and len(with_sp) > len(without) and with_sp[0] == bos_id
    add_eos = cfg.get("add_eos_token")
    if not isinstance(add_eos, bool):
        add_eos = eos_id is not None and len(with_sp) > len(without) and with_sp[-1] == eos_id
    if add_bos and bos_id is None:
        log.warning("%s: add_bos_token is true but there is no BOS token; ignoring", root)
        add_bos = False
    if add_eos and eos_id is None:
        add_eos = False

    kind, strip = _hf_decoder_kind(spec.get("decoder"))
    raw_attrs = ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED
    if kind == "generic":
        decoded = hf.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
        pieces = [d.encode("utf-8") for d in decoded]
        strip = False
    else:
        pieces = []
        for t, a in zip(tokens, attrs):
            if a & raw_attrs:
                pieces.append(t.encode("utf-8"))
            elif a & ATTR_BYTE:
                pieces.append(bytes([_byte_token_value(t)]))
            elif a & ATTR_NORMAL:
                pieces.append(_bytelevel_to_bytes(t) if kind == "bytelevel" else t.replace("▁", " ").encode("utf-8"))
            else:
                pieces.append(b"")

    chat_template: str | None = None
    named: dict[str, str] = {}
    ct = cfg.get("chat_template")
    if isinstance(ct, str):
        chat_template = ct
    elif isinstance(ct, list):
        for entry in ct:
            if isinstance(entry, Mapping) and isinstance(entry.get("template"), str):
                named[str(entry.get("name"))] = entry["template"]
        chat_template = named.get("default") or next(iter(named.values()), None)
    ctj = _read_json(root / "chat_template.json").get("chat_template")
    if isinstance(ctj, str):
        chat_template = ctj
    jinja = root / "chat_template.jinja"
    if jinja.is_file():
        chat_template = jinja.read_text(encoding="utf-8")

    return TextTokenizer(
        hf_tokenizer=hf,
        tokens=tokens,
        attrs=attrs,
        pieces=pieces,
        kind="hf",
        pre=None,
        bos_id=bos_id,
        eos_id=eos_id,
        eog_ids=eog,
        add_bos=add_bos,
        add_eos=add_eos,
        strip_leading_space=strip,
        chat_template=chat_template,
        named_chat_templates=named,
        special_ids={"bos": bos_id, "eos": eos_id},
    )
