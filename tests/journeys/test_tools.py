"""The tools on a trained run (`fragment-llm generate / eval / export`): every README command as written,
bad input in one line, the best model by name; and, end to end in subprocesses, streaming, stdin
prompts and seeds, a full disk, and output into a closed pipe ending quietly."""

from __future__ import annotations

import io
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys

import pytest
from helpers import ROOT, RUN, assert_one_error_line, copy_run, run_cli, run_in_process, tiny_overrides

from fragment_llm.commands.main import main
from fragment_llm.runs.paths import RunPaths
from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import load_checkpoint
from fragment_llm.train.from_run import load_run

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


def test_the_tools_take_checkpoint_best(tmp_path, corpus):
    keys = {"train.max_iters": 20, "train.eval_interval": 5}
    run = run_in_process(
        [RUN, *tiny_overrides(tmp_path, corpus, **keys), f"hydra.run.dir={tmp_path / 'run'}"], cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr
    step = read_summary(tmp_path / "run")["best_step"]
    assert load_run(tmp_path / "run", "best").checkpoint_path == tmp_path / "run" / RunPaths.BEST_MODEL
    result = run_in_process(["-m", "fragment_llm", "eval", str(tmp_path / "run"), "--checkpoint", "best"], cwd=tmp_path)
    assert result.returncode == 0 and "best_model.pt" in result.stdout
    assert load_checkpoint(tmp_path / "run" / RunPaths.BEST_MODEL)["step"] == step


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


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["hf", "safetensors"])
def test_an_export_onto_a_full_disk_is_one_error_line_and_leaves_nothing(export_format, trained_run, tmp_path):
    def full_disk():  # files stop growing at 20 kB (Python ignores SIGXFSZ: writes fail with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "exported"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "fragment_llm",
            "export",
            str(trained_run),
            "--format",
            export_format,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        preexec_fn=full_disk,
    )
    assert_one_error_line(result.returncode, result.stderr, f"could not export to {out}: ", "File too large")
    assert list(out.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "command",
    [["runs", "{root}"], ["runs", "{root}", "--json"], ["generate", "{run}", "--prompt", "The"]],
    ids=lambda command: " ".join(command[:3]),
)
def test_output_into_a_closed_pipe_ends_quietly(command, trained_run, tmp_path):
    run = copy_run(trained_run, tmp_path)
    reader, writer = os.pipe()
    os.close(reader)  # the reader is gone before the first write, as after `| head -1` has its line
    argv = [word.format(root=tmp_path, run=run) for word in command]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-m", "fragment_llm", *argv],
        stdout=writer,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=300,
    )
    os.close(writer)
    assert result.stderr == "" and result.returncode == 1


@pytest.mark.slow
def test_generate_into_head_ends_quietly(trained_run, tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    command = [
        sys.executable,
        "-m",
        "fragment_llm",
        "generate",
        str(trained_run),
        "--prompt",
        "The",
        "--num-samples",
        "1000",
        "--max-new-tokens",
        "100",
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path, env=env)
    process.stdout.readline()
    process.stdout.close()  # as `head -1` does once it has its line
    stderr = process.stderr.read().decode()
    assert process.wait(timeout=300) in (0, 1)
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
