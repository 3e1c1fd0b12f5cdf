"""The Llama-shaped base every transformer family builds on (config parsing, module, GGUF and HF
weight names, and the family object the loader drives). It lives on the engine side so that no plugin
imports another: Llama, Mistral, Mixtral and Gemma all subclass what is here."""
