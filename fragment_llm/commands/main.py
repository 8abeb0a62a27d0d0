"""`fragment-llm COMMAND`: the parser made of each command module's arguments, and what every command's
errors end as (one `error: ...` line; exit code 2 for a usage error, 1 otherwise)."""

from __future__ import annotations

import argparse
import sys

from ..console import failing_standard_output, make_standard_streams_safe
from ..errors import UserError
from ..files import file_problem
from . import bench, chat, compare, evaluate, export, generate, plan, plot, runs, serve, show, train
from .common import CLIError, Parser, end_on_closed_pipe, fail

# torch and the model's code load only in the handlers of the commands that run a model (generate,
# chat, serve, eval, export, bench, train): `runs`, `show`, `compare` and `plot` start in a fraction of a second.
COMMANDS = (runs, show, compare, plot, generate, chat, serve, evaluate, export, bench, plan, train)
DESCRIPTION = "Tools over past runs (browsing creates no run directories), and `train`, run.py's Hydra app."


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fragment-llm", description=DESCRIPTION)
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    make_standard_streams_safe()
    try:
        args = build_parser().parse_args(argv)
        code = args.handler(args)
        sys.stdout.flush()  # a closed pipe or a full disk shows here, not in Python's flush at exit
        return code
    except CLIError as error:
        fail(str(error))
        return 2
    except UserError as error:
        return fail(str(error))
    except BrokenPipeError:
        return end_on_closed_pipe()
    except OSError as error:
        return fail(file_problem(error, unnamed=failing_standard_output(error)))
    except (RuntimeError, MemoryError) as error:
        from ..train.hardware import is_out_of_memory

        if not is_out_of_memory(error):
            raise
        return fail(
            "out of memory: the model and what it works on do not fit; close other programs, "
            "evaluate less text (--data), or use a machine with more memory"
        )
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
