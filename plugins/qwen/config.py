"""Qwen2 and Qwen3 hyper-parameters: Llama's, with what each adds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mistralrs.engine.llama_base.config import (
    ConfigError,
    LlamaConfig,
    int_field,
    llama_fields_from_gguf,
    llama_fields_from_hf,
    parse_hf,
)


@dataclass
class Qwen2Config(LlamaConfig):
    """Biases on q/k/v (never on the output projection); no sliding window is run."""

    architecture: ClassVar[str] = "qwen2"


@dataclass
class Qwen3Config(LlamaConfig):
    """Per-head RMSNorm on queries and keys before RoPE; ``attention_bias`` as config.json says."""

    architecture: ClassVar[str] = "qwen3"


def _refuse_sliding_window(cfg: dict[str, Any]) -> None:
    # Qwen2's config.json carries sliding_window but only honours it with use_sliding_window, which
    # released models leave off; a model that turns it on would need per-layer windows we do not run
    if cfg.get("use_sliding_window"):
        raise ConfigError("config.json use_sliding_window=true is not supported for Qwen models "
                          "(their released checkpoints run full attention)")


def qwen2_config_from_gguf(meta: dict[str, Any], arch: str) -> Qwen2Config:
    return Qwen2Config(**llama_fields_from_gguf(meta, arch), attention_bias=True).validate()


def qwen2_config_from_hf(cfg: dict[str, Any]) -> Qwen2Config:
    def build(c: dict[str, Any]) -> Qwen2Config:
        _refuse_sliding_window(c)
        return Qwen2Config(**{**llama_fields_from_hf(c), "attention_bias": True})

    return parse_hf(build, cfg)


def qwen3_config_from_gguf(meta: dict[str, Any], arch: str) -> Qwen3Config:
    return Qwen3Config(**llama_fields_from_gguf(meta, arch)).validate()


def qwen3_config_from_hf(cfg: dict[str, Any]) -> Qwen3Config:
    def build(c: dict[str, Any]) -> Qwen3Config:
        _refuse_sliding_window(c)
        return Qwen3Config(**llama_fields_from_hf(c))

    return parse_hf(build, cfg)


@dataclass
class Qwen3MoeConfig(Qwen3Config):
    """Qwen3 whose MLPs are sparse mixtures: ``num_experts`` SwiGLU experts of ``moe_intermediate_size``,
    ``num_experts_per_tok`` per token, weights renormalized over the chosen (``norm_topk_prob``) or
    not; layers listed in ``mlp_only_layers``, or off the ``decoder_sparse_step``, keep a dense MLP of
    ``intermediate_size``. No shared expert."""

    architecture: ClassVar[str] = "qwen3moe"

    num_experts: int = 128
    num_experts_per_tok: int = 8
    moe_intermediate_size: int = 768
    norm_topk_prob: bool = True
    decoder_sparse_step: int = 1
    mlp_only_layers: tuple[int, ...] = ()

    def validate(self) -> "Qwen3MoeConfig":
        super().validate()
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(f"num_experts_per_tok {self.num_experts_per_tok} must be between 1 and "
                              f"num_experts {self.num_experts}")
        if any(not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.num_layers for i in self.mlp_only_layers):
            raise ConfigError(f"mlp_only_layers must list layer indices below {self.num_layers}, "
                              f"got {list(self.mlp_only_layers)[:8]}")
        return self

    def is_sparse(self, layer: int) -> bool:
        return layer not in self.mlp_only_layers and (layer + 1) % self.decoder_sparse_step == 0


def qwen3moe_config_from_gguf(meta: dict[str, Any], arch: str) -> Qwen3MoeConfig:
    # llama.cpp's converter writes no norm_topk_prob, and its runtime renormalizes the chosen
    # experts' weights for qwen3moe (what every released Qwen3-MoE config asks for)
    return Qwen3MoeConfig(
        **llama_fields_from_gguf(meta, arch),
        num_experts=int_field(meta, f"{arch}.expert_count"),
        num_experts_per_tok=int_field(meta, f"{arch}.expert_used_count"),
        moe_intermediate_size=int_field(meta, f"{arch}.expert_feed_forward_length"),
        norm_topk_prob=True,
    ).validate()


def qwen3moe_config_from_hf(cfg: dict[str, Any]) -> Qwen3MoeConfig:
    def build(c: dict[str, Any]) -> Qwen3MoeConfig:
        _refuse_sliding_window(c)
        where = "config.json"
        only = c.get("mlp_only_layers") or []
        if not isinstance(only, list):
            raise ConfigError(f"config.json 'mlp_only_layers' must be a list, got {type(only).__name__}")
        norm = c.get("norm_topk_prob", False)
        if not isinstance(norm, bool):
            raise ConfigError(f"config.json 'norm_topk_prob' must be a boolean, got {norm!r}")
        return Qwen3MoeConfig(
            **llama_fields_from_hf(c),
            # released configs say num_experts; transformers 5 saves its alias num_local_experts
            num_experts=int_field(c, "num_experts" if "num_experts" in c else "num_local_experts", where=where),
            num_experts_per_tok=int_field(c, "num_experts_per_tok", where=where),
            moe_intermediate_size=int_field(c, "moe_intermediate_size", where=where),
            norm_topk_prob=norm,
            decoder_sparse_step=int_field(c, "decoder_sparse_step", 1, where=where),
            mlp_only_layers=tuple(only),
        )

    return parse_hf(build, cfg)
