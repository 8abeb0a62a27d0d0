"""Chatting with a run in a terminal and through a pipe, as processes: Ctrl-C in a real terminal (a
pseudo-terminal) stops the answer being written and the chat goes on; a piped message is answered and
the command ends."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

import pytest
from helpers import ROOT, chatterbox_run, run_cli


def read_until(terminal: int, wanted: str | tuple[str, ...], seen: str = "", timeout: float = 180) -> str:
    """What the terminal shows until `wanted` (or one of them) appears: all of it, `seen` first."""
    deadline = time.time() + timeout
    while not any(text in seen for text in ((wanted,) if isinstance(wanted, str) else wanted)):
        ready, _, _ = select.select([terminal], [], [], max(0.0, deadline - time.time()))
        if not ready:
            raise AssertionError(f"{wanted!r} never came; the terminal shows: {seen[-2000:]!r}")
        seen += os.read(terminal, 65536).decode("utf-8", "replace")
    return seen


def in_terminal(command: list[str], cwd) -> tuple[subprocess.Popen, int]:
    """`command` with a new pseudo-terminal as its controlling terminal, standard streams and all."""
    import fcntl
    import termios

    terminal, child = os.openpty()

    def take_the_terminal() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="200")
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdin=child, stdout=child, stderr=child, preexec_fn=take_the_terminal
    )
    os.close(child)
    return process, terminal


@pytest.mark.slow
def test_ctrl_c_stops_the_answer_and_the_chat_goes_on(trained_run, tmp_path):
    run = chatterbox_run(trained_run, tmp_path)  # greedy, it never ends an answer on its own
    command = [sys.executable, "-m", "fragment_llm", "chat", str(run), "--temperature", "0", "--max-new-tokens"]
    process, terminal = in_terminal([*command, "100000000"], tmp_path)
    try:
        shown = read_until(terminal, "> ", read_until(terminal, "Ctrl-C stops an answer"))
        for _ in range(2):  # twice: the chat is still there after the first
            os.write(terminal, b"Talk to me\n")
            shown = read_until(terminal, ("a" * 500, "b" * 500), shown)  # well into an endless answer
            os.write(terminal, b"\x03")  # Ctrl-C, as the terminal sends it: SIGINT to the foreground
            shown = read_until(terminal, " [stopped]\r\n> ", shown)
            shown = shown[shown.rindex("> ") :]
        os.write(terminal, b"/quit\n")
        assert process.wait(timeout=60) == 0
    finally:
        process.kill()
        process.wait()
        os.close(terminal)


@pytest.mark.slow
def test_a_piped_message_is_answered_and_the_chat_ends(trained_run, tmp_path):
    run = chatterbox_run(trained_run, tmp_path)
    arguments = ["-m", "fragment_llm", "chat", str(run), "--temperature", "0", "--max-new-tokens", "30"]
    result = run_cli(arguments, tmp_path, stdin="What is a list?\n")
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout in ("a" * 30 + "\n", "b" * 30 + "\n")  # the chatterbox's words, to --max-new-tokens
