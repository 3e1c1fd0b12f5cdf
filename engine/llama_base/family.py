"""The Llama family as the loader sees it: config, module, weights — whatever the file format.

``LlamaFamily`` is also the base of the other Llama-shaped families: a subclass names its config
parsers, its module class and its GGUF tensor names, and inherits the rest.
"""

from __future__ import annotations

from typing import Any, Iterator

from mistralrs.engine.formats.checkpoint import ModelFileError, RawTensor

from mistralrs.engine.llama_base.config import ConfigError, LlamaConfig, config_from_gguf, config_from_hf
from mistralrs.engine.llama_base.model import LlamaForCausalLM
from mistralrs.engine.llama_base.weights import GGUF_BLOCK_NAMES, gguf_weights, hf_weights

TIED = {"lm_head.weight": "model.embed_tokens.weight"}
# formats whose checkpoints carry GGUF tensor names and metadata (legacy GGML files are presented so)
GGUF_LAYOUT_FORMATS = ("gguf", "ggml")


class LlamaFamily:
    name = "llama"
    config_class: type[LlamaConfig] = LlamaConfig
    model_class: type[LlamaForCausalLM] = LlamaForCausalLM
    gguf_block_names: dict[str, str] = GGUF_BLOCK_NAMES
    gguf_unpermute_rope = True  # llama.cpp's converter permutes Q/K rows of llama-arch models

    # --- what a subclass overrides ------------------------------------------------------------
    def config_from_gguf(self, meta: dict[str, Any], arch: str) -> LlamaConfig:
        return config_from_gguf(meta, arch)

    def config_from_hf(self, cfg: dict[str, Any]) -> LlamaConfig:
        return config_from_hf(cfg)

    # --- the loader's interface ----------------------------------------------------------------
    def config(self, ckpt: Any) -> LlamaConfig:
        try:
            if ckpt.format in GGUF_LAYOUT_FORMATS:
                cfg = self.config_from_gguf(ckpt.metadata, ckpt.metadata["general.architecture"])
                if "rope_freqs.weight" in ckpt.tensor_names():
                    cfg.rope.freq_factors = ckpt.tensor("rope_freqs.weight").data.float().tolist()
                cfg.tie_word_embeddings = "output.weight" not in ckpt.tensor_names()
                return cfg
            return self.config_from_hf(ckpt.metadata)
        except ConfigError as exc:
            raise ModelFileError(ckpt.path, str(exc)) from exc

    def configure(self, cfg: LlamaConfig, options: Any) -> LlamaConfig:
        """Apply the user's model options (``conf.schema.ModelConfig``) that override the file's."""
        window = getattr(options, "sliding_window", None)
        if window is not None:
            if not hasattr(cfg, "sliding_window"):
                raise ConfigError(f"model.sliding_window={window}: the {self.name!r} architecture has no "
                                  "sliding-window attention (a Mistral GGUF loads as model=mistral)")
            if int(window) < 1:
                raise ConfigError(f"model.sliding_window must be a positive number of tokens, got {window}")
            cfg.sliding_window = int(window)
        return cfg

    def build(self, cfg: LlamaConfig) -> LlamaForCausalLM:
        return self.model_class(cfg)

    def weights(self, ckpt: Any, cfg: LlamaConfig) -> Iterator[tuple[str, RawTensor]]:
        if ckpt.format in GGUF_LAYOUT_FORMATS:
            return self.gguf_weights(ckpt, cfg)
        return self.hf_weights(ckpt, cfg)

    def tied(self, cfg: LlamaConfig) -> dict[str, str]:
        """Parameters that alias another one when the checkpoint does not store them."""
        return TIED if cfg.tie_word_embeddings else {}

    # --- helpers -------------------------------------------------------------------------------
    def gguf_weights(self, ckpt: Any, cfg: LlamaConfig) -> Iterator[tuple[str, RawTensor]]:
        return gguf_weights(ckpt, cfg, self.gguf_unpermute_rope, self.gguf_block_names)

    def hf_weights(self, ckpt: Any, cfg: LlamaConfig) -> Iterator[tuple[str, RawTensor]]:
        return hf_weights(ckpt)

