"""An ``llguidance.LLTokenizer`` for our :class:`TextTokenizer`, built once per tokenizer.

llguidance matches grammars against the bytes of each token, so it gets the tokenizer's pieces
(llama.cpp's ``token_to_piece``, the same bytes our detokenizer emits), the control tokens (never
allowed as text; only the end-of-generation ones, and only where the grammar may end) and our own
``encode`` for the few places it tokenizes text itself. Building the token trie takes ~0.15 s on a
49k vocabulary, more on 262k ones, hence the cache.
"""

from __future__ import annotations

import threading
import weakref

import llguidance

from mistralrs.engine.structured.errors import GrammarError
from mistralrs.engine.tokenizer.text_tokenizer import TextTokenizer

__all__ = ["lltokenizer_for"]

_cache: "weakref.WeakKeyDictionary[TextTokenizer, llguidance.LLTokenizer]" = weakref.WeakKeyDictionary()
_cache_lock = threading.Lock()


class _TextTokenizerView:
    """The attributes ``llguidance.TokenizerWrapper`` reads, taken from a TextTokenizer."""

    def __init__(self, tokenizer: TextTokenizer, eos_ids: list[int]):
        n = tokenizer.vocab_size
        # weak: the cache's value (which keeps this view) must not keep its own key alive
        self._tokenizer = weakref.ref(tokenizer)
        self.eos_token_id = eos_ids[0]
        self.bos_token_id = tokenizer.bos_id
        self.tokens = [tokenizer.id_to_bytes(i) for i in range(n)]
        self.special_token_ids = [i for i in range(n) if tokenizer.is_special(i)]

    def __call__(self, text: str | bytes) -> list[int]:
        # TokenizerWrapper probes with bytes; llguidance hands over valid UTF-8 only
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        tokenizer = self._tokenizer()
        if tokenizer is None:
            raise RuntimeError("the TextTokenizer behind this llguidance tokenizer is gone")
        return tokenizer.encode(text, add_special=False)


def _end_of_generation_ids(tokenizer: TextTokenizer) -> list[int]:
    ids = sorted(tokenizer.eog_ids | ({tokenizer.eos_id} if tokenizer.eos_id is not None else set()))
    if not ids:
        raise GrammarError("the tokenizer has no end-of-generation token: a constrained output could not end")
    # the primary EOS first: llguidance reports it as the tokenizer's eos_token
    if tokenizer.eos_id is not None:
        ids.remove(tokenizer.eos_id)
        ids.insert(0, tokenizer.eos_id)
    return ids


def lltokenizer_for(tokenizer: TextTokenizer) -> llguidance.LLTokenizer:
    """The (cached) llguidance tokenizer of ``tokenizer``; its EOS tokens are all the end-of-generation ids."""
    with _cache_lock:
        cached = _cache.get(tokenizer)
        if cached is None:
            eos_ids = _end_of_generation_ids(tokenizer)
            wrapper = llguidance.TokenizerWrapper(_TextTokenizerView(tokenizer, eos_ids))
            cached = _cache[tokenizer] = llguidance.LLTokenizer(wrapper, eos_token=eos_ids)
        return cached
