"""``tokenizer_from_gguf``: a :class:`TextTokenizer` from GGUF tokenizer metadata.

The vocabulary, token types, scores and merges are the ones llama.cpp itself reads.  Tokenization
runs in the HF ``tokenizers`` library, configured so that it makes the same decisions as llama.cpp's
``llama_tokenize`` (``src/llama-vocab.cpp``):

- ``tokenizer.ggml.model == "gpt2"``: byte-level BPE from ``tokens`` + ``merges``, with the
  pre-tokenizer regexes llama.cpp picks for ``tokenizer.ggml.pre``;
- ``tokenizer.ggml.model == "llama"``: llama.cpp's SentencePiece (SPM) algorithm, which greedily
  merges the adjacent pair whose concatenation is the vocabulary token with the highest score.
  Where the native kernels build, ``engine/kernels/spm_tokenizer.cpp`` runs that algorithm itself
  (8 MB for Gemma 3's 262k tokens). Otherwise
  a ``tokenizers`` BPE model whose merges are every split ``(a, b)`` of every token ``a+b`` with
  both halves in the vocabulary, ranked by the score of ``a+b`` (highest first), makes the same
  merges (69 MB for Gemma 3: 515k merges); ``byte_fallback`` gives the ``<0xXX>`` tokens for
  characters that are not in the vocab; spaces become U+2581 and a leading one is added only when
  ``tokenizer.ggml.add_space_prefix``. The tests hold the two to the same ids.
- special tokens: llama.cpp splits the text on CONTROL / UNKNOWN tokens only when
  ``parse_special`` is true, but on USER_DEFINED tokens always; these become ``AddedToken``s
  (``special=True`` / ``special=False``) and ``parse_special=False`` maps to the ``tokenizers``
  switch ``encode_special_tokens=True``.  The end-of-generation set and the type overrides that
  llama.cpp derives from token texts (``<|im_end|>``, ``<end_of_turn>``, FIM tokens, ...) are
  reproduced in ``_llama_special_tokens``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, models, normalizers, pre_tokenizers

from mistralrs.engine.tokenizer.text_tokenizer import (
    ATTR_BYTE,
    ATTR_CONTROL,
    ATTR_NORMAL,
    ATTR_UNDEFINED,
    ATTR_UNKNOWN,
    ATTR_UNUSED,
    ATTR_USER_DEFINED,
    SPECIAL_ATTRS,
    TextTokenizer,
    TokenizerError,
    token_pieces,
)

__all__ = ["EOG_TEXTS", "tokenizer_from_gguf"]

log = logging.getLogger(__name__)

# GGUF ``tokenizer.ggml.token_type`` (llama.cpp ``enum llama_token_type``) -> attribute
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

# --- token texts llama.cpp uses to find special tokens (llama-vocab.cpp, llama-cpp-python 0.3.36) ---
# special-token kind -> the texts that make a token that kind when the metadata names none
_KIND_TEXTS: dict[str, tuple[str, ...]] = {
    "eot": (
        "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<|end_of_text|>",
        "<EOT>", "_<EOT>", "[EOT]", "<｜end▁of▁sentence｜>", "<end_of_utterance>",
    ),
    "eom": ("<|eom_id|>",),
    "fim_pre": (
        "<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<｜fim▁begin｜>", "<PRE>", "▁<PRE>",
        "<|code_prefix|>", "<|prefix|>",
    ),
    "fim_suf": (
        "<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<｜fim▁hole｜>", "<SUF>", "▁<SUF>",
        "<|code_suffix|>", "<|suffix|>",
    ),
    "fim_mid": (
        "<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<｜fim▁end｜>", "<MID>", "▁<MID>",
        "<|code_middle|>", "<|middle|>",
    ),
    "fim_pad": ("<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"),
    "fim_rep": ("<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"),
    "fim_sep": ("<|file_sep|>",),
}  # fmt: skip
# end-of-generation texts; the HF builder applies them too (what a GGUF conversion would get)
EOG_TEXTS = frozenset((
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


def _as_list(value: Any, key: str) -> list:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TokenizerError(f"GGUF metadata {key!r} must be an array, got {type(value).__name__}")


def _per_token_list(md: Mapping[str, Any], key: str, n: int) -> list:
    """The first ``n`` entries of the per-token array ``key`` (one entry per vocabulary token)."""
    values = _as_list(md[key], key)
    if len(values) < n:
        raise TokenizerError(f"{key} has {len(values)} entries for {n} tokens")
    return values[:n]


def _meta_id(md: Mapping[str, Any], key: str, default: int | None, n: int) -> int | None:
    """A special token id from metadata, llama.cpp style (out-of-range values fall back)."""
    if default is not None and default >= n:
        default = None
    if key not in md:
        return default
    v = md[key]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int):
        raise TokenizerError(f"GGUF metadata {key!r} must be an integer, got {v!r:.60}")
    if not 0 <= v < n:
        log.warning("bad special token %s = %s (vocab size %d), using default %s", key, v, n, default)
        return default
    return v


def _token_attr(token_type: Any) -> int:
    if isinstance(token_type, bool) or not isinstance(token_type, int):
        raise TokenizerError(f"tokenizer.ggml.token_type holds {token_type!r:.60}, not an integer type")
    return _TOKEN_TYPE_ATTR.get(token_type, ATTR_UNDEFINED)


def _bpe(key: str, **kwargs: Any) -> Any:
    """``models.BPE``, whose construction raises a bare ``Exception`` for a merge of tokens that are
    not in the vocabulary: a TokenizerError naming the metadata key instead."""
    try:
        return models.BPE(**kwargs)
    except Exception as exc:  # noqa: BLE001 - tokenizers' own error type is not exported
        raise TokenizerError(f"{key}: {exc}") from None


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
    wanted = set().union(*_KIND_TEXTS.values(), _ALWAYS_RENDER_TEXTS, EOG_TEXTS)
    for i, t in enumerate(tokens):
        if t in wanted and t not in present:
            present[t] = i

    def force_control(i: int) -> None:
        if not attrs[i] & ATTR_CONTROL:
            log.debug("control-looking token %d %r was not control-type; overriding", i, tokens[i])
            attrs[i] |= ATTR_CONTROL

    for kind, texts in _KIND_TEXTS.items():
        if ids.get(kind) is None:
            found = [present[t] for t in texts if t in present]
            if found:
                ids[kind] = min(found)
                force_control(ids[kind])

    eog: set[int] = set()
    for kind in ("fim_pad", "fim_rep", "fim_sep"):
        if ids.get(kind) is not None:
            eog.add(ids[kind])
    for t in EOG_TEXTS:
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
        from mistralrs.engine.formats.gguf_parse import read_gguf_metadata

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
    tokens = _as_list(md["tokenizer.ggml.tokens"], "tokenizer.ggml.tokens")
    if not all(isinstance(t, str) for t in tokens):
        raise TokenizerError("GGUF 'tokenizer.ggml.tokens' holds a value that is not a string")
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
        types = _per_token_list(md, "tokenizer.ggml.token_type", n)
        attrs = [_token_attr(t) for t in types]
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
    if pre is not None and not isinstance(pre, str):
        raise TokenizerError(f"GGUF metadata 'tokenizer.ggml.pre' must be a name, got {pre!r:.60}")
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
    if spm:
        if "tokenizer.ggml.scores" in md:
            scores = _per_token_list(md, "tokenizer.ggml.scores", n)
            if not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores):
                raise TokenizerError("tokenizer.ggml.scores holds a value that is not a number")
        else:
            log.warning("SentencePiece GGUF without tokenizer.ggml.scores: all scores 0")
            scores = [0.0] * n
        native = _native_spm(tokens, scores, attrs, ids.get("unk"), add_space_prefix)
        if native is not None:
            return _text_tokenizer(md, None, tokens, attrs, model, pre_name, ids, eog, add_bos, add_eos,
                                   add_space_prefix, native)
        merges = _spm_merges(tokens, scores)
        unk = tokens[ids["unk"]] if ids.get("unk") is not None else None
        bpe = _bpe("tokenizer.ggml.tokens", vocab={t: i for i, t in enumerate(tokens)}, merges=merges, byte_fallback=True, unk_token=unk, fuse_unk=True)
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
            if not isinstance(m, str):
                raise TokenizerError(f"tokenizer.ggml.merges holds {m!r:.60}, not a string")
            pos = m.find(" ", 1)
            if pos < 0:
                continue  # llama.cpp stores ("", "") for it: never matches
            merges.append((m[:pos], m[pos + 1 :]))
        bpe = _bpe("tokenizer.ggml.merges", vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=ignore_merges)
        hf = Tokenizer(bpe)
        hf.pre_tokenizer = hf_pre

    added = [AddedToken(tokens[i], special=kind == _SPLIT_WITH_PARSE_SPECIAL, normalized=False)
             for i, kind in enumerate(map(_split_kind, attrs)) if kind]
    if added:
        hf.add_tokens(added)

    return _text_tokenizer(md, hf, tokens, attrs, model, pre_name, ids, eog, add_bos, add_eos,
                           spm and add_space_prefix, None)


_SPLIT_ALWAYS, _SPLIT_WITH_PARSE_SPECIAL = 1, 2  # spm_tokenizer.cpp's kinds


def _split_kind(attr: int) -> int:
    """How llama.cpp splits a token's text out of the input before tokenizing the rest: user-defined
    tokens always, control/unknown ones only with parse_special, others never (0)."""
    if attr & SPECIAL_ATTRS:
        return _SPLIT_WITH_PARSE_SPECIAL
    return _SPLIT_ALWAYS if attr & ATTR_USER_DEFINED else 0


def _native_spm(tokens: Sequence[str], scores: Sequence[float], attrs: Sequence[int], unk: int | None,
                add_space_prefix: bool) -> Any:
    """The native kernels' SentencePiece tokenizer for this vocabulary (8 MB for Gemma 3's, against 69 MB
    for the merges-based ``tokenizers`` emulation), or None where the kernels are unavailable."""
    from mistralrs.engine.kernels import native_ops

    if native_ops() is None:
        return None
    import torch

    texts = [t.encode("utf-8", "surrogatepass") for t in tokens]
    ends = np.cumsum(np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts)))
    kinds = np.fromiter(map(_split_kind, attrs), dtype=np.int8, count=len(attrs))
    return torch.classes.mistralrs_kernels.SpmTokenizer(
        torch.frombuffer(bytearray(b"".join(texts)), dtype=torch.uint8),
        torch.from_numpy(ends), torch.tensor(scores, dtype=torch.float32), torch.from_numpy(kinds),
        -1 if unk is None else int(unk), bool(add_space_prefix))


def _text_tokenizer(md: Mapping[str, Any], hf: Any, tokens: list[str], attrs: list[int], model: str,
                    pre_name: str | None, ids: dict[str, int | None], eog: set[int], add_bos: bool,
                    add_eos: bool, strip_leading_space: bool, native_spm: Any) -> TextTokenizer:
    pieces = token_pieces(tokens, attrs, model == "llama")
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
        strip_leading_space=strip_leading_space,
        chat_template=chat_template if isinstance(chat_template, str) else None,
        named_chat_templates=templates,
        special_ids=ids,
        native_spm=native_spm,
    )

