"""``task=chat``: one turn for ``prompt``, or an interactive multi-turn chat in the terminal.

Interactive: line editing and history (readline), Ctrl-C stops the reply being generated and returns to
the prompt (at an empty prompt, a second Ctrl-C quits), and the commands in ``COMMANDS``.
"""

from __future__ import annotations

import sys

from omegaconf import DictConfig

from mistralrs.engine.cli.tasks.common import load_llm, stream_to_stdout

COMMANDS = {
    "/help": "this list",
    "/clear": "forget the conversation (the system message stays)",
    "/system <text>": "set the system message (and start over)",
    "/exit": "quit (also Ctrl-D, or Ctrl-C twice at an empty prompt)",
}
HELP = "Type a message and press Enter; /help lists the commands."


def _enable_line_editing() -> None:
    if sys.stdin.isatty():
        import readline  # noqa: F401 - importing it gives input() editing and history


def run(cfg: DictConfig) -> None:
    llm = load_llm(cfg)
    system = str(cfg.system) if cfg.system else None
    if cfg.prompt:
        stream_to_stdout(llm.chat([*_system(system), {"role": "user", "content": str(cfg.prompt)}], stream=True))
        print()
        return
    _enable_line_editing()
    print(f"{llm.name} ready. {HELP}", file=sys.stderr)
    history: list[dict[str, str]] = []
    interrupted = False  # the previous prompt ended with Ctrl-C
    while True:
        try:
            line = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            if interrupted:
                print(file=sys.stderr)
                return
            interrupted = True
            print("\n(Ctrl-C again or /exit to quit)", file=sys.stderr)
            continue
        interrupted = False
        text = line.strip()
        if text in ("/exit", "/quit"):
            return
        if text == "/help":
            print("\n".join(f"  {name:<16} {what}" for name, what in COMMANDS.items()), file=sys.stderr)
            continue
        if text in ("/clear", "/reset"):
            history = []
            continue
        if text == "/system" or text.startswith("/system "):
            system = text.removeprefix("/system").strip() or None
            history = []
            print(f"system message {'set' if system else 'cleared'}; conversation cleared", file=sys.stderr)
            continue
        if text.startswith("/"):
            print(f"unknown command {text.split()[0]}; /help lists them", file=sys.stderr)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": line})
        pieces: list[str] = []
        try:
            for piece in llm.chat([*_system(system), *history], stream=True):
                sys.stdout.write(piece)
                sys.stdout.flush()
                pieces.append(piece)
        except KeyboardInterrupt:  # stop this reply (closing the stream frees its sequence), keep the chat
            print(" [stopped]", end="", file=sys.stderr)
        print()
        history.append({"role": "assistant", "content": "".join(pieces)})


def _system(system: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}] if system else []
