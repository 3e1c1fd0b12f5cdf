"""Tokenizers with llama.cpp's exact behaviour, chat templates and streaming detokenization."""

from .chat_template import DEFAULT_CHATML_TEMPLATE, ChatTemplateError, render_chat
from .detokenizer import IncrementalDetokenizer
from .gguf_vocab import tokenizer_from_gguf
from .hf_vocab import tokenizer_from_hf_dir
from .text_tokenizer import TextTokenizer, TokenizerError

__all__ = [
    "DEFAULT_CHATML_TEMPLATE",
    "ChatTemplateError",
    "IncrementalDetokenizer",
    "TextTokenizer",
    "TokenizerError",
    "render_chat",
    "tokenizer_from_gguf",
    "tokenizer_from_hf_dir",
]
