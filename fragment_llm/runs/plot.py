"""Training curves as pictures: runs' metrics.jsonl drawn on one chart with matplotlib (the `plot`
extra), for `fragment-llm plot` and the end of a sweep."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Optional

from ..console import console, error_console
from ..errors import UserError
from ..files import atomic_path, file_problem
from ..runs.tables import is_number, varying_overrides
from .paths import RunPaths
from .records import describe_run, find_runs, read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

# The x axes a curve can be drawn against: each a field of metrics.jsonl, and its label.
X_AXES = {
    "step": ("step", "optimizer step"),
    "tokens": ("tokens", "tokens"),
    "time": ("elapsed_s", "training time (s)"),
}


class PlotError(UserError):
    """Curves that cannot be drawn (matplotlib missing, no run with the metric): one line."""


class Curve(NamedTuple):
    label: str
    xs: list[float]
    ys: list[float]


def run_curve(run_dir: Path, label: str, metric: str, x_axis: str) -> Curve:
    """`metric` against `x_axis` (a key of X_AXES) from the run's metrics.jsonl; a PlotError saying why
    when the run has no such curve."""
    try:
        rows = read_metrics(run_dir)
    except OSError as error:
        raise PlotError(f"could not read {file_problem(error)}") from None
    if rows is None:
        raise PlotError(f"{run_dir} has no {RunPaths.METRICS} (it was trained before runs kept one)")
    field = X_AXES[x_axis][0]
    points = [(row[field], row[metric]) for row in rows if is_number(row.get(field)) and is_number(row.get(metric))]
    if not points:
        raise PlotError(f"{run_dir} has no {metric} values in its {RunPaths.METRICS}")
    xs, ys = zip(*points)
    return Curve(label, list(xs), list(ys))


def curves_figure(curves: list[Curve], metric: str, x_axis: str) -> Figure:
    """One chart: a line per curve, its label in the legend below it (labels can be long: a sweep's
    overrides), the chart taller by a legend line per curve."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise PlotError("drawing curves needs matplotlib: pip install 'fragment-llm[plot]'") from None
    figure = Figure(figsize=(8, 4.5 + 0.2 * len(curves)), layout="constrained")
    FigureCanvasAgg(figure)  # Agg draws without a display, on any machine
    axes = figure.add_subplot()
    sparse = metric.startswith("val/")  # a point per evaluation: marked, so that each shows
    for curve in curves:
        axes.plot(curve.xs, curve.ys, label=curve.label, marker="o" if sparse else None, markersize=3)
    axes.set_xlabel(X_AXES[x_axis][1])
    if x_axis != "time":  # steps and tokens are whole numbers
        axes.xaxis.get_major_locator().set_params(integer=True)
    axes.set_ylabel(metric)
    axes.grid(alpha=0.3)
    figure.legend(loc="outside lower center", fontsize="small")
    return figure


# The mark our images carry (the formats whose files hold one), so that a chart drawn again replaces its
# earlier self, while a file of anyone else's named by --out is left alone.
MARK = "fragment-llm plot"
MARKED_FORMATS = ("png", "svg", "pdf", "ps", "eps")
MARK_WINDOW = 1 << 16  # the mark is near the start (png, svg, ps, eps) or the end (pdf)


def write_curves(curves: list[Curve], metric: str, x_axis: str, out: Path, force: bool = False) -> None:
    """The chart of `curves` as an image file, its format named by `out`'s suffix (png, svg, pdf, ...).
    A file already at `out` is replaced only if it is a chart drawn here (`is_our_chart`), or with `force`."""
    figure = curves_figure(curves, metric, x_axis)
    image_format = out.suffix.lstrip(".").lower() or "png"
    if image_format not in figure.canvas.get_supported_filetypes():
        known = ", ".join(sorted(figure.canvas.get_supported_filetypes()))
        raise PlotError(f"--out {out}: matplotlib cannot write .{image_format} files; end the name with one of {known}")
    if out.is_dir():
        raise PlotError(f"--out {out} is a folder; name the image to write in it, e.g. --out {out / 'curves.png'}")
    if not force and os.path.lexists(out) and not is_our_chart(out):
        unmarked = f", and a .{image_format} file carries no mark to tell" if image_format not in MARKED_FORMATS else ""
        raise PlotError(
            f"--out {out} exists and is not a chart fragment-llm drew{unmarked}; pass --force to replace it, "
            "or name another file"
        )
    metadata = {"Creator": MARK} if image_format in MARKED_FORMATS else None
    try:
        with atomic_path(out) as temporary:
            figure.savefig(temporary, format=image_format, dpi=120, metadata=metadata)
    except OSError as error:  # named by the file asked for, not the temporary one written first
        raise OSError(error.errno, error.strerror, str(out)) from None


def is_our_chart(path: Path) -> bool:
    """Whether `path` is a regular file (not a link) that carries our mark: a chart drawn here before."""
    try:
        if not stat.S_ISREG(path.lstat().st_mode):
            return False
        with open(path, "rb") as handle:
            head = handle.read(MARK_WINDOW)
            handle.seek(max(handle.seek(0, os.SEEK_END) - MARK_WINDOW, 0))
            tail = handle.read(MARK_WINDOW)
    except OSError:
        return False
    return MARK.encode() in head or MARK.encode() in tail


def shortened(override: str) -> str:
    """`key=value` with a number of many digits (a search's draw) cut to 4 significant ones."""
    key, _, value = override.partition("=")
    try:
        number = float(value)
    except ValueError:
        return override
    return f"{key}={number:.4g}" if len(value) > 6 else override


def labelled_runs(folder: Path) -> list[tuple[Path, str]]:
    """The runs in a folder of runs (a sweep's jobs), each with a label: its name under the folder and
    the overrides that vary between them."""
    jobs = [describe_run(run, folder) for run in find_runs(folder)]
    varying = varying_overrides(jobs)
    return [
        (Path(job["path"]), " ".join([job["name"], *(shortened(item) for item in job["overrides"] if item in varying)]))
        for job in jobs
    ]


def write_sweep_curves(sweep_dir: Path) -> Optional[Path]:
    """<sweep>/curves.png: its jobs' val/bpb against step, each named by its number and the overrides
    that vary between jobs. Nothing (None) without matplotlib, or when no job has a curve (they all
    failed before their first evaluation); a file that cannot be written is a warning: the sweep is done."""
    curves = []
    for run, label in labelled_runs(Path(sweep_dir)):
        try:
            curves.append(run_curve(run, label, "val/bpb", "step"))
        except PlotError:
            continue  # a failed job: the sweep's table says why
    if not curves:
        return None
    path = RunPaths(sweep_dir).sweep_curves
    if os.path.lexists(path) and not is_our_chart(path):
        error_console.print(f"warning: {path} is not a chart fragment-llm drew; left as it is", markup=False)
        return None
    try:
        write_curves(curves, "val/bpb", "step", path)
    except PlotError:  # no matplotlib: the sweep's table is its report
        return None
    except OSError as error:
        error_console.print(f"warning: could not write {file_problem(error, path)}", markup=False, soft_wrap=True)
        return None
    console.print(f"Curves: {path}", markup=False, soft_wrap=True)
    return path
