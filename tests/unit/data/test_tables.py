"""Tables (data/tables.py): Parquet files and datasets' Arrow files, a document per row, read a batch at
a time within a row range, the text at data.text_field (nested by dots), and one line for a table that
cannot give its texts."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fragment_llm.config.schema import ConfigError
from fragment_llm.data.records import Skips, TextField
from fragment_llm.data.tables import TableDocument

TEXTS = [f"row {i} " * (i % 7 + 1) for i in range(10_000)]


def parquet(tmp_path, table, name="t.parquet", **options):
    path = tmp_path / name
    pq.write_table(table, path, **options)
    return TableDocument(path.name, path.stat().st_size, path, "parquet", TextField())


def texts(document, **sinks) -> list:
    return [text for text in document.texts(**sinks) if text is not None]


def test_rows_in_order_across_row_groups_with_separators(tmp_path):
    document = parquet(tmp_path, pa.table({"text": TEXTS, "id": range(len(TEXTS))}), row_group_size=999)
    pieces = list(document.texts())
    assert [piece for piece in pieces if piece is not None] == TEXTS
    assert pieces.count(None) == len(TEXTS) - 1  # between rows, not after the last
    assert document.row_count() == len(TEXTS)


def test_halves_cut_between_rows_and_read_each_part_only(tmp_path):
    document = parquet(tmp_path, pa.table({"text": TEXTS}), row_group_size=1234)
    train, val = document.halves(0.9)
    assert texts(train) + texts(val) == TEXTS
    assert len(texts(val)) == 1000 and train.size + val.size == document.size


def test_a_nested_field(tmp_path):
    table = pa.table({"meta": pa.array([{"body": text, "n": 1} for text in TEXTS[:50]])})
    path = tmp_path / "nested.parquet"
    pq.write_table(table, path)
    document = TableDocument("nested.parquet", path.stat().st_size, path, "parquet", TextField("meta.body"))
    assert texts(document) == TEXTS[:50]
    missing = TableDocument("nested.parquet", path.stat().st_size, path, "parquet", TextField("meta.title"))
    with pytest.raises(ConfigError, match=r"column `meta` has no field `title`.*set data.text_field"):
        texts(missing)


def test_a_missing_or_non_string_column_names_the_columns(tmp_path):
    document = parquet(tmp_path, pa.table({"body": ["a"], "id": [1]}))
    with pytest.raises(ConfigError, match=r"t.parquet has no column `text` \(its columns: body, id\)"):
        texts(document)
    document = parquet(tmp_path, pa.table({"text": [1, 2]}), name="ints.parquet")
    with pytest.raises(ConfigError, match=r"column `text` holds int64, not strings"):
        texts(document)


def test_a_null_row_is_a_bad_record_or_skipped(tmp_path):
    rows = ["first"] * 5 + [None] + ["last"] * 5
    document = parquet(tmp_path, pa.table({"text": rows}))
    with pytest.raises(ConfigError, match=r"t.parquet row 5 has a null in `text`.*data.skip_bad_records=true"):
        texts(document)
    skipping = TableDocument(document.name, document.size, document.path, "parquet", TextField(skip_bad=True))
    skips = Skips()
    assert texts(skipping, skips=skips) == ["first"] * 5 + ["last"] * 5
    assert skips.count == 1 and skips.first.startswith("t.parquet row 5")


def test_a_file_that_is_not_parquet(tmp_path):
    path = tmp_path / "fake.parquet"
    path.write_text("just text\n" * 20)
    document = TableDocument(path.name, path.stat().st_size, path, "parquet", TextField())
    with pytest.raises(ConfigError, match="fake.parquet is not a Parquet file .*fix the file or its name's suffix"):
        texts(document)


def test_an_arrow_stream_as_datasets_writes_it(tmp_path):
    path = tmp_path / "data-00000-of-00001.arrow"
    table = pa.table({"text": TEXTS[:3000]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        for batch in table.to_batches(max_chunksize=700):
            writer.write_batch(batch)
    document = TableDocument(path.name, path.stat().st_size, path, "arrow", TextField())
    assert document.row_count() == 3000 and texts(document) == TEXTS[:3000]
    train, val = document.halves(0.5)
    assert texts(train) + texts(val) == TEXTS[:3000]


def test_the_hash_follows_the_texts_and_the_field(tmp_path):
    from fragment_llm.data.corpus import new_hash

    def digest(document):
        hashed = new_hash()
        texts(document, digest=hashed)
        return hashed.hexdigest()

    first = parquet(tmp_path, pa.table({"text": TEXTS[:100], "other": TEXTS[100:200]}), name="a.parquet")
    again = parquet(tmp_path, pa.table({"text": TEXTS[:100]}), name="b.parquet", compression="gzip")
    other = TableDocument(first.name, first.size, first.path, "parquet", TextField("other"))
    assert digest(first) == digest(again)  # the same texts, however the file stores them
    assert digest(first) != digest(other)
