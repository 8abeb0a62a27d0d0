"""Words for what messages count: "1 layer", "2 layers"."""

from __future__ import annotations


def plural(count: float, noun: str) -> str:
    """`count` and `noun`, the noun plural unless the count is exactly 1: `plural(1, "epoch")` is
    "1 epoch", `plural(0, "epoch")` "0 epochs". For the nouns our messages count, all regular."""
    return f"{count} {noun if count == 1 else noun + 's'}"
