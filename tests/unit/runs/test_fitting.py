"""Columns fitted to a width (runs/fitting.py): a value cut keeps its key and both ends."""

from __future__ import annotations


def test_cut_keeps_the_key_and_both_ends():
    from fragment_llm.runs.fitting import cut

    assert cut("data.path=/a/b/c.txt", 40) == "data.path=/a/b/c.txt"
    assert cut("data.path=/home/someone/books/volume.txt", 24) == "data.path=/home/s…me.txt"
    assert cut("07-10-11_tiny-cpu_4fd8", 11) == "07-10…_4fd8"
    assert cut("a_very_long_key.with.parts=1", 10) == "a_ver…ts=1"  # a key wider than half goes too
    assert cut("abc", 1) == "…"
