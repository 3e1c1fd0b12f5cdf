"""Which GGML types in-situ quantization (ISQ) can produce, and how ``quant=...`` names map to them.

Torch-free, so that resolving ``quant=...`` while composing the configuration stays cheap. The types
and their block sizes come from the quant-type table (the registry's quant types).
"""

from __future__ import annotations

from mistralrs.registry import registries

# ``quant=4`` etc.: the K-type of that width, as mistral.rs's ``--isq 4`` does; 8 has no K-type
# for weights (Q8_K is only an intermediate), so it is Q8_0.
ISQ_BY_BITS = {2: "Q2_K", 3: "Q3_K", 4: "Q4_K", 5: "Q5_K", 6: "Q6_K", 8: "Q8_0"}

# A K-type needs rows that are whole 256-element super-blocks. Otherwise llama.cpp's quantizer
# substitutes a 32-block type, and if even that does not fit, F16 (we keep such tensors float).
# Table as in ggml-org/llama.cpp src/llama-quant.cpp, tensor_type_fallback() (read at commit
# 007dbbf3fd17eefe9b47fee45f48f7ba5e62b714): Q2_K, Q3_K -> Q4_0; Q4_K -> Q5_0; Q5_K -> Q5_1;
# Q6_K -> Q8_0 (IQ* types -> IQ4_NL, which we do not have).
LLAMA_CPP_FALLBACK = {"Q2_K": "Q4_0", "Q3_K": "Q4_0", "Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}


def isq_types() -> tuple[str, ...]:
    """The types in-situ quantization can produce: every registered quant type with a quantizer."""
    return tuple(e.spec.name for e in registries().quant_types if e.spec.quantize is not None)


def _block_size(qtype: str) -> int:
    return registries().quant_types.get(qtype).block_size


def resolve_isq_type(name: object) -> str | None:
    """``quant.type`` -> a GGML type name, or None for no quantization.

    Accepts ``none``, the type names in any case (``q4_k``, ``Q4_K``, ``q4k``) and widths
    ``2|3|4|5|6|8``.
    """
    if name is None:
        return None
    text = str(name).strip()
    if text.lower() in ("", "none", "null", "false"):
        return None
    if text.isdigit():
        try:
            return ISQ_BY_BITS[int(text)]
        except KeyError:
            raise ValueError(f"quant={text}: no type of that width; widths: "
                             f"{', '.join(str(b) for b in ISQ_BY_BITS)}") from None
    upper = text.upper()
    if upper.endswith("K") and not upper.endswith("_K"):  # q4k -> Q4_K (mistral.rs spells it Q4K)
        upper = upper[:-1] + "_K"
    known = isq_types()
    if upper not in known:
        raise ValueError(f"quant={text}: unknown quantization type; known: none, "
                         f"{', '.join(t.lower() for t in known)}, or a width "
                         f"{'|'.join(str(b) for b in ISQ_BY_BITS)}")
    return upper


def isq_target_type(qtype: str, cols: int) -> str | None:
    """The type a tensor with rows of ``cols`` elements gets when ``qtype`` is asked for: ``qtype``
    itself, llama.cpp's fallback when the rows do not split into its blocks, or None (stay float)."""
    if cols % _block_size(qtype) == 0:
        return qtype
    fallback = LLAMA_CPP_FALLBACK.get(qtype)
    if fallback is not None and cols % _block_size(fallback) == 0:
        return fallback
    return None


def quote_width_overrides(overrides: list[str]) -> list[str]:
    """Hydra parses ``quant=4`` as the integer 4 and refuses it as a config-group choice; quoting the
    width (``quant="4"``) selects the preset named "4". For the CLI's argv and ``compose_config``."""
    out = []
    for arg in overrides:
        key, sep, value = arg.partition("=")
        if sep and key.lstrip("+~") == "quant" and value.isdigit():
            arg = f'{key}="{value}"'
        out.append(arg)
    return out
