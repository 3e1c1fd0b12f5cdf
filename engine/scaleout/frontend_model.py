"""The model as the ingress's routes see it (``ServerState.llm``), without its weights.

The ingress tokenizes prompts, renders chat templates, builds grammars and formats logprobs itself,
so it needs the tokenizer, loaded here from the model files' metadata (a GGUF's header, an HF
directory's tokenizer files) at a small fraction of the model's memory, and no accelerator. What only a
loaded model knows (its context, vocabulary, adapters and the sampling defaults resolved against the
model file's recommendation) comes from the replicas' descriptions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from mistralrs.conf.schema import Config, ModelConfig
from mistralrs.engine.chat_prompts import ChatPrompts
from mistralrs.engine.loading.loader import load_tokenizer, open_checkpoint
from mistralrs.engine.loading.sources import resolve_source
from mistralrs.registry import registries

from mistralrs.engine.scaleout.errors import ScaleOutError
from mistralrs.engine.scaleout.wire import ReplicaDescription


def open_model_files(cfg: ModelConfig) -> tuple[Path, Any]:
    """The model's path and checkpoint (no weights read): a bad model.source fails before any Ray
    process starts."""
    path = resolve_source(cfg.source, sha256=cfg.sha256, revision=cfg.revision)
    return path, open_checkpoint(path, registries(), cfg)


class FrontendModel(ChatPrompts):
    def __init__(self, config: Config, files: tuple[Path, Any], descriptions: list[ReplicaDescription]):
        first = descriptions[0]
        shapes = sorted({(d.max_seq_len, d.vocab_size) for d in descriptions})
        if len(shapes) > 1:  # e.g. model.source naming different files on different nodes
            raise ScaleOutError(f"the replicas loaded different models ((context, vocabulary) {shapes}): "
                                f"model.source must be the same model on every node")
        path, ckpt = files
        # the local loader's checks, the vocabulary against the replicas' embeddings included
        self.tokenizer = load_tokenizer(config.model, ckpt, path, first.vocab_size)
        self.config = dataclasses.replace(config, sampling=first.sampling)
        self.name = config.model.name
        self.max_seq_len = first.max_seq_len
        self.vocab_size = first.vocab_size
        self.adapter_info = first.adapter_info
