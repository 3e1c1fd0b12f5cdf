"""Tokenizers with llama.cpp's exact behaviour, chat templates and streaming detokenization."""

from mistralrs.engine.tokenizer.chat_template import DEFAULT_CHATML_TEMPLATE, ChatTemplateError, render_chat
from mistralrs.engine.tokenizer.detokenizer import IncrementalDetokenizer
from mistralrs.engine.tokenizer.gguf_vocab import tokenizer_from_gguf
from mistralrs.engine.tokenizer.hf_vocab import tokenizer_from_hf_dir
from mistralrs.engine.tokenizer.text_tokenizer import TextTokenizer, TokenizerError

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
