"""``mistralrs``: the Hydra command line.

    mistralrs task=chat prompt="Hi"                    # one chat turn (no prompt: interactive)
    mistralrs task=generate prompt="Once upon a time"  # raw completion
    mistralrs task=bench                               # prompt and decode tokens/s
    mistralrs task=plugins                             # what is registered, by whom
    mistralrs -m task=bench model=smollm2 sampling.max_tokens=64,128   # a sweep
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from mistralrs.engine.config import register_configs
from mistralrs.engine.errors import user_facing

TASKS = {
    "serve": "mistralrs.engine.cli.tasks.serve:run",
    "chat": "mistralrs.engine.cli.tasks.chat:run",
    "generate": "mistralrs.engine.cli.tasks.generate:run",
    "bench": "mistralrs.engine.cli.tasks.bench:run",
    "report": "mistralrs.engine.cli.tasks.report:run",
    "plugins": "mistralrs.engine.cli.tasks.plugins:run",
}


def run_task(cfg: DictConfig) -> None:
    from mistralrs.registry import resolve

    from mistralrs.engine.config import to_schema, validate_config

    logging.basicConfig(level=str(cfg.get("log_level", "WARNING")).upper(), stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    task = cfg.task
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
    if task not in ("plugins", "report"):  # those load no model
        validate_config(to_schema(cfg))
    resolve(TASKS[task])(cfg)


@hydra.main(version_base="1.3", config_path="pkg://mistralrs.conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run_task(cfg)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except Exception as exc:
        _exit_if_user_facing(exc)
        raise


def _exit_if_user_facing(exc: Exception) -> None:
    """A user's mistake (bad config, missing file) is one line and exit code 2; anything else is a bug
    and keeps its traceback."""
    message = user_facing(exc)
    if message is not None:
        print(f"mistralrs: error: {message}", file=sys.stderr)
        sys.exit(2)


def version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return f"mistralrs {dist_version('mistralrs-py')}"
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "mistralrs (not installed)"


def main() -> None:
    if any(arg in ("--version", "-V") for arg in sys.argv[1:]):
        print(version())
        return
    strict = any(arg in ("engine.strict_plugins=true", "engine.strict_plugins=True") for arg in sys.argv[1:])
    from mistralrs.engine.quant.quantize_types import quote_width_overrides

    sys.argv[1:] = quote_width_overrides(sys.argv[1:])  # `quant=4` selects the preset named "4"
    try:
        register_configs(strict_plugins=strict)
    except Exception as exc:
        _exit_if_user_facing(exc)
        raise
    _hydra_main()


if __name__ == "__main__":
    main()
