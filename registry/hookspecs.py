"""The hooks a mistralrs plugin may implement.

Every hook is registrar-style: the plugin receives a ``register`` callable (or Hydra's
``ConfigStore``) and calls it once per thing it provides. Specs name their implementation as a
lazy ``"module:attribute"`` string, so listing plugins never imports torch-heavy code.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

PROJECT = "mistralrs"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_architectures(register: Callable[..., None]) -> None:
    """Register model families.

    Call ``register(ArchitectureSpec(...))`` for each family. A spec names the GGUF
    ``general.architecture`` values and HF ``architectures`` class names it accepts, and the
    lazy path of a ``Family`` object that parses configs, maps tensor names and builds the module.
    """


@hookspec
def register_formats(register: Callable[..., None]) -> None:
    """Register weight-file formats.

    Call ``register(FormatSpec(...))`` for each format: its name, the lazy path of a ``detect(path)``
    function answering whether a path is in this format, and of an ``open(path, options)`` function
    returning a ``Checkpoint``.
    """


@hookspec
def register_quant_types(register: Callable[..., None]) -> None:
    """Register tensor storage / quantization types.

    Call ``register(QuantTypeSpec(...))`` for each type: its name, GGML type id, block geometry, the
    lazy path of its dequantization function ``(blocks: uint8 [n, type_size], spec) -> float32
    [n, block_size]`` and, if it has one, of its quantizer ``(float32 [n, block_size]) -> uint8
    [n, type_size]``. GGUF files whose tensors carry the type id then load through it: types the C++
    kernels do not handle run as dequantized weights, and a type with a quantizer is an in-situ
    quantization target (``quant.type=<name>``).
    """


@hookspec
def register_adapters(register: Callable[..., None]) -> None:
    """Register adapter kinds (LoRA, X-LoRA, ...).

    Call ``register(AdapterSpec(...))`` with the adapter's name and the lazy path of the function
    that applies it to a built model.
    """


@hookspec
def register_configs(config_store: Any) -> None:
    """Add Hydra presets to ``config_store`` (a ``hydra.core.config_store.ConfigStore``).

    For example ``config_store.store(group="model", name="smollm2", node=ModelConfig(...))`` makes
    ``mistralrs model=smollm2`` work. Called before Hydra composes the configuration.
    """
