"""The training guide's command line (`python train.py --epochs 10 --use-wandb`) in keys.

run.py takes `key=value` overrides only, so each of the guide's flags is answered with the key to
write, in one line that also gives the whole command rewritten, before Hydra would print its bare usage
text. They are not taken as aliases: every setting has one spelling, the one a run records (its
overrides, `fragment-llm show`'s command that trains it again, a sweep's `-m train.epochs=5,10`), and
two of the guide's flags mean other things here (`--use-amp` is the guide's default, not ours on a CPU,
where bf16 is emulated; the ranges of `--block-size` differ).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Optional

from ..config.schema import ConfigError

# The guide's flags that take a value, and the key each sets.
VALUE_FLAGS = {
    "--vocab-size": "model.vocab_size",
    "--block-size": "model.block_size",
    "--n-layer": "model.n_layer",
    "--n-head": "model.n_head",
    "--n-embd": "model.n_embd",
    "--dropout": "model.dropout",
    "--batch-size": "train.batch_size",
    "--grad-accum-steps": "train.grad_accum_steps",
    "--learning-rate": "optimizer.lr",
    "--epochs": "train.epochs",
    "--max-iters": "train.max_iters",
}
# The guide's switches, and the override each stands for.
SWITCHES = {
    "--use-amp": "hardware.amp=true",
    "--no-amp": "hardware.amp=false",
    "--retrain-tokenizer": "tokenizer.retrain=true",
    "--use-wandb": "logging.wandb=true",
}


def in_keys(argv: list[str]) -> tuple[list[str], list[tuple[str, str]]]:
    """`argv` with each of the guide's flags (`--epochs 10`, `--epochs=10`, `--use-wandb`) replaced by its
    override, and what each flag was and became."""
    rewritten, found, position = [], [], 0
    while position < len(argv):
        argument = argv[position]
        position += 1
        flag, has_value, value = argument.partition("=")
        if flag in VALUE_FLAGS:
            if not has_value:
                takes_next = position < len(argv) and not argv[position].startswith("--")
                value = argv[position] if takes_next else "VALUE"
                position += takes_next
            given = f"{flag}={value}" if has_value else flag if value == "VALUE" else f"{flag} {value}"
            override = f"{VALUE_FLAGS[flag]}={value}"
        elif argument in SWITCHES:
            given, override = argument, SWITCHES[argument]
        else:
            rewritten.append(argument)
            continue
        rewritten.append(override)
        found.append((given, override))
    return rewritten, found


def check_guide_flags(argv: list[str], program: Optional[str] = None) -> None:
    """Refuse the guide's flags in one ConfigError line: each flag and its key, and the command rewritten
    (`program`: how the command was called; run.py's own name by default)."""
    rewritten, found = in_keys(argv)
    if not found:
        return
    program = program or "python run.py"
    said = ", ".join(f"{given} is {override}" for given, override in found)
    raise ConfigError(
        f"training takes keys (key=value), not the training guide's flags: {said}; the command in keys: "
        f"{program} {shlex.join(rewritten)}"
    )


def program_name(argv0: str) -> str:
    """How the user started training: `python run.py` or `fragment-llm train`."""
    return "python run.py" if Path(argv0).name == "run.py" else "fragment-llm train"
