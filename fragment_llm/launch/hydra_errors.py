"""What reaches Hydra as an exception, said in one `error:` line instead of Hydra's traceback: its own
writes (the run or sweep directory, .hydra/ on a full disk or past a size limit), and its own errors."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from ..console import error_console, failing_standard_output
from ..files import file_problem

# Hydra prints an exception that reaches it with a traceback, unless this is set: then it raises it.
FULL_ERROR = "HYDRA_FULL_ERROR"


@contextmanager
def hydra_errors_in_one_line() -> Iterator[None]:
    """Around the Hydra app: a file that cannot be read or written ends as one line naming it and the fix
    (files.file_problem), a Hydra or OmegaConf error as its message on one line; both exit with 1, as
    Hydra does. A user who set HYDRA_FULL_ERROR gets Hydra's full traceback, as asked."""
    if os.environ.get(FULL_ERROR):
        yield
        return
    os.environ[FULL_ERROR] = "1"
    try:
        yield
    except (HydraException, OmegaConfBaseException) as error:  # before OSError: a missing config is both
        fail(" ".join(str(error).split()))
    except OSError as error:
        fail(file_problem(error, unnamed=failing_standard_output(error)))  # `--cfg job > /dev/full`
    finally:
        os.environ.pop(FULL_ERROR, None)


def fail(message: str) -> None:
    error_console.print(f"error: {message}", markup=False, soft_wrap=True)
    sys.exit(1)
