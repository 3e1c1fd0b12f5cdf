from mistralrs.plugins.llama.family import LlamaFamily


class ToyFamily(LlamaFamily):
    name = "toy"


family = ToyFamily()
