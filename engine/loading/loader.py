"""Resolve a model config to a loaded module: source -> format -> family -> weights on a device."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from mistralrs.conf.schema import AdapterConfig, ModelConfig, QuantConfig
from mistralrs.registry import Registries, UnknownName, registries, resolve
from mistralrs.registry.interfaces import CausalLM, Checkpoint, Family, check

from mistralrs.engine.loading.devices import pick_device, pick_dtype
from mistralrs.engine.formats.checkpoint import ModelFileError
from mistralrs.engine.kernels import native_ops
from mistralrs.engine.layers.linear import Embedding, Linear
from mistralrs.engine.layers.weight_roles import weight_role
from mistralrs.engine.quant.isq import InSituQuantizer
from mistralrs.engine.quant.weights import dense_from_raw, packed_weight
from mistralrs.engine.loading.sources import resolve_source

log = logging.getLogger(__name__)
DEFAULT_MAX_SEQ_LEN = 4096


@dataclass
class LoadedModel:
    model: CausalLM
    tokenizer: Any  # engine.tokenizer.TextTokenizer
    checkpoint: Checkpoint
    family: Family
    config: Any  # the family's parsed config
    device: torch.device
    dtype: torch.dtype
    max_seq_len: int
    architecture: str
    load_seconds: float


def release_freed_heap() -> None:
    """Hand the heap that loading freed (tokenizer construction, parsed metadata, conversion buffers)
    back to the OS: glibc keeps it otherwise, 75 MB of RSS after loading Gemma 3. No-op elsewhere."""
    import ctypes

    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)  # glibc only
    if trim is not None:
        trim(0)


def open_checkpoint(path: Path, regs: Registries, options: ModelConfig | None = None) -> Checkpoint:
    """``options``: the user's model options, handed to the checkpoint's ``configure`` (legacy GGML
    files take the hyper-parameters their header lacks from them)."""
    known_types = set(regs.quant_types.names())
    for entry in regs.formats:
        if resolve(entry.spec.detect)(path):
            ckpt = check(resolve(entry.spec.open)(path, known_types), Checkpoint,
                         f"the {entry.spec.name!r} reader from plugin {entry.plugin!r}")
            if options is not None:
                ckpt.configure(options)
            return ckpt
    formats = ", ".join(regs.formats.names())
    if path.is_file() and path.suffix.lower() == ".gguf":  # named like one: say what is wrong with it
        with path.open("rb") as f:
            magic = f.read(4)
        raise ModelFileError(path, f"not a GGUF file: it starts with {magic!r}, a GGUF file with b'GGUF' "
                                   f"(a truncated download, or another file renamed?)")
    raise ModelFileError(path, f"not a recognized model ({formats}): expected a .gguf file or a directory with config.json")


def _set_parameter(model: nn.Module, name: str, value: torch.Tensor) -> None:
    owner_name, _, attr = name.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    owner._parameters[attr] = nn.Parameter(value, requires_grad=False)


def weights_mode(cfg: ModelConfig) -> str:
    if cfg.weights not in ("auto", "packed", "dense"):
        raise ValueError(f"model.weights={cfg.weights!r} is not one of auto, packed, dense")
    if cfg.weights != "auto":
        return cfg.weights
    return "dense" if cfg.dtype in ("float32", "f32") else "packed"


def _packable(model: nn.Module, target: str) -> nn.Module | None:
    """The Linear/Embedding owning ``target`` if it is that layer's 2-D weight."""
    owner_name, _, attr = target.rpartition(".")
    owner = model.get_submodule(owner_name) if owner_name else model
    return owner if attr == "weight" and isinstance(owner, (Linear, Embedding)) else None


def _load_weights(model: nn.Module, family: Family, ckpt: Checkpoint, model_cfg: Any, path: Path, arch: str,
                  dtype: torch.dtype, device: torch.device, mode: str, quant: Any = None) -> None:
    expected = dict(model.named_parameters())
    tied = family.tied(model_cfg)
    loaded: set[str] = set()
    isq = InSituQuantizer.from_config(quant, device)  # quant=q4_k etc.: float weights -> GGUF blocks
    for target, raw in tqdm(family.weights(ckpt, model_cfg), total=len(ckpt.tensor_names()), desc="loading weights",
                            unit="tensor", disable=None, leave=False):
        param = expected.get(target)
        if param is None:
            raise ModelFileError(path, f"unexpected tensor {raw.name!r} for architecture {arch!r}")
        if tuple(param.shape) != tuple(raw.shape):
            raise ModelFileError(path, f"tensor {raw.name!r} has shape {list(raw.shape)}, expected {list(param.shape)}")
        if isq is not None:
            raw = isq(target, raw, weight_role(model, target, tied))
        layer = _packable(model, target) if mode == "packed" else None
        if layer is not None:
            need_rows = isinstance(layer, Embedding) or target in tied.values()
            layer.set_packed(packed_weight(raw, device, dtype, need_rows=need_rows), dtype)
        else:
            _set_parameter(model, target, dense_from_raw(raw, dtype, device))
        ckpt.release_pages([raw.name])  # memory-mapped files: drop each tensor's pages once copied
        loaded.add(target)
    for alias, source in tied.items():
        if alias in loaded:
            continue
        src_layer, dst_layer = _packable(model, source), _packable(model, alias)
        if src_layer is not None and src_layer.packed is not None and dst_layer is not None:
            dst_layer.set_packed(src_layer.packed, dtype)
        else:
            _set_parameter(model, alias, model.get_parameter(source))
        loaded.add(alias)
    if isq is not None:
        isq.log_summary()
    missing = sorted(set(expected) - loaded)
    if missing:
        raise ModelFileError(path, f"missing tensors for {arch!r}: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")


def load_tokenizer(cfg: ModelConfig, ckpt: Checkpoint, path: Path, vocab: int | None = None) -> Any:
    """The model's tokenizer as ``cfg`` overrides it (model.tokenizer, model.chat_template); ``vocab``:
    the model's embedding rows, which the tokenizer must not exceed. Needs no weights: the Ray
    backend's ingress tokenizes with it (engine/scaleout/frontend_model.py)."""
    if cfg.tokenizer:  # the override replaces the file's vocabulary, which then need not even be readable
        from mistralrs.engine.tokenizer.hf_vocab import tokenizer_from_hf_dir

        override = Path(cfg.tokenizer)
        tokenizer = tokenizer_from_hf_dir(override.parent if override.is_file() else override)
    else:
        tokenizer = ckpt.tokenizer()
    if isinstance(vocab, int) and tokenizer.vocab_size > vocab:  # its last ids would index past the embedding
        raise ModelFileError(Path(cfg.tokenizer) if cfg.tokenizer else path,
                             f"the tokenizer has {tokenizer.vocab_size} tokens, more than the model's {vocab} embeddings")
    if cfg.chat_template:
        template = Path(cfg.chat_template)
        tokenizer.chat_template = template.read_text() if template.is_file() else cfg.chat_template
    return tokenizer


def load_model(cfg: ModelConfig, regs: Registries | None = None, quant: QuantConfig | None = None,
               adapter: AdapterConfig | None = None) -> LoadedModel:
    """``quant``: in-situ quantization of the checkpoint's float weights (None or type none: off);
    ``adapter``: LoRA / X-LoRA adapters applied by the registered adapter kind (None or none: off)."""
    start = time.perf_counter()
    regs = regs or registries()
    path = resolve_source(cfg.source, sha256=cfg.sha256, revision=cfg.revision)
    ckpt = open_checkpoint(path, regs, cfg)
    hint = ckpt.architecture()
    spec = regs.architectures.get(cfg.architecture) if cfg.architecture else None
    if spec is None or (hint.gguf and hint.gguf not in spec.gguf_architectures) or (hint.hf and not set(hint.hf) & set(spec.hf_architectures)):
        try:
            spec = regs.architecture_for(gguf=hint.gguf, hf=hint.hf)
        except UnknownName as exc:  # what the file says it is: name the file
            raise ModelFileError(path, str(exc)) from exc
    if hint.gguf:  # e.g. a GGUF "llama" file with experts is Mixtral's, whatever the preset
        spec = regs.gguf_claimant(hint.gguf, ckpt.metadata) or spec
    family = spec.load()
    model_cfg = family.configure(family.config(ckpt), cfg)  # then user options the file does not decide
    arch_name = family.name
    device = pick_device(cfg.device)
    dtype = pick_dtype(cfg.dtype, device)
    if device.type == "cpu":
        native_ops()  # compile/load the kernels now, not inside the first request

    # the tokenizer before the weights: its construction's transient memory (200 MB for Gemma 3's
    # 262k-token vocabulary) is then handed back before the weights arrive, not added on top of them
    tokenizer = load_tokenizer(cfg, ckpt, path, getattr(model_cfg, "vocab_size", None))
    release_freed_heap()
    with torch.device("meta"):
        model = check(family.build(model_cfg), CausalLM, f"the module family {arch_name!r} builds")
    _load_weights(model, family, ckpt, model_cfg, path, spec.name, dtype, device, weights_mode(cfg), quant)
    ckpt.release_pages()  # the model holds its own copies now (this takes the pages around tensors)
    if adapter is not None and adapter.kind != "none":  # may wrap the model (X-LoRA's dual pass)
        applied = resolve(regs.adapters.get(adapter.kind).apply)(model, adapter, device, dtype)
        model = check(applied, CausalLM, f"the model adapter {adapter.kind!r} returns")
    max_seq_len = cfg.max_seq_len or min(DEFAULT_MAX_SEQ_LEN, model_cfg.max_position_embeddings)
    model.prepare(max_seq_len, device, dtype)
    model.eval()
    release_freed_heap()
    seconds = time.perf_counter() - start
    log.info("loaded %s (%s, %s) on %s as %s in %.2fs", path.name, arch_name, ckpt.format, device, dtype, seconds)
    return LoadedModel(model, tokenizer, ckpt, family, model_cfg, device, dtype, max_seq_len, arch_name, seconds)
