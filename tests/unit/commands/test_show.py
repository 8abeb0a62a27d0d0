"""`fragment-llm show` (commands/show.py): the command that trains the run again, from any install."""

from __future__ import annotations

import shlex

from helpers import call, write_run


def test_show_gives_the_command_that_trains_the_run_again_from_any_install(tmp_path, capsys):
    overrides = ["hparams_search=optuna", "optimizer.lr=0.003", "data.path=my notes/it's.txt"]
    run = write_run(tmp_path / "0", overrides, {"status": "completed", "steps": 60})
    code, out, err = call(["show", run], capsys)
    assert code == 0, err
    command = next(line for line in out.splitlines() if line.startswith("Reproduce: "))
    # The installed command, not run.py (a wheel has none); the search that chose the values left out.
    assert shlex.split(command.removeprefix("Reproduce: ")) == ["fragment-llm", "train", *overrides[1:]]
