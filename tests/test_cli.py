"""The Hydra command line, run as a user would: real subprocesses on a tiny model."""

from __future__ import annotations

import json

import pytest

from cli_helpers import run_cli

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    from tiny_models import make_tiny_llama

    path = tmp_path_factory.mktemp("tiny") / "llama"
    make_tiny_llama(path)
    return path


def test_generate_streams_text_and_leaves_no_output_folders(tiny_dir, tmp_path):
    result = run_cli("task=generate", "model=llama", f"model.source={tiny_dir}", "prompt=hello",
                     "sampling.max_tokens=8", "sampling.temperature=0", "sampling.ignore_eos=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()  # random weights: some text, whatever it is
    assert list(tmp_path.iterdir()) == []  # no outputs/, .hydra/ or log files


def test_chat_one_turn_uses_a_template(tiny_dir, tmp_path):
    result = run_cli("task=chat", "model=llama", f"model.source={tiny_dir}", "prompt=hi",
                     "sampling.max_tokens=4", "sampling.temperature=0", cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_interactive_chat_reads_turns_until_eof(tiny_dir, tmp_path):
    result = run_cli("task=chat", "model=llama", f"model.source={tiny_dir}", "sampling.max_tokens=3",
                     "sampling.temperature=0", cwd=tmp_path, input="hello\n/reset\nagain\n")
    assert result.returncode == 0, result.stderr
    assert "ready" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["task=generate", "model=mistral", "prompt=x"], "model.source"),  # no default weights reachable
    (["task=generate", "model=llama", "model.source=/nonexistent/model.gguf", "prompt=x"], "no such file"),
    (["task=generate"], "needs a prompt"),
    (["task=nonsense"], "unknown task"),
    (["task=generate", "prompt=x", "model=llama", "model.source=/etc/hostname"], "not a recognized model"),
    (["task=generate", "prompt=x", "model=llama", "model.source=TEXT_GGUF"], "not a GGUF file: it starts with b'hell'"),
    (["task=generate", "prompt=x", "model=llama", "model.dtype=float64", "model.source=TINY"], "model.dtype"),
    (["task=generate", "prompt=x", "model=llama", "sampling.top_p=7", "model.source=TINY"], "top_p"),
])
def test_bad_input_gives_one_clear_line(tiny_dir, tmp_path, args, message):
    text_gguf = tmp_path / "x.gguf"
    text_gguf.write_text("hello, not a model")
    args = [a.replace("TINY", str(tiny_dir)).replace("TEXT_GGUF", str(text_gguf)) for a in args]
    result = run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_pickle_checkpoints_are_refused(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really")
    result = run_cli("task=generate", "model=llama", f"model.source={tmp_path / 'pytorch_model.bin'}", "prompt=x")
    assert result.returncode == 2 and "pickle" in result.stderr


def test_bench_multirun_writes_one_row_per_job(tiny_dir, tmp_path):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", "task=bench", "model=llama", f"model.source={tiny_dir}", "bench.prompt_tokens=16,32",
                     "bench.decode_tokens=4", "bench.repeats=1", "bench.warmup=0", f"hydra.sweep.dir={sweep}",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in (sweep / "bench.jsonl").read_text().splitlines()]
    assert sorted(r["prompt_tokens"] for r in rows) == [16, 32]
    for row in rows:
        assert row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0 and row["model"] == "llama"
    assert "decode" in result.stdout


def test_bench_grammar_reports_constrained_against_free_decoding(tiny_dir, tmp_path):
    out = tmp_path / "rows.jsonl"
    result = run_cli("task=bench", "model=llama", f"model.source={tiny_dir}", "model.dtype=float32",
                     "bench.prompt_tokens=16", "bench.decode_tokens=24", "bench.repeats=1", "bench.warmup=0",
                     "bench.grammar=json", f"bench.output={out}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = json.loads(out.read_text())
    assert row["grammar"] == "json" and row["constrained_decode_tok_s"] > 0 and row["constrained_vs_free"] > 0
    assert "under the json grammar" in result.stdout
    bad = run_cli("task=bench", "model=llama", f"model.source={tiny_dir}", "bench.grammar=xml", cwd=tmp_path)
    assert bad.returncode == 2 and "bench.grammar" in bad.stderr


def test_help_lists_groups():
    result = run_cli("--help")
    assert result.returncode == 0
    for group in ("model:", "quant:", "engine:", "sampling:", "serve:"):
        assert group in result.stdout
    assert "smollm2" in result.stdout


def test_version_and_help(tmp_path):
    from importlib.metadata import version

    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == f"mistralrs {version('mistralrs-py')}"
    help_text = run_cli("--help", cwd=tmp_path).stdout
    for task in ("serve", "chat", "generate", "bench", "report", "plugins"):
        assert f"\n  {task} " in help_text, task
    assert "mistralrs model=llama quant=q4_k serve.port=1234" in help_text  # the README's examples
    assert "model: gemma, gemma2, gemma3, llama" in help_text  # groups and their options
    assert "kv_cache_dtype: auto" in help_text and "max_tokens: 256" in help_text  # settings with defaults
    assert "Hydra" not in help_text.splitlines()[0]


@pytest.mark.parametrize("setting, named", [
    ("sampling.temperature=-1", "sampling.temperature=-1.0"),
    ("sampling.top_p=0", "sampling.top_p"),
    ("engine.kv_cache_dtype=int4", "engine.kv_cache_dtype='int4'"),
    ("model.dtype=float64", "model.dtype='float64'"),
    ("quant=q4_k quant.type=q9_z", "q9_z"),
])
@pytest.mark.parametrize("task", ["serve", "generate"])
def test_bad_values_fail_before_anything_loads(tmp_path, setting, named, task):
    """The source does not exist: an error about the setting, not the file, proves the check ran first."""
    result = run_cli(f"task={task}", "prompt=x", "model=llama", "model.source=/nonexistent/model.gguf",
                     *setting.split(), cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "nonexistent" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def _own_terminal() -> None:
    """In the child: a new session whose controlling terminal is the pty on stdin, so Ctrl-C typed
    there becomes SIGINT, as in a real terminal."""
    import fcntl
    import os
    import termios

    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_interactive_chat_in_a_terminal_ctrl_c_stops_the_reply(tmp_path, tmp_path_factory):
    """In a pty: Ctrl-C during a long reply returns to the prompt (the chat goes on), /help lists the
    commands, /system sets the system message, Ctrl-C twice at an empty prompt quits."""
    import os
    import pty
    import select
    import subprocess
    import sys
    import time

    from tiny_models import make_tiny_llama

    model = tmp_path_factory.mktemp("chat-pty") / "llama"
    make_tiny_llama(model, max_position_embeddings=2048)
    leader, follower = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "mistralrs.engine.cli", "task=chat", "model=llama",
                             f"model.source={model}", "sampling.max_tokens=2000", "sampling.ignore_eos=true",
                             "engine.threads=1"], stdin=follower, stdout=follower, stderr=follower, cwd=tmp_path,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"), preexec_fn=_own_terminal)
    os.close(follower)
    seen = b""

    def read_until(marker: bytes, timeout: float = 120) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while marker not in seen:
            assert time.monotonic() < deadline, seen[-400:]
            if select.select([leader], [], [], 0.1)[0]:
                seen += os.read(leader, 65536)

    def send(data: bytes) -> None:
        nonlocal seen
        seen = b""
        os.write(leader, data)

    def ctrl_c_at_prompt(expect: bytes | None) -> None:
        for _ in range(3):
            time.sleep(0.3)
            send(b"\x03")
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if expect is None and proc.poll() is not None:
                    return
                if expect is not None and expect in seen:
                    return
                if select.select([leader], [], [], 0.1)[0]:
                    try:
                        seen_more = os.read(leader, 65536)
                    except OSError:  # the chat exited and closed the terminal
                        seen_more = b""
                    add(seen_more)
        raise AssertionError(f"Ctrl-C at the prompt did nothing: {seen[-400:]!r}")

    def add(data: bytes) -> None:
        nonlocal seen
        seen += data

    try:
        read_until(b"> ", timeout=600)  # a fresh machine compiles the kernels first
        send(b"/help\n")
        read_until(b"/system <text>")
        read_until(b"> ")
        send(b"/system Be brief.\n")
        read_until(b"system message set")
        read_until(b"> ")
        send(b"tell me a long story\n")
        read_until(b"story\r\n")  # the echoed line
        # The reply has started streaming: readline may redisplay the line (ending in the same
        # "story\r\n") after the terminal's own echo, so count only what follows the last copy, and
        # more bytes than a redisplay holds.
        while len(seen.rsplit(b"story\r\n", 1)[1]) < 64:
            if select.select([leader], [], [], 0.05)[0]:
                seen += os.read(leader, 65536)
        os.write(leader, b"\x03")  # Ctrl-C: the terminal sends SIGINT to the chat
        read_until(b" [stopped]\r\n> ")
        assert proc.poll() is None  # still chatting
        # Ctrl-C at the prompt. A SIGINT landing after readline prints "> " but before it waits for
        # input is noticed only with the next signal (CPython's readline loop), so give it a moment
        # and send again if nothing happened: a person pressing Ctrl-C cannot hit that window.
        ctrl_c_at_prompt(b"to quit)\r\n> ")  # the hint, then the prompt again
        ctrl_c_at_prompt(None)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(leader)
    assert b"Traceback" not in seen


def test_served_bench_drives_our_server_through_the_openai_client(tiny_dir, tmp_path):
    """bench.mode=served: our server in a subprocess, 1 and 2 concurrent streams, TTFT and peak RSS,
    one JSONL row per stream count; a missing llama-server is one clear line."""
    out = tmp_path / "rows.jsonl"
    result = run_cli("task=bench", "bench.mode=served", "model=llama", f"model.source={tiny_dir}",
                     "model.dtype=float32", "bench.streams=[1,2]", "bench.decode_tokens=8", "bench.prompt_tokens=16",
                     "bench.repeats=1", "bench.warmup=0", f"bench.output={out}", cwd=tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["engine"], r["mode"], r["streams"]) for r in rows] == [("mistralrs-py", "served", 1),
                                                                        ("mistralrs-py", "served", 2)]
    assert all(r["decode_tok_s"] > 0 and r["ttft_s"] > 0 and r["peak_rss_mb"] > 0 for r in rows)
    # one server through the sweep, fewest streams first: each row's peak covers the loads before it
    assert rows[0]["peak_rss_mb"] <= rows[1]["peak_rss_mb"]
    missing = run_cli("task=bench", "bench.mode=served", "model=llama", f"model.source={tiny_dir}",
                      "bench.streams=[1]", "bench.decode_tokens=4", "bench.prompt_tokens=16", "bench.repeats=1",
                      "bench.warmup=0",
                      "bench.peers=[llama-server]", f"bench.llama_cpp_bin={tmp_path / 'nowhere'}", cwd=tmp_path,
                      timeout=600)
    assert missing.returncode == 2 and "no llama-server at" in missing.stderr and "Traceback" not in missing.stderr
