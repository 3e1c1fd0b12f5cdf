"""Gemma, Gemma 2 and Gemma 3 hyper-parameters: Llama's, plus what each adds.

Facts the parsers rely on:
- HF checkpoints store RMSNorm weights as ``w - 1`` (the norm scales by ``1 + w``); llama.cpp's
  converter adds the 1 before writing GGUF, so GGUF norms scale by the stored weight itself.
- Gemma uses the tanh approximation of GELU whatever the config says (HF maps a legacy "gelu" to it).
- Gemma 3 GGUF files carry no local/global layer pattern: readers assume five sliding-window layers
  then one global layer, repeated; local layers use RoPE base 10000 unless ``rope.freq_base_swa``
  says otherwise, global ones ``rope.freq_base``.
- GGUF has no ``query_pre_attn_scalar``: llama.cpp scales queries by 1/sqrt(key_length), except for
  the 27B models (Gemma 2: 46 layers, Gemma 3: 62), which use 1/sqrt(hidden / heads).
- Gemma 2 alternates local and global layers starting with a local one (pattern 2), one RoPE base
  for both; llama.cpp soft-caps its attention logits at ``attn_logit_softcapping`` (default 50) and
  its final logits at ``final_logit_softcapping`` (default 30) whether or not the file says so, and
  takes a window of 4096 when the file gives none. HF configs may set either cap to null (off).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from mistralrs.engine.layers.rope import RopeConfig
from mistralrs.engine.llama_base.config import (
    ConfigError,
    LlamaConfig,
    float_field,
    gguf_rope,
    hf_rope,
    int_field,
    llama_fields_from_gguf,
    llama_fields_from_hf,
    mapping_field,
    parse_hf,
    validate_rope,
)

GEMMA2_SLIDING_PATTERN = 2  # local and global layers alternate
GEMMA2_ATTN_SOFTCAP = 50.0  # HF's and llama.cpp's defaults
GEMMA2_FINAL_SOFTCAP = 30.0
GEMMA2_GGUF_WINDOW = 4096  # llama.cpp's, when the file gives none
GEMMA3_SLIDING_PATTERN = 6  # every sixth layer is global
GEMMA3_LOCAL_ROPE_BASE = 10_000.0
GEMMA3_GLOBAL_ROPE_BASE = 1_000_000.0


@dataclass
class GemmaConfig(LlamaConfig):
    architecture: ClassVar[str] = "gemma"


@dataclass
class Gemma2Config(GemmaConfig):
    architecture: ClassVar[str] = "gemma2"

    sliding_window: int | None = None  # window of the local layers
    local_layers: list[bool] = field(default_factory=list)  # per layer: sliding-window (True) or global
    local_rope: RopeConfig | None = None  # RoPE of the local layers (``rope`` is the global layers')
    query_pre_attn_scalar: float = 256.0  # queries are scaled by its inverse square root
    attn_logit_softcapping: float | None = None  # attention scores -> cap * tanh(scores / cap)
    final_logit_softcapping: float | None = None  # logits -> cap * tanh(logits / cap)

    def validate(self) -> "Gemma2Config":
        super().validate()
        if len(self.local_layers) != self.num_layers:
            raise ConfigError(f"{len(self.local_layers)} layer types for {self.num_layers} layers")
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ConfigError(f"sliding_window must be a positive number of tokens, got {window!r}")
        if self.local_rope is not None:
            validate_rope(self.local_rope, self.head_dim, "local rope")
        for name in ("query_pre_attn_scalar", "attn_logit_softcapping", "final_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and 0 < value < float("inf")):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        return self


@dataclass
class Gemma3Config(Gemma2Config):
    architecture: ClassVar[str] = "gemma3"


def gemma_activation(cfg: dict[str, Any]) -> str:
    name = cfg.get("hidden_activation") or cfg.get("hidden_act") or "gelu_pytorch_tanh"
    return "gelu_pytorch_tanh" if name == "gelu" else name  # HF maps a legacy "gelu" to the tanh form


def sliding_pattern(num_layers: int, pattern: int = GEMMA3_SLIDING_PATTERN) -> list[bool]:
    """Layer i is local unless (i + 1) is a multiple of ``pattern``."""
    return [(i + 1) % pattern != 0 for i in range(num_layers)]


# --- Gemma ------------------------------------------------------------------------------------
def gemma_fields_from_hf(cfg: dict[str, Any]) -> dict[str, Any]:
    fields = llama_fields_from_hf({**cfg, "hidden_act": gemma_activation(cfg)})
    fields.update(tie_word_embeddings=bool(cfg.get("tie_word_embeddings", True)), norm_offset=1.0)
    return fields


def gemma_config_from_hf(cfg: dict[str, Any]) -> GemmaConfig:
    return parse_hf(lambda c: GemmaConfig(**gemma_fields_from_hf(c)), cfg)


def gemma_config_from_gguf(meta: dict[str, Any], arch: str) -> GemmaConfig:
    return GemmaConfig(**llama_fields_from_gguf(meta, arch), hidden_act="gelu_tanh").validate()


# --- Gemma 3 ----------------------------------------------------------------------------------
def gemma3_hf_ropes(cfg: dict[str, Any], head_dim: int) -> tuple[RopeConfig, RopeConfig]:
    """(global, local) RoPE from either config style."""
    params = mapping_field(cfg, "rope_parameters")
    if "full_attention" in params or "sliding_attention" in params:  # transformers 5: per layer type
        where = "config.json rope_parameters"
        full, local = mapping_field(params, "full_attention", where=where), mapping_field(params, "sliding_attention", where=where)
    else:  # transformers 4: rope_theta (+ rope_scaling) global, rope_local_base_freq local
        full, local = {**mapping_field(cfg, "rope_scaling"), **params}, {}
    full.setdefault("rope_theta", cfg.get("rope_theta", GEMMA3_GLOBAL_ROPE_BASE))
    local.setdefault("rope_theta", cfg.get("rope_local_base_freq", GEMMA3_LOCAL_ROPE_BASE))
    base = {"max_position_embeddings": cfg.get("max_position_embeddings", 8192)}
    return hf_rope(base, head_dim, full), hf_rope(base, head_dim, local)


def hf_local_layers(c: dict[str, Any], num_layers: int, pattern: int) -> list[bool]:
    types = c.get("layer_types")
    if types is not None and not isinstance(types, list):
        raise ConfigError(f"config.json 'layer_types' must be a list, got {types!r:.60}")
    if types:
        return [t == "sliding_attention" for t in types]
    return sliding_pattern(num_layers, int_field(c, "sliding_window_pattern", None, where="config.json") or pattern)


def optional_cap(c: dict[str, Any], key: str, default: float) -> float | None:
    """A soft-capping value: absent takes the default, null turns it off."""
    if key in c and c[key] is None:
        return None
    return float_field(c, key, default, where="config.json")


def gemma2_config_from_hf(cfg: dict[str, Any]) -> Gemma2Config:
    def build(c: dict[str, Any]) -> Gemma2Config:
        fields = gemma_fields_from_hf(c)
        return Gemma2Config(
            **fields,
            sliding_window=int_field(c, "sliding_window", None, where="config.json"),
            local_layers=hf_local_layers(c, fields["num_layers"], GEMMA2_SLIDING_PATTERN),
            query_pre_attn_scalar=float_field(c, "query_pre_attn_scalar", None, where="config.json") or 256.0,
            attn_logit_softcapping=optional_cap(c, "attn_logit_softcapping", GEMMA2_ATTN_SOFTCAP),
            final_logit_softcapping=optional_cap(c, "final_logit_softcapping", GEMMA2_FINAL_SOFTCAP),
        )

    return parse_hf(build, cfg)


def gemma3_config_from_hf(cfg: dict[str, Any]) -> Gemma3Config:
    def build(c: dict[str, Any]) -> Gemma3Config:
        fields = gemma_fields_from_hf(c)
        fields["rope"], local_rope = gemma3_hf_ropes(c, fields["head_dim"])
        return Gemma3Config(
            **fields,
            sliding_window=int_field(c, "sliding_window", None, where="config.json"),
            local_layers=hf_local_layers(c, fields["num_layers"], GEMMA3_SLIDING_PATTERN),
            local_rope=local_rope,
            query_pre_attn_scalar=float_field(c, "query_pre_attn_scalar", None, where="config.json") or 256.0,
            attn_logit_softcapping=float_field(c, "attn_logit_softcapping", None, where="config.json"),
            final_logit_softcapping=float_field(c, "final_logit_softcapping", None, where="config.json"),
        )

    return parse_hf(build, cfg)


def gemma_local_fields_from_gguf(meta: dict[str, Any], arch: str, *, pattern: int, global_theta: float,
                                 local_theta: float | None, large_layers: int, default_window: int | None) -> dict[str, Any]:
    """Gemma 2 / 3 fields from GGUF: the layer pattern, both RoPEs and the query scale.
    ``local_theta`` None: local layers take the global base; ``large_layers``: the layer count of the
    27B model, whose queries llama.cpp scales by 1/sqrt(hidden / heads)."""
    p = f"{arch}."
    fields = llama_fields_from_gguf(meta, arch)
    n, head_dim = fields["num_layers"], fields["head_dim"]
    fields["rope"] = gguf_rope(meta, arch, head_dim, default_theta=global_theta)
    local_rope = RopeConfig(dim=fields["rope"].dim, theta=float_field(
        meta, p + "rope.freq_base_swa", fields["rope"].theta if local_theta is None else local_theta))
    given = meta.get(p + "attention.sliding_window_pattern")
    if isinstance(given, list):
        local = [bool(x) for x in given]
    else:
        local = sliding_pattern(n, int_field(meta, p + "attention.sliding_window_pattern", None, minimum=0) or pattern)
    window = int_field(meta, p + "attention.sliding_window", None, minimum=0) or default_window
    if not window:  # Gemma 3: written only when the model has local layers
        local = [False] * n
    scalar = fields["hidden_size"] / fields["num_heads"] if n == large_layers else head_dim
    return dict(fields, hidden_act="gelu_tanh", sliding_window=int(window) if window else None, local_layers=local,
                local_rope=local_rope, query_pre_attn_scalar=float(scalar))


def gemma2_config_from_gguf(meta: dict[str, Any], arch: str) -> Gemma2Config:
    p = f"{arch}."
    fields = gemma_local_fields_from_gguf(meta, arch, pattern=GEMMA2_SLIDING_PATTERN, global_theta=10_000.0,
                                          local_theta=None, large_layers=46, default_window=GEMMA2_GGUF_WINDOW)
    return Gemma2Config(
        **fields,
        attn_logit_softcapping=float_field(meta, p + "attn_logit_softcapping", GEMMA2_ATTN_SOFTCAP),
        final_logit_softcapping=float_field(meta, p + "final_logit_softcapping", GEMMA2_FINAL_SOFTCAP),
    ).validate()


def gemma3_config_from_gguf(meta: dict[str, Any], arch: str) -> Gemma3Config:
    p = f"{arch}."
    fields = gemma_local_fields_from_gguf(meta, arch, pattern=GEMMA3_SLIDING_PATTERN,
                                          global_theta=GEMMA3_GLOBAL_ROPE_BASE, local_theta=GEMMA3_LOCAL_ROPE_BASE,
                                          large_layers=62, default_window=None)
    return Gemma3Config(
        **fields,
        final_logit_softcapping=float_field(meta, p + "final_logit_softcapping", None) or None,
    ).validate()
