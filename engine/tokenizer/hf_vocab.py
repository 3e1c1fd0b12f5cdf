"""``tokenizer_from_hf_dir``: a :class:`TextTokenizer` from an HF model directory.

``tokenizer.json`` is used as is; BOS/EOS/EOG and the chat template come from
``tokenizer_config.json``, ``special_tokens_map.json``, ``generation_config.json``,
``chat_template.json`` and ``chat_template.jinja``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from mistralrs.engine.tokenizer.gguf_vocab import EOG_TEXTS
from mistralrs.engine.tokenizer.text_tokenizer import (
    ATTR_BYTE,
    ATTR_CONTROL,
    ATTR_NORMAL,
    ATTR_UNDEFINED,
    ATTR_USER_DEFINED,
    TextTokenizer,
    TokenizerError,
    byte_token_value,
    token_pieces,
)

__all__ = ["tokenizer_from_hf_dir"]

log = logging.getLogger(__name__)


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: JSON, UTF-8, the int-digits limit
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
            if attrs[i] == ATTR_NORMAL and byte_token_value(t) is not None:
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
    for t in EOG_TEXTS:
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
    if kind == "generic":
        decoded = hf.decode_batch([[i] for i in range(n)], skip_special_tokens=False)
        pieces = [d.encode("utf-8") for d in decoded]
        strip = False
    else:
        pieces = token_pieces(tokens, attrs, spm=kind == "spm")

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
