"""A third-party quant type: TOY_Q8, blocks of 16 elements stored as one float16 scale and 16 int8 codes
(18 bytes), under GGUF tensor type id 200, which no real GGUF type uses."""

from mistralrs.registry import QuantTypeSpec, hookimpl

TYPE_ID = 200
BLOCK = 16


@hookimpl
def register_quant_types(register):
    register(QuantTypeSpec(
        name="TOY_Q8",
        ggml_type=TYPE_ID,
        block_size=BLOCK,
        type_size=2 + BLOCK,
        dequantize="mistralrs_toyquant.codec:dequantize",
        quantize="mistralrs_toyquant.codec:quantize",
        description="out-of-tree test type: f16 scale + 16 int8 per block",
    ))
