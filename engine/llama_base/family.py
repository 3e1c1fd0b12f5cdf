"""The Llama family as the loader sees it: config, module, weights — whatever the file format.

``LlamaFamily`` is also the base of the other Llama-shaped families: a subclass names its config
parsers, its module class and its GGUF tensor names, and inherits the rest.
"""

from __future__ import annotations

import re
from typing import Any, Iterator, NamedTuple

from mistralrs.engine.formats.checkpoint import ModelFileError, RawTensor

from mistralrs.engine.llama_base.config import ConfigError, LlamaConfig, config_from_gguf, config_from_hf
from mistralrs.engine.llama_base.model import LlamaForCausalLM
from mistralrs.engine.llama_base.weights import GGUF_BLOCK_NAMES, LONGROPE_FACTORS, gguf_weights, hf_weights

TIED = {"lm_head.weight": "model.embed_tokens.weight"}
# formats whose checkpoints carry GGUF tensor names and metadata (legacy GGML files are presented so)
GGUF_LAYOUT_FORMATS = ("gguf", "ggml")
_GGUF_BLOCK = re.compile(r"^blk\.(\d+)\.")
_HF_LAYER = re.compile(r"^model\.layers\.(\d+)\.")


class ShapeRule(NamedTuple):
    """A tensor whose shape the hyper-parameters fix: the first of ``names`` the file holds is checked
    (none held: the loader reports the missing tensor, unless ``required``, which refuses at once)."""

    names: tuple[str, ...]
    shape: tuple[int, ...]
    keys: str  # the hyper-parameters that give the shape, as the file names them
    required: bool = False


def tensor_shape(ckpt: Any, name: str) -> tuple[int, ...]:
    """A tensor's shape without reading its data where the checkpoint can say it (GGUF, GGML and
    safetensors checkpoints have ``tensor_shape``; another format's tensor is read)."""
    shape_of = getattr(ckpt, "tensor_shape", None)
    return tuple(shape_of(name) if shape_of is not None else ckpt.tensor(name).shape)


class LlamaFamily:
    name = "llama"
    config_class: type[LlamaConfig] = LlamaConfig
    model_class: type[LlamaForCausalLM] = LlamaForCausalLM
    gguf_block_names: dict[str, str] = GGUF_BLOCK_NAMES
    gguf_unpermute_rope = True  # llama.cpp's converter permutes Q/K rows of llama-arch models

    # --- what a subclass overrides ------------------------------------------------------------
    # the config parsers: (GGUF metadata, architecture name) -> config, and config.json's dict -> config
    config_from_gguf = staticmethod(config_from_gguf)
    config_from_hf = staticmethod(config_from_hf)

    # --- the loader's interface ----------------------------------------------------------------
    def config(self, ckpt: Any) -> LlamaConfig:
        """The file's hyper-parameters, checked against the tensors it holds before anything is built:
        a bad value is one ModelFileError naming the file and the key (or tensor)."""
        gguf = ckpt.format in GGUF_LAYOUT_FORMATS
        try:
            if gguf:
                arch = ckpt.metadata["general.architecture"]
                cfg = self.config_from_gguf(ckpt.metadata, arch)
                self.check_tensors(cfg, ckpt, arch)
                self.read_rope_tensors(cfg, ckpt)
                cfg.tie_word_embeddings = "output.weight" not in ckpt.tensor_names()
                return cfg
            cfg = self.config_from_hf(ckpt.metadata)
            self.check_tensors(cfg, ckpt, None)
            return cfg
        except ConfigError as exc:
            raise ModelFileError(ckpt.path, str(exc)) from exc
        except ModelFileError:
            raise
        except (TypeError, ValueError, ArithmeticError) as exc:  # a value no check anticipated
            raise ModelFileError(ckpt.path, f"bad hyper-parameter value: {exc}") from exc

    def check_tensors(self, cfg: LlamaConfig, ckpt: Any, arch: str | None) -> None:
        """The layer count is the number of blocks the file holds, and the shapes of ``shape_rules``'
        tensors are the ones the sizes give: checked before a module is built, so a huge count or size
        is a clear error rather than a build that never ends or allocates without bound."""
        names = ckpt.tensor_names()
        pattern = _GGUF_BLOCK if arch is not None else _HF_LAYER
        found = {int(m.group(1)) for name in names if (m := pattern.match(name))}
        n = cfg.num_layers
        if len(found) != n or (found and max(found) != n - 1):  # distinct indices: exactly 0..n-1
            key = f"{arch}.block_count" if arch is not None else "num_hidden_layers"
            held = f"{len(found)} blocks (indices {min(found)}..{max(found)})" if found else "no blocks"
            raise ConfigError(f"{key} is {n}, but the file holds the tensors of {held}")
        present = set(names)
        for rule in self.shape_rules(cfg, arch):
            name = next((x for x in rule.names if x in present), None)
            if name is None:
                if rule.required:
                    raise ConfigError(f"no tensor {' or '.join(map(repr, rule.names))} to check {rule.keys} against")
                continue
            shape = tensor_shape(ckpt, name)
            if shape != rule.shape:
                raise ConfigError(f"tensor {name!r} has shape {list(shape)}, but {rule.keys} give {list(rule.shape)}")

    def shape_rules(self, cfg: LlamaConfig, arch: str | None) -> list[ShapeRule]:
        """The embedding's and the first block's attention and MLP shapes (a subclass adds its own)."""
        h, hd = cfg.hidden_size, cfg.head_dim
        if arch is not None:
            p = f"{arch}."
            return [
                ShapeRule(("token_embd.weight",), (cfg.vocab_size, h),
                          f"{p}vocab_size (or the token count) and {p}embedding_length"),
                ShapeRule(("blk.0.attn_q.weight",), (cfg.num_heads * hd, h),
                          f"{p}attention.head_count x {p}attention.key_length and {p}embedding_length"),
                ShapeRule(("blk.0.attn_k.weight",), (cfg.num_kv_heads * hd, h),
                          f"{p}attention.head_count_kv x {p}attention.key_length and {p}embedding_length"),
                ShapeRule(("blk.0.ffn_up.weight",), (cfg.intermediate_size, h),
                          f"{p}feed_forward_length and {p}embedding_length"),
            ]
        return [
            ShapeRule(("model.embed_tokens.weight",), (cfg.vocab_size, h), "vocab_size and hidden_size"),
            ShapeRule(("model.layers.0.self_attn.q_proj.weight",), (cfg.num_heads * hd, h),
                      "num_attention_heads x head_dim and hidden_size"),
            ShapeRule(("model.layers.0.self_attn.k_proj.weight",), (cfg.num_kv_heads * hd, h),
                      "num_key_value_heads x head_dim and hidden_size"),
            ShapeRule(("model.layers.0.mlp.up_proj.weight",), (cfg.intermediate_size, h),
                      "intermediate_size and hidden_size"),
        ]

    def read_rope_tensors(self, cfg: LlamaConfig, ckpt: Any) -> None:
        """RoPE a GGUF file holds as tensors: llama3's per-frequency divisors (``rope_freqs``) and
        LongRoPE's short and long factor sets (llama.cpp's converter writes Phi-3's so, with no
        ``rope.scaling.type``: the default attention factor then takes the context's growth)."""
        names = ckpt.tensor_names()
        if "rope_freqs.weight" in names:
            cfg.rope.freq_factors = self.rope_freq_factors(ckpt)
            cfg.validate()
        if any(name in names for name in LONGROPE_FACTORS):
            if cfg.rope.scaling != "longrope":
                cfg.rope.factor = cfg.max_position_embeddings / cfg.rope.original_max_position
            cfg.rope.scaling = "longrope"
            cfg.rope.short_factors, cfg.rope.long_factors = (
                self.rope_freq_factors(ckpt, name) if name in names else None for name in LONGROPE_FACTORS)
            cfg.validate()

    @staticmethod
    def rope_freq_factors(ckpt: Any, name: str = "rope_freqs.weight") -> list[float]:
        raw = ckpt.tensor(name)
        if raw.qtype not in ("F32", "F16") or len(raw.shape) != 1:
            raise ConfigError(f"tensor {name!r} must be a float vector, got {raw.qtype} {list(raw.shape)}")
        return raw.data.float().tolist()

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

