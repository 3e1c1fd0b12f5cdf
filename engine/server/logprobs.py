"""Token logprobs in OpenAI's two shapes.

Chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}``.
Completions (legacy): ``{"tokens", "token_logprobs", "top_logprobs", "text_offset"}``, where each
``top_logprobs`` entry maps token text to logprob for the k best *and* the chosen token (so up to
k + 1 entries, as OpenAI documents), and ``None`` for a prompt's first token when echoing.
``text_offset`` counts characters of the returned ``text`` (the echoed prompt included).
"""

from __future__ import annotations

from typing import Any, Sequence

from mistralrs.engine.core.sequence import TokenLogprob


class LogprobFormatter:
    """``as_ids`` (vLLM's ``return_tokens_as_token_ids``) writes tokens as ``token_id:<id>``, so a
    client can recover exact ids even where a piece is not valid UTF-8 on its own."""

    def __init__(self, tokenizer: Any, as_ids: bool = False):
        self.tok = tokenizer
        self.as_ids = as_ids

    def piece(self, token: int) -> str:
        return f"token_id:{token}" if self.as_ids else self.tok.id_to_piece(token)

    # -- chat -------------------------------------------------------------------------------------
    def chat_entry(self, lp: TokenLogprob) -> dict:
        return {"token": self.piece(lp.token), "logprob": lp.logprob, "bytes": list(self.tok.id_to_bytes(lp.token)),
                "top_logprobs": [{"token": self.piece(t), "logprob": v, "bytes": list(self.tok.id_to_bytes(t))}
                                 for t, v in lp.top]}

    def chat(self, lps: Sequence[TokenLogprob]) -> dict:
        return {"content": [self.chat_entry(lp) for lp in lps]}

    # -- completions ------------------------------------------------------------------------------
    def completion(self, entries: Sequence[tuple[int, TokenLogprob | None]], offset: int = 0, text: str = "",
                   text_start: int = 0) -> tuple[dict, int]:
        """``entries``: (token id, its logprob or None) in text order, which produced ``text`` (starting
        at character ``text_start`` of the choice's text); returns the logprobs object and the text
        offset after the last token. A special token (BOS, EOS) takes no room unless ``text`` shows it."""
        tokens, token_logprobs, tops, offsets = [], [], [], []
        for token, lp in entries:
            piece, real = self.piece(token), self.tok.id_to_piece(token)
            tokens.append(piece)
            offsets.append(offset)
            if not self.tok.is_special(token) or text.startswith(real, offset - text_start):
                offset += len(real)
            if lp is None:
                token_logprobs.append(None)
                tops.append(None)
            else:
                token_logprobs.append(lp.logprob)
                top = {self.piece(t): v for t, v in lp.top}
                top.setdefault(piece, lp.logprob)
                tops.append(top)
        out = {"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": tops, "text_offset": offsets}
        return out, offset
