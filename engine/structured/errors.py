"""The two ways constrained decoding fails: a request's grammar we cannot use, and a token the grammar forbids."""

from __future__ import annotations

__all__ = ["GrammarError", "TokenNotAllowed"]


class GrammarError(ValueError):
    """The request's structured-output spec cannot be used: unsupported JSON-schema keyword, invalid
    regex / Lark syntax, a grammar over the size limits...  The message names the problem and is meant
    for the client (an HTTP 400)."""


class TokenNotAllowed(RuntimeError):
    """A token was fed to a grammar that its mask forbade: the sampler did not apply the mask.
    The grammar state is left as it was before the token."""

    def __init__(self, token_id: int, piece: bytes):
        super().__init__(f"token {token_id} ({piece!r}) is not allowed by the grammar here")
        self.token_id = token_id
