"""One rich console for logs and progress bars, and `train.log` beside it without bar noise."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from rich.console import Console

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)

FILE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"


class ConsoleHandler(logging.Handler):
    """Prints records through the shared consoles, so they appear above a live progress bar;
    warnings and errors go to standard error, prefixed with their level."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.WARNING:
            error_console.print(f"{record.levelname.lower()}: {message}", markup=False, soft_wrap=True)
        else:
            console.print(message, markup=False, soft_wrap=True)


def setup_logging(log_file: Optional[Path] = None, console_output: bool = True, level: int = logging.INFO) -> None:
    """Route the package's log records (from `level` up) to the console and, when given, to `log_file`."""
    logger = logging.getLogger("fragment_llm")
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if console_output:
        logger.addHandler(ConsoleHandler())
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(log_file, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        logger.addHandler(file_handler)
