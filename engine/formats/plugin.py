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
        name="ggml",
        detect="mistralrs.engine.formats.ggml_file:detect",
        open="mistralrs.engine.formats.ggml_file:open_ggml",
        description="legacy GGML llama files: ggml, ggmf v1, ggjt v1-v3 (options model.gqa, rope_freq_base, rms_norm_eps)",
    ))
    register(FormatSpec(
        name="safetensors",
        detect="mistralrs.engine.formats.safetensors_dir:detect",
        open="mistralrs.engine.formats.safetensors_dir:open_safetensors",
        description="HF model directory: config.json + *.safetensors",
    ))
