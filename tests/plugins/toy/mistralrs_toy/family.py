from mistralrs.engine.llama_base.family import LlamaFamily


class ToyFamily(LlamaFamily):
    name = "toy"


family = ToyFamily()
