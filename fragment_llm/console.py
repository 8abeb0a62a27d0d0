"""One rich console for logs and progress bars, and `train.log` beside it without bar noise; standard
streams that print any text, whatever the terminal's encoding."""

from __future__ import annotations

import codecs
import logging
import logging.handlers
import os
import sys
from pathlib import Path
from typing import Optional

from rich.console import Console

from .files import TEXT_ERRORS, file_problem, named_file

console = Console(highlight=False)
error_console = Console(stderr=True, highlight=False)

FILE_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"

UNSHOWABLE = "fragment_llm.unshowable"


def _show_unshowable(error: UnicodeError) -> tuple[str | bytes, int]:
    """What a standard stream writes for a character its encoding cannot show: a surrogate that stands
    for a byte Python could not decode (of a file name or an argument) as that byte, as `ls` shows the
    name; anything else as a backslash escape (`\\xf6`), where Python would raise UnicodeEncodeError."""
    if not isinstance(error, UnicodeEncodeError):
        raise error
    character = error.object[error.start]
    if "\udc80" <= character <= "\udcff":
        return bytes([ord(character) - 0xDC00]), error.start + 1
    return character.encode("ascii", "backslashreplace").decode("ascii"), error.start + 1


def make_standard_streams_safe() -> None:
    """Printing never fails on a character the terminal cannot show (a C or Latin-1 locale, a Windows
    code page, a file name that is not UTF-8): each entry point calls this first. Streams a caller
    replaced with one that cannot be reconfigured (a test's StringIO) are left as they are."""
    codecs.register_error(UNSHOWABLE, _show_unshowable)
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors=UNSHOWABLE)


def failing_standard_output(error: OSError) -> str | None:
    """Standard output's name when `error`, which names no file, came from writing it (`fragment-llm runs
    --json > /dev/full`, a full disk): a line written now fails too. Standard output then points at
    /dev/null, so that Python's last flush does not fail again. The command has failed, so its output is
    cut short anyway: the line does no harm where standard output works."""
    if named_file(error) is not None:
        return None
    try:
        sys.stdout.write("\n")
        sys.stdout.flush()
    except OSError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return "standard output"
    return None


def command_line_text(value: str) -> str:
    """An argument (or a line of standard input) as the text its bytes spell in UTF-8. Under a locale
    whose encoding cannot decode them (the C locale: ASCII) Python hands such bytes over as surrogates,
    which are kept for file names (they open the same file) but are no text to work on. Raises
    UnicodeDecodeError where the bytes are not UTF-8 either."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(value).decode("utf-8")
    return value


class ConsoleHandler(logging.Handler):
    """Prints records through the shared consoles, so they appear above a live progress bar;
    warnings and errors go to standard error, prefixed with their level."""

    def emit(self, record: logging.LogRecord) -> None:
        message = self.format(record)
        if record.levelno >= logging.WARNING:
            error_console.print(f"{record.levelname.lower()}: {message}", markup=False, soft_wrap=True)
        else:
            console.print(message, markup=False, soft_wrap=True)


class LogFileHandler(logging.handlers.WatchedFileHandler):
    """train.log, opened again where it was removed or replaced during the run (records written on would
    be lost with no error). When a write fails (a full disk, the run's folder removed), the file stops
    with one warning on the console, instead of logging's traceback on every later record; the run's own
    error handling goes on."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            try:
                super().emit(record)
            except OSError:  # opening it again failed: outside the write that logging guards itself
                self.handleError(record)

    def handleError(self, record: logging.LogRecord) -> None:
        self.broken = True
        error = sys.exc_info()[1]
        problem = (
            file_problem(error, self.baseFilename) if isinstance(error, OSError) else f"{self.baseFilename}: {error}"
        )
        error_console.print(
            f"warning: could not write {problem}; logging to the console only",
            markup=False,
            soft_wrap=True,
        )


def setup_logging(log_file: Optional[Path] = None, console_output: bool = True, level: int = logging.INFO) -> None:
    """Route the package's log records (from `level` up) to the console and, when given, to `log_file`,
    which also keeps the DEBUG records (details too many for the console, such as each checkpoint)."""
    logger = logging.getLogger("fragment_llm")
    logger.setLevel(logging.DEBUG if log_file is not None else level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    if console_output:
        console_handler = ConsoleHandler()
        console_handler.setLevel(level)
        logger.addHandler(console_handler)
    if log_file is not None:
        try:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            file_handler = LogFileHandler(log_file, encoding="utf-8", errors=TEXT_ERRORS)
        except OSError as error:
            error_console.print(
                f"warning: could not open {file_problem(error, log_file)}; logging to the console only",
                markup=False,
                soft_wrap=True,
            )
            return
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        logger.addHandler(file_handler)
