"""mistralrs: a fast, plugin-driven LLM inference platform.

``mistralrs.load("model=smollm2", "model.dtype=float32")`` takes the CLI's Hydra overrides and
returns a loaded model (see ``mistralrs.engine.api.LLM``). Importing this package is cheap: torch
is imported only when a model is loaded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mistralrs.engine.api import LLM


def load(*overrides: str, **kwargs: Any) -> "LLM":
    """Load a model from Hydra overrides, e.g. ``load("model=llama", "model.source=/x.gguf")``."""
    from mistralrs.engine.api import load as _load

    return _load(*overrides, **kwargs)


__all__ = ["load", "__version__"]
