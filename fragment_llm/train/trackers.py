"""Experiment trackers beside TensorBoard: Weights & Biases (`logging.wandb`) and MLflow (`logging.mlflow`).

The job opens them around a run (`tracking`, on rank 0 only) before training starts; RunOutputs hands
them every row it writes to metrics.jsonl, whatever scalars the row holds, and every text sample
(`for_run`); the job closes them with how the run ended and its summary.json. Their run ids are kept in
summary.json (`trackers`), so that a resumed run continues the same W&B and MLflow runs.

Nothing of theirs may slow, stop or hang the run: after their start every call goes to a thread of
their own, which sends what has gathered every few seconds, and the run's end waits for the last
sends a bounded time. One that cannot start, or fails later, is one warning and the run goes on
without it (with logging.require_trackers=true, one that cannot start is an error before training).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

from ..config.schema import Config
from ..errors import UserError
from ..runs.paths import RunPaths
from ..runs.records import describe_run, read_summary, update_summary
from .distributed import Ranks, all_gather
from .from_run import recorded_choices
from .resumable import Interrupted
from .tracker_runs import Labels, MlflowTracker, Tracker, WandbTracker

log = logging.getLogger(__name__)

FINISH_SECONDS = 60.0  # the longest the run's end waits for the trackers' last sends
# Rows gather this long between sends. An MLflow request costs about 7 ms of CPU for one row, 1 ms a row
# for 10 and 0.5 ms for 50 (sqlite, measured): at the default run's 10 steps a second, 50 rows a request.
BATCH_SECONDS = 5.0
INSTALL = "pip install 'fragment-llm[trackers]'"
TAG_LENGTH = 64  # W&B's limit


class TrackerError(UserError, RuntimeError):
    """A tracker that logging.require_trackers=true requires could not start."""


def run_labels(settings: Config, run_dir: Path) -> Labels:
    """The logging keys' name, tags and group, else the run as `fragment-llm runs` shows it: its directory
    under paths.outputs, its config group options and overrides, and for a sweep's job the sweep's directory."""
    keys = settings.logging
    run = describe_run(run_dir.resolve(), Path(settings.paths.outputs).resolve())
    options = [f"{group}={option}" for group, option in recorded_choices(run_dir).items()]
    tags = keys.tags if keys.tags is not None else [*options, *run["overrides"]]
    sweep = str(Path(run["name"]).parent) if run["in_sweep"] else None
    return Labels(keys.run_name or run["name"], [str(tag)[:TAG_LENGTH] for tag in tags], keys.group or sweep)


def one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0].strip() if lines else type(error).__name__


class Trackers:
    """The trackers a run reports to, and the thread that sends to them: `log` and `sample` only queue."""

    def __init__(self, started: list[Tracker]):
        self.started = started
        self.attached: dict[str, Any] = {}  # values to send with a step's row (attach)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.closing = threading.Event()
        self.finished: list[Tracker] = []
        self.thread = threading.Thread(target=self.send, name="fragment-llm trackers", daemon=True)
        if started:
            self.thread.start()

    def __bool__(self) -> bool:
        return bool(self.started)

    def attach(self, step: int, values: dict[str, float]) -> None:
        """Values to send with `step`'s row of metrics.jsonl, in one row (MFU: TensorBoard's, not the file's)."""
        if self.started:
            self.attached = {"step": step, **values}

    def log(self, row: dict[str, Any]) -> None:
        """A row of metrics.jsonl, with what was attached to its step."""
        if self.started:
            attached = self.attached if self.attached.get("step") == row["step"] else {}
            self.queue.put(("row", time.time(), {**row, **attached}))
            self.attached = {}

    def sample(self, step: int, text: str) -> None:
        if self.started:
            self.queue.put(("sample", step, text))

    def close(self, status: str, summary: dict[str, Any]) -> None:
        """Send what is queued, then the end (`status`, `summary`); wait FINISH_SECONDS at most."""
        if not self.thread.is_alive():
            return
        self.queue.put(("finish", status, summary))
        self.closing.set()
        self.thread.join(FINISH_SECONDS)
        for tracker in self.started:
            if tracker not in self.finished:
                log.warning(
                    "%s did not finish sending within %gs; the run is complete without it (%s)",
                    tracker.name,
                    FINISH_SECONDS,
                    tracker.where(),
                )

    def send(self) -> None:
        """The sending thread: what was queued, every BATCH_SECONDS, until the end."""
        while True:
            items = [self.queue.get()]
            self.closing.wait(BATCH_SECONDS)
            while not self.queue.empty():
                items.append(self.queue.get())
            rows: list[tuple[float, dict[str, Any]]] = []
            for kind, *item in items:
                if kind == "row":
                    rows.append((item[0], item[1]))
                    continue
                self.each(lambda tracker: tracker.log(rows), bool(rows))
                rows = []
                if kind == "sample":
                    self.each(lambda tracker: tracker.sample(*item))
                else:
                    self.each(lambda tracker: (tracker.finish(*item), self.finished.append(tracker)))
                    return
            self.each(lambda tracker: tracker.log(rows), bool(rows))

    def each(self, call: Callable[[Tracker], Any], due: bool = True) -> None:
        """`call` on every tracker still sending; one that fails stops, with one warning."""
        for tracker in list(self.started) if due else ():
            try:
                call(tracker)
            except Exception as error:  # whatever a tracker raises (a server gone, a full disk) ends it alone
                self.started.remove(tracker)
                log.warning("%s stopped: %s; the run goes on without it", tracker.name, one_line(error))


NO_TRACKERS = Trackers([])
_OPEN: dict[str, Trackers] = {}  # by run directory: the trackers of the runs training in this process


def for_run(run_dir: Path) -> Trackers:
    """The trackers the job opened for `run_dir` (none: a stand-in that does nothing)."""
    return _OPEN.get(os.path.abspath(run_dir), NO_TRACKERS)


KINDS: tuple[type[Tracker], ...] = (WandbTracker, MlflowTracker)


def open_trackers(
    settings: Config, run_dir: Path, resumed: Optional[tuple[Path, int]]
) -> tuple[Trackers, Optional[str]]:
    """Start the trackers the settings turn on; returns them, and why one could not start where the
    settings require them (then none is kept). Their ids go to summary.json."""
    keys = settings.logging
    mode = keys.wandb_mode.value if keys.wandb_mode else os.environ.get("WANDB_MODE")
    wanted = [kind for kind in KINDS if getattr(keys, kind.key) and not (kind is WandbTracker and mode == "disabled")]
    if not wanted:
        return NO_TRACKERS, None
    labels, earlier = run_labels(settings, run_dir), continued(resumed)
    started, problems = [], []
    for kind in wanted:
        try:
            previous = earlier.get(kind.key)
            started.append(kind.start(settings, run_dir, labels, previous if isinstance(previous, dict) else {}))
        except ImportError:
            problems.append(f"{kind.name} is not installed: {INSTALL}")
        except Exception as error:  # whatever a start raises (no login, no network, a bad URI) is one line
            problems.append(f"{kind.name} could not start: {one_line(error)}")
    if problems and keys.require_trackers:
        Trackers(started).close("failed", {"status": "failed", "error": "; ".join(problems)})
        return NO_TRACKERS, (
            f"{'; '.join(problems)}; logging.require_trackers=true stops the run for it: fix that, or set "
            "logging.require_trackers=false to train without it"
        )
    for problem in problems:
        log.warning("%s; the run goes on without it", problem)
    for tracker in started:
        log.info("%s: %s", tracker.name, tracker.where())
    trackers = Trackers(started)
    if started:
        try:
            update_summary(run_dir, trackers={tracker.key: tracker.record() for tracker in started})
        except OSError:  # the run ends for a summary it cannot write: its trackers end with it
            trackers.close("failed", {"status": "failed"})
            raise
    return trackers, None


def continued(resumed: Optional[tuple[Path, int]]) -> dict[str, Any]:
    """The tracker runs a resumed run continues (`resumed`: the checkpoint and its step): those of the
    run it resumes, unless the checkpoint is behind the step that run reached, a new line of training,
    which gets runs of its own."""
    if resumed is None:
        return {}
    checkpoint, step = resumed
    earlier = read_summary(RunPaths.checkpoint_run(checkpoint))
    if step < (earlier.get("steps") or 0):
        return {}
    records = earlier.get("trackers")
    return records if isinstance(records, dict) else {}


@contextmanager
def tracking(
    settings: Config, run_dir: Path, ranks: Ranks, resumed: Optional[tuple[Path, int]] = None
) -> Iterator[None]:
    """The run's trackers while it trains, opened on rank 0 (`resumed`: the checkpoint a resumed run
    continues, and its step), then closed with how it ended: completed, interrupted or failed. A
    tracker the settings require that cannot start raises TrackerError on every rank, before training."""
    run_dir = Path(run_dir)
    trackers, problem = open_trackers(settings, run_dir, resumed) if ranks.is_main else (NO_TRACKERS, None)
    if ranks.distributed:
        problem = all_gather(problem)[0]
    if problem:
        raise TrackerError(problem)
    key, status, ending = os.path.abspath(run_dir), "failed", {}
    _OPEN[key] = trackers
    try:
        yield
        status = "completed"
    except Interrupted:
        status = "interrupted"
        raise
    except BaseException as error:
        ending = {"error": one_line(error)}
        raise
    finally:
        del _OPEN[key]
        if trackers is not NO_TRACKERS:  # without trackers the run's files are not read again
            trackers.close(status, {**read_summary(run_dir), **ending, "status": status})
