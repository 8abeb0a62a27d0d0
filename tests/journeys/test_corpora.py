"""The corpora people have (issue 22): `python run.py data.path=FILE` trains on JSON Lines, Parquet, a
save_to_disk folder and compressed files as a user names them, on the very tokens the same texts give in
any other format; a bad record is one line naming the file and the line or row, with nothing cached; and
`data.skip_bad_records=true` skips it and says so."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from helpers import RUN, one_error_line, run_in_process, tiny_overrides

from fragment_llm.data.tokenizer import end_of_text_id, load_tokenizer, text_ids
from fragment_llm.runs.paths import RunPaths

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def texts():
    from pydoc_data.topics import topics

    return [topics[name] for name in sorted(topics)][:40]


def json_lines(texts, field="text") -> bytes:
    return "".join(json.dumps({"id": i, field: text}) + "\n" for i, text in enumerate(texts)).encode()


def write(folder, name, texts):
    """`texts` as the file `name` (its format by its name), in `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    if name.endswith(".parquet"):
        pq.write_table(pa.table({"text": texts}), path, row_group_size=8)
    elif name == "saved":
        import datasets

        datasets.Dataset.from_dict({"text": texts}).save_to_disk(str(path))
    else:
        raw = json_lines(texts)
        path.write_bytes(
            {".gz": gzip.compress, ".zst": zstandard.ZstdCompressor().compress}.get(path.suffix, bytes)(raw)
        )
    return path


def train(tmp_path, path, *extra, implied=False):
    """A tiny run on `path`; with `implied`, the command line names data.path but not data=text."""
    overrides = [override for override in tiny_overrides(tmp_path, path) if not (implied and override == "data=text")]
    return run_in_process([RUN, *overrides, *extra], tmp_path)


def log_of(tmp_path) -> str:
    (run,) = [path.parent for path in (tmp_path / "outputs").rglob("train.log")]
    return RunPaths(run).log.read_text()


@pytest.mark.parametrize(
    "name,described",
    [
        ("docs.jsonl", "1 file of JSON Lines"),
        ("docs.jsonl.gz", "1 file of JSON Lines (gzip)"),
        ("docs.jsonl.zst", "1 file of JSON Lines (zstd)"),
        ("docs.parquet", "1 file of Parquet"),
        ("saved", "1 file of Arrow (datasets)"),
    ],
)
def test_each_format_trains_on_the_tokens_its_texts_give(tmp_path, texts, name, described):
    result = train(tmp_path, write(tmp_path / "data", name, texts), implied=True)
    assert result.returncode == 0, result.stderr[-3000:]
    log = log_of(tmp_path)
    assert f"Data: data.path={tmp_path / 'data' / name}: {described}" in log
    assert f"Data: {len(texts)} documents" in log
    # The token cache holds exactly the records' texts, each followed by <|endoftext|>, in the run's tokenizer.
    (run,) = [path.parent for path in (tmp_path / "outputs").rglob("train.log")]
    tokenizer = load_tokenizer(RunPaths(run).tokenizer)
    expected = [token for ids in text_ids(tokenizer, texts) for token in [*ids, end_of_text_id(tokenizer)]]
    (entry,) = (tmp_path / "cache" / "tokens").iterdir()
    dtype = json.loads((entry / "meta.json").read_text())["dtype"]
    cached = np.concatenate([np.fromfile(entry / f"{split}.bin", dtype=dtype) for split in ("train", "val")])
    assert cached.tolist() == expected


BAD = {
    "not JSON": ("{not json\n", "is not JSON"),
    "no field": (json.dumps({"body": "x"}) + "\n", "has no field `text` (the record has: body)"),
    "not a string": (json.dumps({"text": 7}) + "\n", "has a number in `text`, not a string"),
}


@pytest.mark.parametrize("case", BAD)
def test_a_bad_record_is_one_line_and_nothing_is_cached(tmp_path, texts, case):
    lines = json_lines(texts).decode().splitlines(keepends=True)
    bad, reason = BAD[case]
    lines.insert(3, bad)
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(lines))
    result = train(tmp_path, path)
    one_error_line(result, f"bad.jsonl line 4 {reason}")
    assert "data.skip_bad_records=true" in result.stderr
    cache = tmp_path / "cache"
    assert not list(cache.glob("tokenizers/*.json")) and not list(cache.glob("tokens/*/meta.json"))

    (tmp_path / "skipping").mkdir()
    result = train(tmp_path / "skipping", path, "data.skip_bad_records=true")
    assert result.returncode == 0, result.stderr[-3000:]
    log = log_of(tmp_path / "skipping")
    assert f"Data: {len(texts)} documents" in log
    assert f"skipped 1 bad record (data.skip_bad_records=true); the first: {path} line 4: {reason}" in log


@pytest.mark.parametrize(
    "name,content,needle",
    [
        ("cut.jsonl.gz", lambda raw: gzip.compress(raw)[:-30], "cut.jsonl.gz is cut short"),
        ("cut.jsonl.zst", lambda raw: zstandard.ZstdCompressor().compress(raw)[:-30], "cut.jsonl.zst is cut short"),
        ("plain.jsonl.gz", lambda raw: raw, "plain.jsonl.gz is not a valid gzip file"),
        ("text.parquet", lambda raw: raw, "text.parquet is not a Parquet file"),
    ],
)
def test_a_damaged_or_misnamed_file_is_one_line(tmp_path, texts, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content(json_lines(texts)))
    one_error_line(train(tmp_path, path), needle)
    assert not list((tmp_path / "cache").glob("tokenizers/*.json"))


def test_a_text_field_that_no_record_has_names_the_fields_there_are(tmp_path, texts):
    path = tmp_path / "stories.jsonl"
    path.write_bytes(json_lines(texts, field="story"))
    one_error_line(train(tmp_path, path), "stories.jsonl line 1 has no field `text` (the record has: id, story)")
    (tmp_path / "fixed").mkdir()
    result = train(tmp_path / "fixed", path, "data.text_field=story")
    assert result.returncode == 0, result.stderr[-3000:]
