"""The one rule for how many tokens a completion may take: the prompt plus ``max_tokens`` must fit in
the model's context window.

Callers that know what the user asked for (the server, the Python API) pick ``max_tokens`` with
:func:`completion_budget`; the engine alone enforces the rule, in :func:`check_fits`, when a request
is added. So every request is checked once, and every caller refuses an overflow with the same
:class:`ContextLengthExceeded` (the server answers 400 ``context_length_exceeded``).
"""

from __future__ import annotations


class ContextLengthExceeded(ValueError):
    """The prompt and the completion do not fit (in the context window, or in the KV cache).

    The message may name the field to lower as ``{max_tokens}``: ``str()`` says ``max_tokens``, and
    :meth:`naming` lets a server say its request's own field (chat's ``max_completion_tokens``)."""

    def __init__(self, template: str):
        self.template = template
        super().__init__(self.naming("max_tokens"))

    def naming(self, max_tokens_field: str) -> str:
        return self.template.format(max_tokens=max_tokens_field)


def completion_budget(prompt_tokens: int, max_seq_len: int, requested: int | None, default: int) -> int:
    """The ``max_tokens`` a prompt gets: what was asked for, as asked (an overflow is then refused,
    not silently cut), else ``default`` capped by the room left after the prompt. At least 1, so a
    prompt that fills the context alone reaches :func:`check_fits` and is refused there."""
    if requested is not None:
        return requested
    return max(1, min(default, max_seq_len - prompt_tokens))


def check_fits(prompt_tokens: int, max_tokens: int, max_seq_len: int) -> None:
    """Raise :class:`ContextLengthExceeded` (in OpenAI's words) unless prompt + max_tokens fit."""
    if prompt_tokens >= max_seq_len:
        raise ContextLengthExceeded(
            f"this model's maximum context length is {max_seq_len} tokens, but the prompt has "
            f"{prompt_tokens} tokens, leaving no room for a completion")
    if prompt_tokens + max_tokens > max_seq_len:
        raise ContextLengthExceeded(
            f"this model's maximum context length is {max_seq_len} tokens; you requested "
            f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
            f"completion). Please shorten the prompt or reduce {{max_tokens}}.")
