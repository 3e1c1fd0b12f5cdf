"""``task=chat``: one turn for ``prompt``, or an interactive multi-turn chat in the terminal."""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from .common import load_llm, stream_to_stdout

HELP = "Type a message and press Enter. /reset starts over, /exit (or Ctrl-D) quits."


def run(cfg: DictConfig) -> None:
    llm = load_llm(cfg)
    history: list[dict[str, str]] = [{"role": "system", "content": cfg.system}] if cfg.system else []
    if cfg.prompt:
        stream_to_stdout(llm.chat([*history, {"role": "user", "content": str(cfg.prompt)}], stream=True))
        print()
        return
    print(f"{llm.name} ready. {HELP}", file=sys.stderr)
    base = list(history)
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        if line.strip() in ("/exit", "/quit"):
            return
        if line.strip() == "/reset":
            history = list(base)
            continue
        if not line.strip():
            continue
        history.append({"role": "user", "content": line})
        reply = stream_to_stdout(llm.chat(history, stream=True))
        print()
        history.append({"role": "assistant", "content": reply})
