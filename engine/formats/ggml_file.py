"""Legacy GGML llama checkpoints (ggml, ggmf v1, ggjt v1-v3), memory-mapped.

The checkpoint presents itself as the GGUF file llama.cpp's ``convert_llama_ggml_to_gguf.py`` would
make of it: GGUF tensor names, llama GGUF metadata keys and the same vocabulary fix-ups, so the llama
family and the GGUF tokenizer builder read it unchanged. Tensors are zero-copy views of the map, in
the GGUF convention (torch-order shape, uint8 bytes for block types); Q/K rows are stored in the
same interleaved RoPE order as in GGUF llama files.

What the legacy header lacks comes from options (``conf.schema.ModelConfig``), with the converter's
defaults: ``rope_freq_base``, ``rms_norm_eps`` and the context length (``max_seq_len``, else 2048).
The KV-head count comes from the K projection's shape, as n_ff comes from the FFN's; ``gqa`` (KV
heads = heads / gqa, the converter's and mistral.rs's way to give it) is checked against it, so a
wrong value is a clear error rather than a shape mismatch deep in the loader.
"""

from __future__ import annotations

import mmap
import re
from pathlib import Path
from typing import Any

import numpy as np

from mistralrs.engine.formats.checkpoint import ArchitectureHint, ModelFileError
from mistralrs.engine.formats.ggml_parse import MAGICS, GGMLFormatError, GGMLHeader, parse_ggml
from mistralrs.engine.formats.gguf_file import GGUFLayoutCheckpoint

DEFAULT_CONTEXT = 2048  # llama 1's; the converter's default too
DEFAULT_RMS_NORM_EPS = 5e-6  # the converter's default (llama 1 used 1e-6, llama 2 1e-5)
DEFAULT_ROPE_FREQ_BASE = 10000.0
_TOP_NAMES = {"tok_embeddings": "token_embd", "norm": "output_norm", "output": "output"}
_BLOCK_NAMES = {
    "attention.wq": "attn_q", "attention.wk": "attn_k", "attention.wv": "attn_v", "attention.wo": "attn_output",
    "attention_norm": "attn_norm", "feed_forward.w1": "ffn_gate", "feed_forward.w2": "ffn_down",
    "feed_forward.w3": "ffn_up", "ffn_norm": "ffn_norm",
}  # fmt: skip
_LEGACY_BLOCK = re.compile(r"^layers\.(\d+)\.(.+)\.weight$")


def detect(path: Path) -> bool:
    if not path.is_file():
        return False
    with path.open("rb") as f:
        return f.read(4) in MAGICS


def gguf_name(legacy: str) -> str | None:
    """The GGUF name of a legacy llama tensor name (None if it is not one)."""
    if m := _LEGACY_BLOCK.match(legacy):
        part = _BLOCK_NAMES.get(m.group(2))
        return f"blk.{int(m.group(1))}.{part}.weight" if part else None
    stem, _, kind = legacy.rpartition(".")
    return f"{_TOP_NAMES[stem]}.weight" if kind == "weight" and stem in _TOP_NAMES else None


def _is_expected(name: str | None, n_layer: int) -> bool:
    """Whether ``name`` (a GGUF name) is a tensor of an ``n_layer``-layer llama model."""
    if name is None:
        return False
    if m := re.match(r"^blk\.(\d+)\.", name):
        return int(m.group(1)) < n_layer
    return True  # gguf_name gives only llama names


def _missing(present: dict[str, Any], n_layer: int, most: int = 4) -> list[str]:
    """Up to ``most`` tensors of an ``n_layer``-layer llama model that ``present`` lacks. Never builds
    the whole list: a header's n_layer may be 2**32 - 1, and the first missing block comes within
    as many blocks as the file holds."""
    missing = [f"{v}.weight" for v in _TOP_NAMES.values() if f"{v}.weight" not in present]
    for i in range(n_layer):
        if len(missing) >= most:
            break
        missing += [name for part in _BLOCK_NAMES.values() if (name := f"blk.{i}.{part}.weight") not in present]
    return missing[:most]


def llama_vocab(items: list[tuple[bytes, float]]) -> tuple[list[str], list[float], list[int]]:
    """Tokens, scores and GGUF token types as the converter derives them: the legacy vocabulary
    stored SentencePiece pieces with plain spaces, byte tokens as the bare byte, and no types."""
    tokens, scores, types = [], [], []
    for i, (text, score) in enumerate(items):
        kind = 1  # normal
        if i <= 2:
            text, kind = ((b"<unk>", 2), (b"<s>", 3), (b"</s>", 3))[i]
        elif not text:
            kind = 3  # control
        elif i <= 258 and len(text) == 1:  # SentencePiece's <0x00>..<0xFF> follow the three specials
            text, kind = f"<0x{text[0]:02X}>".encode(), 6
        else:
            text = text.replace(b" ", "\u2581".encode())
        tokens.append(text.decode("utf-8", errors="replace"))
        scores.append(float(score))
        types.append(kind)
    return tokens, scores, types


class GGMLCheckpoint(GGUFLayoutCheckpoint):
    format = "ggml"

    def __init__(self, path: Path, known_types: set[str] | None = None):
        self.path = Path(path)
        with self.path.open("rb") as f:
            if f.read(4) not in MAGICS:
                raise ModelFileError(self.path, "not a GGML file (bad magic)")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self.header: GGMLHeader = parse_ggml(memoryview(self._map))
        except GGMLFormatError as exc:
            raise ModelFileError(self.path, str(exc)) from exc
        hp = self.header.hparams
        if hp.n_head == 0 or hp.n_layer == 0 or hp.n_embd == 0 or hp.n_embd % hp.n_head:
            raise ModelFileError(self.path, f"{self.header.label}: bad hyper-parameters {hp}")
        self._entries = {}
        for t in self.header.tensors:
            name = gguf_name(t.name)
            if not _is_expected(name, hp.n_layer):
                raise ModelFileError(self.path, f"{self.header.label}: tensor {t.name!r} is not a tensor of a "
                                                f"{hp.n_layer}-layer llama model")
            if known_types is not None and t.qtype not in known_types:
                raise ModelFileError(self.path, f"tensor {t.name!r} has type {t.qtype}, which no registered quant type supports")
            if name in self._entries:  # e.g. layers.0.x and layers.00.x: which one counts would be a guess
                raise ModelFileError(self.path, f"{self.header.label}: tensors {self._entries[name].name!r} and "
                                                f"{t.name!r} are both {name}")
            self._entries[name] = t
        missing = _missing(self._entries, hp.n_layer)
        if missing:  # the header has no tensor count: a file cut at a tensor boundary shows up here
            layers = {name.split(".")[1] for name in self._entries if name.startswith("blk.")}
            if len(layers) < hp.n_layer and missing[0].startswith(f"blk.{len(layers)}."):  # whole layers missing
                raise ModelFileError(self.path, f"{self.header.label}: the header's n_layer is {hp.n_layer}, but the "
                                                f"file holds the tensors of {len(layers)} layers (truncated file?)")
            more = len(self._entries) < len(_TOP_NAMES) + len(_BLOCK_NAMES) * hp.n_layer - len(missing)
            raise ModelFileError(self.path, f"{self.header.label}: no tensor(s) {', '.join(missing)}"
                                            f"{' ...' if more else ''} (truncated file?)")
        self._bytes = np.frombuffer(self._map, dtype=np.uint8)
        self.configure(None)

    def configure(self, options: Any) -> None:
        """Fill in what the legacy header lacks from ``options`` (a ModelConfig, or None for defaults)."""
        hp = self.header.hparams
        kv_heads = self._kv_heads()
        gqa = getattr(options, "gqa", None)
        if gqa is not None:
            if gqa < 1 or hp.n_head % gqa:
                raise ModelFileError(self.path, f"model.gqa={gqa} does not divide the {hp.n_head} attention heads "
                                                f"(KV heads = heads / gqa)")
            if hp.n_head // gqa != kv_heads:
                raise ModelFileError(self.path, f"model.gqa={gqa} means {hp.n_head // gqa} KV heads, but "
                                                f"layers.0.attention.wk.weight holds {kv_heads} (model.gqa={hp.n_head // kv_heads})")
        eps = getattr(options, "rms_norm_eps", None)
        base = getattr(options, "rope_freq_base", None)
        context = getattr(options, "max_seq_len", None) or DEFAULT_CONTEXT
        tokens, scores, types = llama_vocab(self.header.vocab)
        self.metadata: dict[str, Any] = {
            "general.architecture": "llama",
            "general.file_type": hp.ftype,
            "general.description": f"legacy {self.header.label}",
            "llama.vocab_size": hp.n_vocab,
            "llama.context_length": int(context),
            "llama.embedding_length": hp.n_embd,
            "llama.block_count": hp.n_layer,
            # the header's n_mult only rounds n_ff; the tensors give it exactly
            "llama.feed_forward_length": self._entries["blk.0.ffn_gate.weight"].shape[0],
            "llama.rope.dimension_count": hp.n_embd // hp.n_head,
            "llama.attention.head_count": hp.n_head,
            "llama.attention.head_count_kv": kv_heads,
            "llama.attention.layer_norm_rms_epsilon": float(DEFAULT_RMS_NORM_EPS if eps is None else eps),
            "llama.rope.freq_base": float(DEFAULT_ROPE_FREQ_BASE if base is None else base),
            "tokenizer.ggml.model": "llama",
            "tokenizer.ggml.pre": "default",
            "tokenizer.ggml.tokens": tokens,
            "tokenizer.ggml.scores": scores,
            "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.unknown_token_id": 0,
            "tokenizer.ggml.bos_token_id": 1,
            "tokenizer.ggml.eos_token_id": 2,
        }

    def _kv_heads(self) -> int:
        """The header has no KV-head count, but the K projection's rows are KV heads x head size."""
        hp = self.header.hparams
        head_dim, rows = hp.n_embd // hp.n_head, self._entries["blk.0.attn_k.weight"].shape[0]
        if rows % head_dim or hp.n_head % max(rows // head_dim, 1) or rows == 0:
            raise ModelFileError(self.path, f"layers.0.attention.wk.weight has {rows} rows: not a whole number of "
                                            f"{head_dim}-wide heads dividing the {hp.n_head} attention heads")
        return rows // head_dim

    def architecture(self) -> ArchitectureHint:
        return ArchitectureHint(gguf="llama")


def open_ggml(path: Path, known_types: set[str] | None = None) -> GGMLCheckpoint:
    return GGMLCheckpoint(path, known_types)
