"""Errors a user can act on: the CLI prints their message, not a traceback."""

from __future__ import annotations

from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from mistralrs.registry import RegistryError

from mistralrs.engine.formats.errors import ModelFileError


def user_facing(exc: BaseException) -> str | None:
    """The message to show for an expected error, or None for a genuine bug."""
    if isinstance(exc, MissingMandatoryValue):
        key = getattr(exc, "full_key", "") or "a required setting"
        hint = " (e.g. model.source=/path/to/model.gguf)" if key == "model.source" else ""
        return f"missing value for {key}{hint}"
    if isinstance(exc, OmegaConfBaseException):
        return f"bad configuration: {exc}"
    if isinstance(exc, (ModelFileError, RegistryError, ValueError, FileNotFoundError, PermissionError)):
        return str(exc)
    return None
