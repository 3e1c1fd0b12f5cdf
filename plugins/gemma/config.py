"""Gemma and Gemma 3 hyper-parameters: Llama's, plus what each adds.

Facts the parsers rely on:
- HF checkpoints store RMSNorm weights as ``w - 1`` (the norm scales by ``1 + w``); llama.cpp's
  converter adds the 1 before writing GGUF, so GGUF norms scale by the stored weight itself.
- Gemma uses the tanh approximation of GELU whatever the config says (HF maps a legacy "gelu" to it).
- Gemma 3 GGUF files carry no local/global layer pattern: readers assume five sliding-window layers
  then one global layer, repeated; local layers use RoPE base 10000 unless ``rope.freq_base_swa``
  says otherwise, global ones ``rope.freq_base``.
- GGUF has no ``query_pre_attn_scalar``: llama.cpp scales queries by 1/sqrt(key_length), except for
  Gemma 3 27B (62 layers), which uses 1/sqrt(hidden / heads).
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

GEMMA3_SLIDING_PATTERN = 6  # every sixth layer is global
GEMMA3_LOCAL_ROPE_BASE = 10_000.0
GEMMA3_GLOBAL_ROPE_BASE = 1_000_000.0


@dataclass
class GemmaConfig(LlamaConfig):
    architecture: ClassVar[str] = "gemma"


@dataclass
class Gemma3Config(GemmaConfig):
    architecture: ClassVar[str] = "gemma3"

    sliding_window: int | None = None  # window of the local layers
    local_layers: list[bool] = field(default_factory=list)  # per layer: sliding-window (True) or global
    local_rope: RopeConfig | None = None  # RoPE of the local layers (``rope`` is the global layers')
    query_pre_attn_scalar: float = 256.0  # queries are scaled by its inverse square root
    final_logit_softcapping: float | None = None  # logits -> cap * tanh(logits / cap)

    def validate(self) -> "Gemma3Config":
        super().validate()
        if len(self.local_layers) != self.num_layers:
            raise ConfigError(f"{len(self.local_layers)} layer types for {self.num_layers} layers")
        window = self.sliding_window
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
            raise ConfigError(f"sliding_window must be a positive number of tokens, got {window!r}")
        if self.local_rope is not None:
            validate_rope(self.local_rope, self.head_dim, "local rope")
        for name in ("query_pre_attn_scalar", "final_logit_softcapping"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                          and 0 < value < float("inf")):
                raise ConfigError(f"{name} must be a positive finite number, got {value!r}")
        return self


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


def gemma3_config_from_hf(cfg: dict[str, Any]) -> Gemma3Config:
    def build(c: dict[str, Any]) -> Gemma3Config:
        fields = gemma_fields_from_hf(c)
        n = fields["num_layers"]
        types = c.get("layer_types")
        if types is not None and not isinstance(types, list):
            raise ConfigError(f"config.json 'layer_types' must be a list, got {types!r:.60}")
        local = [t == "sliding_attention" for t in types] if types else \
            sliding_pattern(n, int_field(c, "sliding_window_pattern", None, where="config.json") or GEMMA3_SLIDING_PATTERN)
        fields["rope"], local_rope = gemma3_hf_ropes(c, fields["head_dim"])
        if c.get("attn_logit_softcapping") is not None:
            raise ConfigError("attention logit softcapping (Gemma 2) is not supported")
        return Gemma3Config(
            **fields,
            sliding_window=int_field(c, "sliding_window", None, where="config.json"),
            local_layers=local,
            local_rope=local_rope,
            query_pre_attn_scalar=float_field(c, "query_pre_attn_scalar", None, where="config.json") or 256.0,
            final_logit_softcapping=float_field(c, "final_logit_softcapping", None, where="config.json"),
        )

    return parse_hf(build, cfg)


def gemma3_config_from_gguf(meta: dict[str, Any], arch: str) -> Gemma3Config:
    p = f"{arch}."
    fields = llama_fields_from_gguf(meta, arch)
    n, head_dim = fields["num_layers"], fields["head_dim"]
    fields["rope"] = gguf_rope(meta, arch, head_dim, default_theta=GEMMA3_GLOBAL_ROPE_BASE)
    local_rope = RopeConfig(dim=fields["rope"].dim,
                            theta=float_field(meta, p + "rope.freq_base_swa", GEMMA3_LOCAL_ROPE_BASE))
    pattern = meta.get(p + "attention.sliding_window_pattern")
    if isinstance(pattern, list):
        local = [bool(x) for x in pattern]
    else:
        local = sliding_pattern(n, int_field(meta, p + "attention.sliding_window_pattern", None, minimum=0)
                                or GEMMA3_SLIDING_PATTERN)
    window = int_field(meta, p + "attention.sliding_window", None, minimum=0)
    if not window:  # written only when the model has local layers
        local = [False] * n
    scalar = fields["hidden_size"] / fields["num_heads"] if n == 62 else head_dim
    return Gemma3Config(
        **fields,
        hidden_act="gelu_tanh",
        sliding_window=int(window) if window else None,
        local_layers=local,
        local_rope=local_rope,
        query_pre_attn_scalar=float(scalar),
        final_logit_softcapping=float_field(meta, p + "final_logit_softcapping", None) or None,
    ).validate()
