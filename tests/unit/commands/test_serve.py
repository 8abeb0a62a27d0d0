"""`fragment-llm serve` (commands/serve.py) in this process: without FastAPI it is one line naming the
extra, a port in use is one error line, and --bench measures streaming clients of a real server process.
The server as a process, with OpenAI's client: journeys/test_serve.py."""

from __future__ import annotations

import re
import socket
import sys

from helpers import assert_one_error_line, call

from fragment_llm.serve.bench import ROUNDS


def test_without_fastapi_or_uvicorn_it_names_the_extra(trained_run, capsys, monkeypatch):
    for missing in ("fastapi", "uvicorn"):
        monkeypatch.setitem(sys.modules, missing, None)  # what `import` finds for a package not installed
        code, _, err = call(["serve", trained_run], capsys)
        assert_one_error_line(code, err, "pip install 'fragment-llm[serve]'")
        monkeypatch.undo()


def test_a_port_in_use_is_one_error_line(trained_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = call(["serve", trained_run, "--port", port], capsys)
    assert_one_error_line(code, err, f"cannot listen on 127.0.0.1:{port}", "--port 0")


def test_bench_streams_with_each_count_of_clients(trained_run, capsys):
    code, out, _ = call(["serve", trained_run, "--bench", "1,3", "--bench-tokens", "8"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert [line.split(" streaming")[0] for line in lines] == ["1 client", "3 clients"]
    for line, clients in zip(lines, (1, 3)):
        tokens = int(re.search(r"at once: (\d+) tokens", line).group(1))
        assert 0 < tokens <= 8 * clients * ROUNDS and "tokens/s in all" in line  # each client's ROUNDS answers


def test_bench_counts_must_be_client_counts(trained_run, capsys):
    code, _, err = call(["serve", trained_run, "--bench", "1,0"], capsys)
    assert_one_error_line(code, err, "give client counts such as 1,8")
