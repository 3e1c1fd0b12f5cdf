"""Errors of the Ray backend."""

from __future__ import annotations


class ScaleOutError(ValueError):
    """Something the user can act on (Ray missing, too few CPUs, a replica failing to start): the CLI
    prints its message as one line."""


RAY_MISSING = "serve.backend=ray needs Ray Serve, an optional extra: pip install 'mistralrs-py[ray]'"
