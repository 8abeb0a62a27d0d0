"""`fragment-llm generate / eval / export` on a tiny trained run: every README command as written,
and, end to end in subprocesses, streaming, stdin prompts, seeds and one-line errors."""

from __future__ import annotations

import io
import re
import shlex
import shutil

import pytest
from conftest import ROOT, run_cli, run_in_process

from fragment_llm.commands.main import main

TOOL_COMMAND = re.compile(
    r'^(?:echo "(?P<stdin>[^"]*)" \| )?fragment-llm (?P<args>(?:generate|eval|export) .*?)(?:\s+#.*)?$'
)


def readme_tool_commands() -> list[tuple[str | None, str]]:
    commands = []
    for line in (ROOT / "README.md").read_text().splitlines():
        match = TOOL_COMMAND.match(line.strip())
        if match:
            commands.append((match.group("stdin"), match.group("args")))
    return commands


def test_the_readme_shows_every_tool():
    used = {args.split()[0] for _, args in readme_tool_commands()}
    assert used == {"generate", "eval", "export"}
    assert any(stdin is not None for stdin, _ in readme_tool_commands())


@pytest.mark.parametrize("stdin,arguments", readme_tool_commands(), ids=lambda value: value or "")
def test_readme_tool_command_runs(stdin, arguments, trained_run, corpus, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copyfile(corpus, tmp_path / "held_out.txt")
    monkeypatch.setattr("sys.stdin", io.StringIO("" if stdin is None else stdin + "\n"))  # echo adds the newline
    argv = [word.replace("outputs/<run>", str(trained_run)) for word in shlex.split(arguments)]
    assert main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    samples = re.split(r"--- sample \d+/\d+ ---\n", out)
    if argv[0] == "generate" and "--prompt" in argv:
        assert all(sample.startswith(argv[argv.index("--prompt") + 1]) for sample in samples if sample)
    if "--num-samples" in argv:
        assert len(samples) == 1 + int(argv[argv.index("--num-samples") + 1])
    if stdin:
        assert out.startswith(stdin)
    if argv[0] == "eval":
        assert "Bits per byte: " in out and "Perplexity: " in out
    if argv[0] == "export":
        assert (tmp_path / argv[argv.index("--out") + 1] / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "arguments,needle",
    [
        (["generate", "{missing}"], "is not a directory"),
        (["generate", "{empty}"], "is not a run directory"),
        (["generate", "{run}", "--checkpoint", "{missing}"], "does not exist"),
        (
            ["generate", "{run}", "--temperature", "-1"],
            "argument --temperature: -1 is out of range; pass a value in [0.0, 100.0]",
        ),
        (["generate", "{run}", "--temperature", "nan"], "argument --temperature: nan is out of range"),
        (["generate", "{run}", "--seed", str(2**64)], "argument --seed: 18446744073709551616 is out of range"),
        (["generate", "{run}", "--top-p", "0"], "argument --top-p: 0 is out of range (0, 1]"),
        (["generate", "{run}", "--max-new-tokens", "x"], "argument --max-new-tokens: x is not an integer"),
        (["eval", "{run}", "--data", "{missing}"], "--data={missing} does not exist"),
        (["export", "{run}", "--format", "onnx", "--out", "x"], "argument --format: invalid choice: 'onnx'"),
    ],
)
def test_bad_input_is_one_line_and_a_non_zero_exit(arguments, needle, trained_run, tmp_path, capsys):
    values = {"run": str(trained_run), "missing": str(tmp_path / "missing"), "empty": str(tmp_path)}
    argv = [argument.format(**values) for argument in arguments]
    try:
        code = main(argv)
    except SystemExit as exit:  # argparse's errors exit from inside parse_args
        code = exit.code
    assert code != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert needle.format(**values) in err


@pytest.mark.slow
def test_generate_end_to_end_streams_seeds_and_reads_stdin(trained_run, tmp_path):
    command = ["-m", "fragment_llm", "generate", str(trained_run), "--max-new-tokens", "40", "--seed", "5"]
    first = run_cli([*command, "--prompt", "The"], cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("The") and len(first.stdout) > len("The\n")
    assert run_in_process([*command, "--prompt", "The"], cwd=tmp_path).stdout == first.stdout
    assert run_in_process([*command, "--prompt", "The", "--seed", "6"], cwd=tmp_path).stdout != first.stdout

    from_stdin = run_in_process(command, cwd=tmp_path, stdin="The\n")  # as from echo: the newline ends the input
    assert from_stdin.returncode == 0 and from_stdin.stdout == first.stdout
    interactive = run_in_process([*command, "--interactive"], cwd=tmp_path, stdin="The\nA list\n")
    assert interactive.returncode == 0, interactive.stderr
    assert interactive.stdout.count("> ") == 3  # two prompts answered, then end of input


@pytest.mark.slow
def test_a_bad_run_ends_with_one_line_and_no_traceback(tmp_path):
    result = run_cli(["-m", "fragment_llm", "eval", str(tmp_path)], cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr
