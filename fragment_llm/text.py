"""Words for what messages count and time: "1 layer", "2 layers", "1m 30s"."""

from __future__ import annotations


def plural(count: float, noun: str) -> str:
    """`count` and `noun`, the noun plural unless the count is exactly 1: `plural(1, "epoch")` is
    "1 epoch", `plural(0, "epoch")` "0 epochs". For the nouns our messages count, all regular."""
    return f"{count} {noun if count == 1 else noun + 's'}"


def duration(seconds: float) -> str:
    """A measured or planned time, as messages write it: 4.5 -> `4.5s`, 90 -> `1m 30s`, 5400 -> `1h 30m`.
    (A budget echoed back as a config value is `train.outputs.format_seconds`; a projection in words,
    `train.report.rough_duration`; the progress bar's clock, `train.outputs.clock`.)"""
    if seconds < 60:
        return f"{seconds:.3g}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m {rest:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"
