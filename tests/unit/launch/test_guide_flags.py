"""The training guide's command line (launch/guide_flags.py): every flag of the guide, alone and in the
guide's own commands, is one line naming the key to write and the whole command in keys, which runs."""

from __future__ import annotations

import shlex

import pytest
from helpers import RUN, run_in_process, settings_for

from fragment_llm.launch.guide_flags import in_keys

# The guide's "Configuration Options", each flag with its example value, and the key it is.
GUIDE_FLAGS = [
    ("--vocab-size 10000", "model.vocab_size=10000"),
    ("--block-size 512", "model.block_size=512"),
    ("--n-layer 6", "model.n_layer=6"),
    ("--n-head 6", "model.n_head=6"),
    ("--n-embd 384", "model.n_embd=384"),
    ("--dropout 0.1", "model.dropout=0.1"),
    ("--batch-size 16", "train.batch_size=16"),
    ("--grad-accum-steps 4", "train.grad_accum_steps=4"),
    ("--learning-rate 3e-4", "optimizer.lr=3e-4"),
    ("--epochs 10", "train.epochs=10"),
    ("--max-iters 10000", "train.max_iters=10000"),
    ("--use-amp", "hardware.amp=true"),
    ("--no-amp", "hardware.amp=false"),
    ("--retrain-tokenizer", "tokenizer.retrain=true"),
    ("--use-wandb", "logging.wandb=true"),
]
# The guide's commands for its three machines.
GUIDE_COMMANDS = [
    "--batch-size 4 --grad-accum-steps 16 --n-layer 4 --n-head 4 --n-embd 256 --block-size 256 --epochs 5",
    "--batch-size 16 --grad-accum-steps 4 --n-layer 6 --n-head 6 --n-embd 384 --block-size 512 --epochs 10 --use-amp",
    "--batch-size 32 --grad-accum-steps 2 --n-layer 12 --n-head 12 --n-embd 768 --block-size 1024 --epochs 20 "
    "--use-amp --use-wandb",
]


def refused(arguments: list[str], cwd) -> str:
    """run.py's one error line for `arguments`; nothing was written."""
    result = run_in_process([RUN, *arguments], cwd)
    assert result.returncode == 2 and result.stdout == "" and list(cwd.iterdir()) == [], result
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: training takes keys (key=value), not the training guide")
    return lines[0]


@pytest.mark.parametrize("flag, key", GUIDE_FLAGS, ids=[flag for flag, _ in GUIDE_FLAGS])
def test_each_flag_of_the_guide_is_one_line_naming_its_key(tmp_path, flag, key):
    line = refused(shlex.split(flag), tmp_path)
    assert f"{flag} is {key};" in line and line.endswith(f"the command in keys: python run.py {key}")
    settings_for(["model=small", key])  # the key composes and validates (with 6 heads a model 384 wide)


@pytest.mark.parametrize("command", GUIDE_COMMANDS, ids=["low-end", "mid-range", "high-end"])
def test_the_guides_commands_are_given_back_in_keys_that_run(tmp_path, command):
    line = refused(shlex.split(command), tmp_path)
    rewritten = shlex.split(line.split("the command in keys: python run.py ")[1])
    assert rewritten == in_keys(shlex.split(command))[0] and not any(word.startswith("--") for word in rewritten)
    settings_for(rewritten)


def test_the_flags_forms_and_the_rest_of_the_command_line(tmp_path):
    assert in_keys(["--epochs=10", "model=small", "--use-wandb"]) == (
        ["train.epochs=10", "model=small", "logging.wandb=true"],
        [("--epochs=10", "train.epochs=10"), ("--use-wandb", "logging.wandb=true")],
    )
    assert in_keys(["--epochs", "--use-amp"])[0] == ["train.epochs=VALUE", "hardware.amp=true"]  # a value left out
    assert in_keys(["-m", "optimizer.lr=1e-3,3e-4", "--cfg", "job"]) == (
        ["-m", "optimizer.lr=1e-3,3e-4", "--cfg", "job"],
        [],
    )
    line = run_in_process(["-m", "fragment_llm", "train", "--epochs", "3"], tmp_path).stderr
    assert line.endswith("the command in keys: fragment-llm train train.epochs=3\n")
