"""The Llama family as the loader sees it: config, module, weights — whatever the file format."""

from __future__ import annotations

from typing import Any, Iterator

from mistralrs.engine.formats.checkpoint import ModelFileError, RawTensor

from .config import ConfigError, LlamaConfig, config_from_gguf, config_from_hf
from .model import LlamaForCausalLM
from .weights import gguf_weights, hf_weights

TIED = {"lm_head.weight": "model.embed_tokens.weight"}


class LlamaFamily:
    name = "llama"

    def config(self, ckpt: Any) -> LlamaConfig:
        try:
            if ckpt.format == "gguf":
                cfg = config_from_gguf(ckpt.metadata, ckpt.metadata["general.architecture"])
                if "rope_freqs.weight" in ckpt.tensor_names():
                    cfg.rope.freq_factors = ckpt.tensor("rope_freqs.weight").data.float().tolist()
                cfg.tie_word_embeddings = "output.weight" not in ckpt.tensor_names()
                return cfg
            return config_from_hf(ckpt.metadata)
        except ConfigError as exc:
            raise ModelFileError(ckpt.path, str(exc)) from exc

    def build(self, cfg: LlamaConfig) -> LlamaForCausalLM:
        return LlamaForCausalLM(cfg)

    def weights(self, ckpt: Any, cfg: LlamaConfig) -> Iterator[tuple[str, RawTensor]]:
        return gguf_weights(ckpt, cfg) if ckpt.format == "gguf" else hf_weights(ckpt)

    def tied(self, cfg: LlamaConfig) -> dict[str, str]:
        """Parameters that alias another one when the checkpoint does not store them."""
        return TIED if cfg.tie_word_embeddings else {}


family = LlamaFamily()
