"""The ``mistralrs`` command (Hydra) and its tasks (serve, chat, generate, bench, report, plugins)."""

from mistralrs.engine.cli.main import main

__all__ = ["main"]
