"""Built-in weight formats, registered through the ``mistralrs`` entry point like any plugin."""

from mistralrs.registry import FormatSpec, hookimpl


@hookimpl
def register_formats(register):
    register(FormatSpec(
        name="gguf",
        detect="mistralrs.engine.formats.gguf_file:detect",
        open="mistralrs.engine.formats.gguf_file:open_gguf",
        description="GGUF v2/v3 (llama.cpp), memory-mapped",
    ))
    register(FormatSpec(
        name="safetensors",
        detect="mistralrs.engine.formats.safetensors_dir:detect",
        open="mistralrs.engine.formats.safetensors_dir:open_safetensors",
        description="HF model directory: config.json + *.safetensors",
    ))
