"""Tensor type ids as GGUF and GGML files store them -> the quant-type table's records (registry's
quant types, filled by the ``register_quant_types`` hook), so a plugin's type reads like a built-in."""

from __future__ import annotations

from gguf import GGMLQuantizationType

from mistralrs.registry import QuantTypeSpec, registries


def stored_type(type_id: int) -> tuple[str, QuantTypeSpec | None]:
    """The registered type of a tensor type id and its name; for an id no plugin registered, gguf's
    name for it where gguf knows one (so errors say IQ2_XXS, not a number), else ``UNKNOWN(<id>)``."""
    spec = registries().quant_types.by_ggml_type(type_id)
    if spec is not None:
        return spec.name, spec
    try:
        return GGMLQuantizationType(type_id).name, None
    except ValueError:
        return f"UNKNOWN({type_id})", None
