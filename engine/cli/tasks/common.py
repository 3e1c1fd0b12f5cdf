"""Helpers the CLI tasks share."""

from __future__ import annotations

import sys
from typing import Iterable

from omegaconf import DictConfig


def load_llm(cfg: DictConfig):
    from mistralrs.engine.api import LLM

    return LLM.from_config(cfg)


def stream_to_stdout(pieces: Iterable[str]) -> str:
    text = []
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
        text.append(piece)
    return "".join(text)
