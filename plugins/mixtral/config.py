"""Mixtral hyper-parameters: Mistral's plus the experts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mistralrs.engine.llama_base.config import ConfigError, int_field, llama_fields_from_gguf, llama_fields_from_hf, parse_hf
from mistralrs.plugins.mistral.config import MistralConfig, hf_window


@dataclass
class MixtralConfig(MistralConfig):
    architecture: ClassVar[str] = "mixtral"

    num_experts: int = 8
    num_experts_per_tok: int = 2  # experts each token is routed to

    def validate(self) -> "MixtralConfig":
        super().validate()
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            raise ConfigError(f"num_experts_per_tok {self.num_experts_per_tok} must be between 1 and "
                              f"num_experts {self.num_experts}")
        return self


def mixtral_config_from_gguf(meta: dict[str, Any], arch: str) -> MixtralConfig:
    window = int_field(meta, f"{arch}.attention.sliding_window", None, minimum=0)
    return MixtralConfig(
        **llama_fields_from_gguf(meta, arch),
        sliding_window=window or None,
        num_experts=int_field(meta, f"{arch}.expert_count"),
        num_experts_per_tok=int_field(meta, f"{arch}.expert_used_count"),
    ).validate()


def mixtral_config_from_hf(cfg: dict[str, Any]) -> MixtralConfig:
    return parse_hf(lambda c: MixtralConfig(
        **llama_fields_from_hf(c),
        sliding_window=hf_window(c),
        num_experts=int_field(c, "num_local_experts", where="config.json"),
        num_experts_per_tok=int_field(c, "num_experts_per_tok", where="config.json"),
    ), cfg)
