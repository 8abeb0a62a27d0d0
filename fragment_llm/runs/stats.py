"""Repeated runs as groups: runs that differ only in keys that repeat a measurement (the seed) pooled,
each group's mean, spread and count, and whether the best group's lead over another is larger than
their spread (Welch's t-test): `fragment-llm compare --ignore seed`."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Any, Sequence

from ..runs.tables import RunsView
from ..text import plural

# A difference counts as larger than the spread below this p-value (the usual 5%).
SIGNIFICANCE = 0.05


@dataclass(frozen=True)
class Metric:
    key: str  # of a `describe_run` row
    name: str  # a table's header
    unit: str  # a verdict's
    digits: int


BEST_VAL_LOSS = Metric("best_val_loss", "best val loss", "nats/token", 4)
# At the best val loss; unlike a loss per token, comparable across tokenizers.
BITS_PER_BYTE = Metric("best_val_bpb", "bits/byte", "bits/byte", 3)


@dataclass(frozen=True)
class Spread:
    mean: float
    std: float  # the sample standard deviation; NaN for a single run
    count: int


@dataclass
class Group:
    label: str  # the overrides that set it apart from the other groups
    runs: list[dict[str, Any]]

    def values(self, metric: Metric) -> list[float]:
        return [run[metric.key] for run in self.runs if _finite(run.get(metric.key))]

    def spread(self, metric: Metric) -> Spread:
        values = self.values(metric)
        mean = statistics.mean(values) if values else math.nan
        return Spread(mean, statistics.stdev(values) if len(values) > 1 else math.nan, len(values))


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def override_key(item: str) -> str:
    """The key an override sets: `train.seed` of `train.seed=3`, `optimizer` of `optimizer=muon`."""
    return item.partition("=")[0].lstrip("+~")


def names_key(name: str, key: str) -> bool:
    """Whether `name` (as given to --ignore) names `key`: the key itself, or its last part (`seed`)."""
    return name in (key, key.rsplit(".", 1)[-1])


def comparable(run: dict[str, Any]) -> bool:
    """A run whose result can be pooled: completed, with a best val loss."""
    return run["status"] == "completed" and _finite(run["best_val_loss"])


def group_runs(runs: Sequence[dict[str, Any]], ignored: Sequence[str]) -> list[Group]:
    """`runs` (`describe_run` rows) grouped by their overrides less those whose key `ignored` names: the
    runs of a group differ only in ignored keys. Each group's label is what sets it apart (the
    overrides not every group has, in the order of its first run's)."""

    def kept(run: dict[str, Any]) -> list[str]:
        return [item for item in run["overrides"] if not any(names_key(name, override_key(item)) for name in ignored)]

    by_overrides: dict[frozenset[str], list[dict[str, Any]]] = {}
    for run in runs:
        by_overrides.setdefault(frozenset(kept(run)), []).append(run)
    everywhere = frozenset.intersection(*by_overrides) if by_overrides else frozenset()
    unlabelled = "(all)" if len(by_overrides) == 1 else "(defaults)"  # one group; a group that overrides nothing else
    return [
        Group(" ".join(item for item in kept(members[0]) if item not in everywhere) or unlabelled, members)
        for members in by_overrides.values()
    ]


def deciding_metric(groups: Sequence[Group]) -> Metric:
    """Bits per byte where every run has it (it compares across tokenizers), else best val loss."""
    every_run = [run for group in groups for run in group.runs]
    return BITS_PER_BYTE if all(_finite(run.get(BITS_PER_BYTE.key)) for run in every_run) else BEST_VAL_LOSS


def welch_p_value(first: Sequence[float], second: Sequence[float]) -> float:
    """The two-sided p-value of Welch's t-test (no equal variances assumed); NaN where it is undefined
    (fewer than two values in a group, or no spread in either)."""
    if len(first) < 2 or len(second) < 2 or statistics.stdev(first) == statistics.stdev(second) == 0:
        return math.nan
    from scipy.stats import ttest_ind

    return float(ttest_ind(first, second, equal_var=False).pvalue)


def verdict(best: Group, other: Group, metric: Metric) -> str:
    """One sentence: by how much `best` leads `other` in `metric`, and whether that is more than their spread."""
    ours, theirs = best.values(metric), other.values(metric)
    lead = f"{statistics.mean(theirs) - statistics.mean(ours):.{metric.digits}f} {metric.unit}"
    counts = f"n={len(ours)} vs {len(theirs)}"
    p_value = welch_p_value(ours, theirs)
    if math.isnan(p_value):
        return (
            f"{best.label} is lower than {other.label} by {lead}, but with {counts} and no spread measured "
            "the difference cannot be told from chance: run more seeds (e.g. train.seed=1,2,3)"
        )
    shown_p = "p<0.001" if p_value < 0.001 else f"p={p_value:.2g}"
    if p_value < SIGNIFICANCE:
        return f"{best.label} is better than {other.label} by {lead}, {shown_p} (Welch t-test, {counts})"
    return (
        f"{best.label} is lower than {other.label} by {lead}, but the difference is within the spread: "
        f"{shown_p} (Welch t-test, {counts})"
    )


def _mean_and_spread(spread: Spread, digits: int) -> str:
    if spread.count == 0:
        return "-"
    if spread.count == 1:
        return f"{spread.mean:.{digits}f}"
    return f"{spread.mean:.{digits}f} ± {spread.std:.{digits}f}"


def groups_view(groups: Sequence[Group], ignored: Sequence[str], left_out: int) -> RunsView:
    """A table of the groups: each one's runs, and mean ± standard deviation of each metric."""
    runs = sum(len(group.runs) for group in groups)
    not_pooled = f"; {left_out} more did not complete" if left_out else ""
    pooled = f"{plural(len(groups), 'group')} of {plural(runs, 'run')}{not_pooled}"
    heading = f"Runs that differ only in {', '.join(ignored)}, pooled: {pooled}"
    rows = [
        [
            group.label,
            str(len(group.runs)),
            *(_mean_and_spread(group.spread(metric), metric.digits) for metric in (BEST_VAL_LOSS, BITS_PER_BYTE)),
        ]
        for group in groups
    ]
    columns = ["group", "runs", f"{BEST_VAL_LOSS.name} (mean ± sd)", f"{BITS_PER_BYTE.name} (mean ± sd)"]
    return RunsView(heading, [], columns, [False, True, True, True], rows)
