"""Sampling under a grammar's masks from random logits, for tests of constrained decoding."""

from __future__ import annotations

import pytest
import torch

from mistralrs.engine.structured import BatchMasker, GrammarState
from mistralrs.engine.tokenizer import TextTokenizer

# Model vocabularies are often padded past the tokenizer's (to a multiple of 64/128): logits wider than
# the tokenizer; 45 is not a multiple of 32, so the padding also straddles a bitmask word.
PADDING = 45


def sample_until_finished(grammar, tok: TextTokenizer, seed: int, max_steps: int = 3000) -> str:
    """Sample from uniform random logits (padded past the vocabulary) under the grammar's mask until
    the grammar is complete or an end-of-generation token is drawn; the generated text."""
    state = GrammarState(grammar, tok)
    masker = BatchMasker(tok)
    gen = torch.Generator().manual_seed(seed)
    ids: list[int] = []
    for _ in range(max_steps):
        logits = torch.rand((1, tok.vocab_size + PADDING), generator=gen)
        masker.apply(logits, [state])
        # a draw from softmax(logits) by the Gumbel-max trick (torch.multinomial is ~1.5 ms at 49k)
        gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=gen)))
        token = int((logits + gumbel).argmax())
        assert token < tok.vocab_size, "a padding id was sampled"
        state.advance(token)
        if token in tok.eog_ids:
            break
        ids.append(token)
        if state.is_finished():
            break
    else:
        pytest.fail(f"no end after {max_steps} tokens: {tok.decode(ids)[:200]!r}...")
    assert state.is_accepting()
    return tok.decode(ids)
