"""The Llama family: the engine's Llama-shaped base as it is (the other families subclass it)."""

from mistralrs.engine.llama_base.family import LlamaFamily

family = LlamaFamily()
