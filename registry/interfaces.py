"""The contracts between the engine and its plugins: what a family, a checkpoint, a model, an adapter
and a quant type must provide. These docstrings are the reference for plugin authors; the engine calls
nothing beyond what is declared here, and checks a plugin's objects against them when it first uses
them (:func:`check`), naming what is missing instead of failing later on an ``AttributeError``.

The data flow they connect (docs/ARCHITECTURE.md draws it)::

    FormatSpec.open(path) -> Checkpoint            (engine/formats, or a plugin's format)
    ArchitectureSpec.family -> Family               (plugins/<family>, built on engine/llama_base)
    Family.config(ckpt) -> cfg; Family.build(cfg) -> CausalLM; Family.weights(ckpt, cfg) -> tensors
    AdapterSpec.apply -> ApplyAdapter: (model, cfg, device, dtype) -> CausalLM   (plugins/xlora)
    QuantTypeSpec: the one record of a stored tensor type: GGUF id, block geometry, Dequantize and
        optionally Quantize (engine/quant/plugin.py registers the built-in ones)
    engine/core steps the CausalLM: CausalLM.step(ids, batches, cache, seqs) -> hidden; .logits(hidden)

Only typing lives here (nothing heavy is imported), so the registry stays importable without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Protocol, runtime_checkable

from mistralrs.registry.errors import RegistryError

if TYPE_CHECKING:  # for the annotations only
    import torch

    from mistralrs.engine.core.batch import AttentionBatch
    from mistralrs.engine.core.kv_cache import KVCache, KVCacheSpec
    from mistralrs.engine.core.sequence import Sequence
    from mistralrs.engine.formats.checkpoint import ArchitectureHint, RawTensor


class ContractError(RegistryError, TypeError):
    """A plugin's object lacks members its contract declares."""


@runtime_checkable
class Checkpoint(Protocol):
    """An opened model file or directory, whatever its format (``FormatSpec.open`` returns one)."""

    path: Path
    format: str  # "gguf", "ggml", "safetensors", or a plugin format's name
    metadata: dict[str, Any]  # GGUF key/values, or HF config.json

    def architecture(self) -> "ArchitectureHint":
        """What the file says it is (GGUF ``general.architecture``, HF ``architectures``)."""

    def tensor_names(self) -> list[str]: ...

    def tensor(self, name: str) -> "RawTensor":
        """One tensor as stored (quantized blocks stay bytes; see ``RawTensor``)."""

    def tensors(self) -> Iterator["RawTensor"]: ...

    def tokenizer(self) -> Any:
        """The vocabulary and chat template the file carries (``engine.tokenizer.TextTokenizer``)."""

    def recommended_sampling(self) -> dict[str, float | int]:
        """Sampling the file recommends (``temperature``, ``top_k``, ``top_p``, ``min_p``); {} if none."""

    def file_tensor_bytes(self) -> int: ...

    def configure(self, options: Any) -> None:
        """Take what the file lacks from the user's ``ModelConfig`` (legacy GGML headers have no
        context length or head counts). Most formats need nothing: a no-op."""

    def release_pages(self, names: list[str] | None = None) -> None:
        """Drop the memory-mapped pages of ``names`` (all when None) once the model holds its own
        copies. A format that reads into memory has nothing to drop: a no-op."""


@runtime_checkable
class CausalLM(Protocol):
    """A built model, as the engine core drives it. ``engine/llama_base.LlamaForCausalLM`` implements
    it for every transformer family; an adapter may wrap one and implement it again (X-LoRA)."""

    config: Any  # the family's parsed config
    num_kv_caches: int  # KV caches per sequence: 1, or 2 for X-LoRA's scaling and main passes
    adapter_info: dict[str, Any] | None  # what /v1/models reports of applied adapters; None if none

    def cache_spec(self) -> "KVCacheSpec":
        """Layers, KV heads and head sizes the paged KV cache must hold."""

    def prepare(self, max_positions: int, device: "torch.device", dtype: "torch.dtype") -> None:
        """Build what is not a checkpoint tensor (RoPE tables) once the weights are loaded."""

    def step(self, input_ids: "torch.Tensor", batches: list["AttentionBatch"], cache: "KVCache",
             seqs: list["Sequence"] | None = None) -> "torch.Tensor":
        """One engine step over a flat batch of new tokens: final normed hidden states ``[T, hidden]``.
        ``batches`` has one entry per KV cache (``num_kv_caches``); the last one's hidden states give
        logits. ``seqs`` are the batch's sequences in order (None from ``LLM.logits``), for adapters
        that keep per-sequence state in ``Sequence.adapter_state``."""

    def logits(self, hidden: "torch.Tensor") -> "torch.Tensor":
        """``[N, hidden]`` -> float32 ``[N, vocab]``."""


@runtime_checkable
class Family(Protocol):
    """A model family, as the loader drives it (``ArchitectureSpec.family`` names one). Subclass
    ``engine.llama_base.family.LlamaFamily`` for anything Llama-shaped: it implements all of this."""

    name: str

    def config(self, ckpt: Checkpoint) -> Any:
        """Parse the checkpoint's hyper-parameters; raise ``ModelFileError`` naming what is wrong."""

    def configure(self, cfg: Any, options: Any) -> Any:
        """Apply the user's ``ModelConfig`` options that override the file's (``model.sliding_window``)."""

    def build(self, cfg: Any) -> CausalLM:
        """The module, built on the meta device; the loader fills its parameters."""

    def weights(self, ckpt: Checkpoint, cfg: Any) -> Iterator[tuple[str, "RawTensor"]]:
        """(parameter name in the built module, stored tensor) for every tensor the module needs."""

    def tied(self, cfg: Any) -> dict[str, str]:
        """Parameters that alias another one when the checkpoint does not store them."""


@runtime_checkable
class FusedAdapter(Protocol):
    """An adapter's terms over a fused group of linears (q/k/v): added to the concatenated output."""

    term: Any  # engine.layers.low_rank.LowRankTerm, or None when the native stack cannot apply it

    def add_(self, out: "torch.Tensor", x: "torch.Tensor") -> None: ...


@runtime_checkable
class AdaptedLinear(Protocol):
    """A linear wrapped by an adapter (LoRA). The engine's fused linear groups and native decode stack
    keep calling ``base_layer`` and apply ``term`` beside it; a wrapper that cannot say its term as a
    ``LowRankTerm`` sets ``term = None`` and is called as a plain module instead."""

    base_layer: Any  # engine.layers.linear.Linear
    term: Any  # engine.layers.low_rank.LowRankTerm or None

    def fuse_group(self, layers: tuple[Any, ...]) -> FusedAdapter | None:
        """One adapter object for linears sharing an input, or None if they must run apart."""

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor": ...


class ApplyAdapter(Protocol):
    """``AdapterSpec.apply`` names one: wrap a built, loaded model's linears (``AdaptedLinear``) or
    the whole model; return what the engine drives (checked as a ``CausalLM``)."""

    def __call__(self, model: CausalLM, cfg: Any, device: "torch.device", dtype: "torch.dtype") -> CausalLM: ...


class Dequantize(Protocol):
    """``QuantTypeSpec.dequantize`` names one: ``blocks`` uint8 ``[n, spec.type_size]`` -> float32
    ``[n, spec.block_size]``. The loader calls it for any type the kernels do not run natively
    (``QuantTypeSpec.native`` is only for the built-in kernels' types)."""

    def __call__(self, blocks: "torch.Tensor", spec: Any) -> "torch.Tensor": ...


class Quantize(Protocol):
    """``QuantTypeSpec.quantize`` names one (optional): float32 ``[n, spec.block_size]`` -> uint8
    ``[n, spec.type_size]``; with it the type is a target of in-situ quantization (``quant=``)."""

    def __call__(self, x: "torch.Tensor") -> "torch.Tensor": ...


def missing_members(obj: object, contract: type) -> list[str]:
    """Names ``contract`` declares that ``obj`` lacks (attributes and methods alike)."""
    names: set[str] = set()
    for klass in contract.__mro__:
        if klass is object or klass is Protocol or not getattr(klass, "_is_protocol", False):
            continue
        names |= set(getattr(klass, "__annotations__", {}))
        names |= {n for n, v in vars(klass).items() if callable(v) and not n.startswith("_")}
    if "__call__" in vars(contract):
        names.add("__call__")
    return sorted(n for n in names if not hasattr(obj, n))


def check(obj: Any, contract: type, what: str) -> Any:
    """``obj`` unchanged if it provides ``contract``; else a ``ContractError`` naming ``what`` (e.g.
    "family 'llama' from plugin x") and each missing member."""
    missing = missing_members(obj, contract)
    if missing:
        raise ContractError(f"{what} does not implement {contract.__name__}: missing {', '.join(missing)} "
                            f"(see mistralrs/registry/interfaces.py)")
    return obj
