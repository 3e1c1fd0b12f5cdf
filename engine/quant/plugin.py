"""Built-in tensor types (GGML's float and block-quantized types), registered like any plugin."""

from mistralrs.registry import QuantTypeSpec, hookimpl

_DEQUANTIZE = "mistralrs.engine.quant.dequant:decode_blocks"
_LEGACY = "mistralrs.engine.quant.quantize"
_K = "mistralrs.engine.quant.quantize_k"

# The built-in rows of the quant-type table (registry.QuantTypeSpec); geometry as gguf.GGML_QUANT_SIZES.
# name, ggml type id, elements per block, bytes per block, native C++ kernel, quantizer module, what it is
_TYPES = [
    ("F32", 0, 1, 4, False, None, "32-bit float"),
    ("F16", 1, 1, 2, False, None, "16-bit float"),
    ("BF16", 30, 1, 2, False, None, "bfloat16"),
    ("Q4_0", 2, 32, 18, True, _LEGACY, "4-bit, group 32, scale"),
    ("Q4_1", 3, 32, 20, True, _LEGACY, "4-bit, group 32, scale and min"),
    ("Q5_0", 6, 32, 22, True, _LEGACY, "5-bit, group 32, scale"),
    ("Q5_1", 7, 32, 24, True, _LEGACY, "5-bit, group 32, scale and min"),
    ("Q8_0", 8, 32, 34, True, _LEGACY, "8-bit, group 32, scale"),
    ("Q2_K", 10, 256, 84, True, _K, "2-bit K-quant, super-block 256"),
    ("Q3_K", 11, 256, 110, True, _K, "3-bit K-quant, super-block 256"),
    ("Q4_K", 12, 256, 144, True, _K, "4-bit K-quant, super-block 256"),
    ("Q5_K", 13, 256, 176, True, _K, "5-bit K-quant, super-block 256"),
    ("Q6_K", 14, 256, 210, True, _K, "6-bit K-quant, super-block 256"),
    ("Q8_K", 15, 256, 292, False, None, "8-bit K-quant (intermediate)"),
]


@hookimpl
def register_quant_types(register):
    for name, ggml_type, block, size, native, quantizer, description in _TYPES:
        register(QuantTypeSpec(
            name=name,
            ggml_type=ggml_type,
            block_size=block,
            type_size=size,
            dequantize=_DEQUANTIZE,
            quantize=f"{quantizer}:quantize_{name.lower()}_blocks" if quantizer else None,
            native=native,
            description=description,
        ))


@hookimpl
def register_configs(config_store):
    """``quant=<type>`` presets for in-situ quantization: ``quant=q4_k``, ``quant=q8_0``, ... and the
    widths ``quant=2|3|4|5|6|8`` (the K-type of that width, 8 -> q8_0, as mistral.rs's ``--isq``)."""
    from mistralrs.conf.schema import QuantConfig

    from mistralrs.engine.quant.quantize_types import ISQ_BY_BITS

    for name, *_, quantizer, _description in _TYPES:
        if quantizer is not None:  # the types this plugin can quantize to
            config_store.store(group="quant", name=name.lower(), node=QuantConfig(type=name.lower()))
    for bits, name in ISQ_BY_BITS.items():
        config_store.store(group="quant", name=str(bits), node=QuantConfig(type=name.lower()))
