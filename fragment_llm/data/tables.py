"""Tables: Parquet files and the Arrow files a Hugging Face `datasets` folder holds, a document per row.

Read with pyarrow a batch at a time (a Parquet file by row group), never whole. A document is a table's
rows [start, stop): a single table is cut in two between rows for the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional

from ..config.schema import ConfigError
from .compression import MissingExtra
from .document import Counter, Sink
from .records import NOT_UTF8, BadRecord, Skips, TextField, bad_record_error, checked_text

BATCH_ROWS = 4096
KINDS = {"parquet": "Parquet", "arrow": "Arrow (datasets)"}


def pyarrow_modules():
    try:
        import pyarrow
        import pyarrow.compute
        import pyarrow.parquet
    except ImportError:
        raise MissingExtra(
            "data: reading Parquet files and datasets folders needs pyarrow; pip install 'fragment-llm[data]'"
        ) from None
    return pyarrow


@dataclass(frozen=True)
class TableDocument:
    """Rows [start, stop) of a Parquet or Arrow file (all of them when `rows` is None), each a document
    whose text is in `text_field`. `size`: the file's size on disk, what the split weighs and
    progress counts."""

    name: str
    size: int
    path: Path
    kind: str
    text_field: TextField
    rows: Optional[tuple[int, int]] = None

    def row_count(self) -> int:
        if self.rows is not None:
            return self.rows[1] - self.rows[0]
        if self.kind == "parquet":
            return self._parquet().metadata.num_rows
        return sum(batch.num_rows for batch in self._arrow_batches())

    def halves(self, train_fraction: float) -> tuple["TableDocument", "TableDocument"]:
        """The table cut between rows: the first `train_fraction` of its rows, and the rest."""
        count = self.row_count()
        start = self.rows[0] if self.rows else 0
        cut = min(max(1, round(count * train_fraction)), count - 1) if count > 1 else count
        share = cut / max(count, 1)
        return (
            replace(self, rows=(start, start + cut), size=round(self.size * share)),
            replace(self, rows=(start + cut, start + count), size=self.size - round(self.size * share)),
        )

    def texts(
        self, digest: Optional[Sink] = None, progress: Optional[Counter] = None, skips: Optional[Skips] = None
    ) -> Iterator[Optional[str]]:
        """Each row's text, None between rows; `digest` is fed the texts (and how they are read)."""
        if digest is not None:
            digest.update(self.text_field.key())
        total = self.row_count() if progress is not None else 0
        first = True
        row = self.rows[0] if self.rows else 0
        for values in self._columns():
            for value in values:
                try:
                    text = checked_text(value, self.text_field)
                except BadRecord as bad:
                    where = f"{self.name} row {row}"
                    if not self.text_field.skip_bad:
                        raise bad_record_error(where, str(bad)) from None
                    if skips is not None:
                        skips.add(where, str(bad))
                    text = ""
                row += 1
                if text:
                    if digest is not None:
                        digest.update(text.encode() + b"\xff")
                    if not first:
                        yield None
                    first = False
                    yield text
            if progress is not None:
                progress.advance(round(self.size * len(values) / max(total, 1)))

    def _columns(self) -> Iterator[list[Any]]:
        """The text field's values, a batch of rows at a time, within `rows`."""
        start, stop = self.rows or (0, None)
        position = 0
        for batch in self._batches():
            end = position + batch.num_rows
            if end > start and (stop is None or position < stop):
                low, high = (
                    max(start - position, 0),
                    batch.num_rows if stop is None else min(stop - position, batch.num_rows),
                )
                yield self._values(batch.slice(low, high - low))
            position = end
            if stop is not None and position >= stop:
                return
        if stop is not None and position < stop:
            raise ConfigError(f"data: {self.name} changed while it was being read; run again")

    def _values(self, batch) -> list[Any]:
        pyarrow = pyarrow_modules()
        parts = self.text_field.parts
        names = batch.schema.names
        if parts[0] not in names:
            raise ConfigError(
                f"data: {self.name} has no column `{parts[0]}` (its columns: {', '.join(names[:12]) or 'none'}); "
                "set data.text_field to the column that holds the text"
            )
        column = batch.column(parts[0])
        for depth, part in enumerate(parts[1:], start=1):
            if not pyarrow.types.is_struct(column.type) or column.type.get_field_index(part) < 0:
                raise ConfigError(
                    f"data: {self.name}'s column `{'.'.join(parts[:depth])}` has no field `{part}` "
                    f"(it is {column.type}); set data.text_field to the field that holds the text"
                )
            column = pyarrow.compute.struct_field(column, part)
        if not (pyarrow.types.is_string(column.type) or pyarrow.types.is_large_string(column.type)):
            raise ConfigError(
                f"data: {self.name}'s column `{self.text_field.path}` holds {column.type}, not strings; "
                "set data.text_field to the column that holds the text"
            )
        try:
            return column.to_pylist()
        except UnicodeDecodeError:  # Arrow does not check that strings are UTF-8 when it reads them
            return [_decoded_or_none(value) for value in column]

    def _batches(self) -> Iterator[Any]:
        if self.kind == "parquet":
            table = self._parquet()
            if self.text_field.parts[0] in table.schema_arrow.names:  # else _values names the columns there are
                yield from table.iter_batches(batch_size=BATCH_ROWS, columns=[self.text_field.parts[0]])
            else:
                yield from table.iter_batches(batch_size=1)
        else:
            yield from self._arrow_batches()

    def _parquet(self):
        pyarrow = pyarrow_modules()
        try:
            return pyarrow.parquet.ParquetFile(self.path)
        except (pyarrow.ArrowException, OSError) as error:
            raise _not_a_table(self.name, "a Parquet file", error) from None

    def _arrow_batches(self) -> Iterator[Any]:
        pyarrow = pyarrow_modules()
        try:
            source = pyarrow.memory_map(str(self.path))
            try:
                reader = pyarrow.ipc.open_stream(source)
            except pyarrow.ArrowInvalid:  # the IPC file format, as some writers use
                reader = pyarrow.ipc.open_file(source)
                yield from (reader.get_batch(index) for index in range(reader.num_record_batches))
                return
            yield from reader
        except (pyarrow.ArrowException, OSError) as error:
            raise _not_a_table(self.name, "an Arrow file", error) from None


def _decoded_or_none(value) -> Any:
    try:
        return value.as_py()
    except UnicodeDecodeError:
        return NOT_UTF8


def _not_a_table(name: str, what: str, error: BaseException) -> ConfigError:
    reason = " ".join(str(error).split())[:200]
    return ConfigError(f"data: {name} is not {what} ({reason}); fix the file or its name's suffix")
