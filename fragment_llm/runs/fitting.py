"""Columns of text fitted to a width, as a table of runs shows them: each column as wide as its longest
word (a `key=value`, a run's name) and wrapped only between words, the room left to the columns that
lack least to be unwrapped; a word wider than any column can have is cut around an ellipsis, never
broken across lines."""

from __future__ import annotations

from typing import Callable, Optional

from rich.cells import cell_len

# Between two columns of a SIMPLE_HEAD table without edges: a padding space, the rule, a padding space.
COLUMN_GAP = 3
ELLIPSIS = "…"
# Columns are dropped (tables.DROP_ORDER) rather than a word cut below CUT_WIDTH cells; a column
# whose longest line is at most this wide (a header, numbers) stays on one line once words are cut.
CUT_WIDTH = 30


def longest_word(text: str) -> int:
    return max((cell_len(word) for word in text.split()), default=0)


def longest_line(text: str) -> int:
    return max((cell_len(line) for line in text.splitlines()), default=0)


def table_width(cells_by_column: list[list[str]], measure: Callable[[str], int]) -> int:
    """The width of a table of these columns (each a header and its cells) with each column as wide as
    `measure` says its widest cell needs: `longest_line` unwrapped, `longest_word` every word whole."""
    gaps = COLUMN_GAP * max(len(cells_by_column) - 1, 0)
    return gaps + sum(max(map(measure, cells)) for cells in cells_by_column)


def column_widths(cells_by_column: list[list[str]], width: int) -> Optional[list[int]]:
    """Widths for the columns that fit `width` with every word whole (a `key=value` is a word): each
    column its longest word, then the room left to the columns that lack least to be unwrapped (a
    date and time, a header) until it runs out, so that wrapping falls on the longest cells (the
    overrides). None when the columns fit unwrapped, or when even their longest words do not fit
    (rich then folds)."""
    spare = width - COLUMN_GAP * max(len(cells_by_column) - 1, 0)
    widths = [max(map(longest_word, cells)) for cells in cells_by_column]
    longest = [max(map(longest_line, cells)) for cells in cells_by_column]
    spare -= sum(widths)
    if spare < 0 or sum(longest) <= sum(widths) + spare:
        return None
    for index in sorted(range(len(widths)), key=lambda index: longest[index] - widths[index]):
        grown = min(longest[index], widths[index] + spare)
        spare -= grown - widths[index]
        widths[index] = grown
    return widths


def cut(word: str, width: int) -> str:
    """`word` in at most `width` cells: whole where it fits, else its start and its end around an
    ellipsis (the end tells runs apart: a run's unique suffix, a path's file name), the key of a
    `key=value` kept whole where it takes at most half the width."""
    if cell_len(word) <= width:
        return word
    key, equals, value = word.partition("=")
    if equals and cell_len(key) < width // 2:
        return f"{key}={cut(value, width - cell_len(key) - 1)}"
    room = width - 1  # the rest is the ellipsis
    head = _leading_cells(word, (room + 1) // 2)
    tail = _leading_cells(word[::-1], room - cell_len(head))[::-1]
    return head + ELLIPSIS + tail


def _leading_cells(text: str, cells: int) -> str:
    """The longest start of `text` at most `cells` wide."""
    end = 0
    while end < len(text) and cell_len(text[: end + 1]) <= cells:
        end += 1
    return text[:end]


def cut_words(text: str, width: int) -> str:
    """`text` with each word wider than `width` cells cut to it."""
    return " ".join(cut(word, width) for word in text.split(" "))


def cut_to_fit(cells_by_column: list[list[str]], width: int) -> list[list[str]]:
    """The columns as they are where their longest words fit `width`, else with the longest words cut
    until they do: those of the columns that need most first, down to the length at which all fit.
    A column needs its longest word, or its longest line where that is short (a header, numbers): once
    words are cut, those stay on one line."""
    spare = width - COLUMN_GAP * max(len(cells_by_column) - 1, 0)
    words = [max(map(longest_word, cells)) for cells in cells_by_column]
    if sum(words) <= spare:
        return cells_by_column
    lines = [max(map(longest_line, cells)) for cells in cells_by_column]
    needs = [line if line <= CUT_WIDTH else word for word, line in zip(words, lines)]
    level = max(needs)
    while level > 1 and sum(min(need, level) for need in needs) > spare:
        level -= 1
    return [[cut_words(text, level) for text in cells] for cells in cells_by_column]
