"""``task=generate``: complete ``prompt`` as raw text (no chat template), streamed to stdout."""

from __future__ import annotations

from omegaconf import DictConfig

from mistralrs.engine.cli.tasks.common import load_llm, stream_to_stdout


def run(cfg: DictConfig) -> None:
    if not cfg.prompt:
        raise ValueError('task=generate needs a prompt, e.g. prompt="The three primary colors are"')
    llm = load_llm(cfg)
    stream_to_stdout(llm.generate(str(cfg.prompt), stream=True))
    print()
