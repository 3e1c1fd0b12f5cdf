"""The Mixtral family: Mistral's loading with experts, from HF or GGUF (merged or per-expert)."""

from __future__ import annotations

from typing import Any, Iterator

from mistralrs.engine.formats.checkpoint import RawTensor
from mistralrs.plugins.mistral.family import MistralFamily

from mistralrs.plugins.mixtral.config import MixtralConfig, mixtral_config_from_gguf, mixtral_config_from_hf
from mistralrs.plugins.mixtral.model import MixtralForCausalLM
from mistralrs.plugins.mixtral.weights import mixtral_gguf_weights, mixtral_hf_weights


class MixtralFamily(MistralFamily):
    name = "mixtral"
    config_class = MixtralConfig
    model_class = MixtralForCausalLM

    def config_from_gguf(self, meta: dict[str, Any], arch: str) -> MixtralConfig:
        return mixtral_config_from_gguf(meta, arch)

    def config_from_hf(self, cfg: dict[str, Any]) -> MixtralConfig:
        return mixtral_config_from_hf(cfg)

    def gguf_weights(self, ckpt: Any, cfg: MixtralConfig) -> Iterator[tuple[str, RawTensor]]:
        return mixtral_gguf_weights(ckpt, cfg)

    def hf_weights(self, ckpt: Any, cfg: MixtralConfig) -> Iterator[tuple[str, RawTensor]]:
        return mixtral_hf_weights(ckpt, cfg)


family = MixtralFamily()
