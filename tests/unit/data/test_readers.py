"""Where documents come from (data/readers.py): the bundled corpora, and files by path, folder or glob,
sorted, each read once, a path that exists read even if it looks like a pattern, and one line for
what cannot be read."""

from __future__ import annotations

import errno
import os

import pytest
from helpers import prepare, text_config

from fragment_llm.config.schema import ConfigError, DataConfig, DataSource
from fragment_llm.data import cache as cache_module
from fragment_llm.data import readers as readers_module
from fragment_llm.data.corpus import collect_documents
from fragment_llm.data.readers import text_documents


def test_missing_paths_and_empty_folders_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        collect_documents(text_config(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no text, JSON Lines or Parquet files"):
        collect_documents(text_config(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="matches no files"):
        collect_documents(text_config(tmp_path / "*.md"))


def test_folders_and_globs_give_sorted_documents(tmp_path):
    for name in ("b.txt", "a.txt", "sub/c.txt", "notes.md"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text(f"text of {name}\n")
    names = [d.name for d in collect_documents(text_config(tmp_path))]
    assert [n.rsplit("/", 1)[-1] for n in names] == ["a.txt", "b.txt", "c.txt"]
    names = [d.name for d in collect_documents(text_config(tmp_path / "**" / "*.md"))]
    assert [n.rsplit("/", 1)[-1] for n in names] == ["notes.md"]


def test_bundled_corpora_are_there():
    pydoc = collect_documents(DataConfig(source=DataSource.pydoc))
    assert len(pydoc) > 50 and 400_000 < sum(d.size for d in pydoc) < 1_000_000
    stdlib = collect_documents(DataConfig(source=DataSource.stdlib))
    assert sum(d.size for d in stdlib) > 5_000_000
    assert not any("/test/" in d.name for d in stdlib)


@pytest.mark.parametrize("pattern", ["{root}", "{root}/**/*.txt", "{root}/**", "{root}/*/*.txt"])
def test_links_never_read_a_file_twice(tmp_path, pattern):
    root = tmp_path / "texts"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("first file\n")
    (root / "sub" / "b.txt").write_text("second file\n")
    (root / "sub" / "loop").symlink_to("..")  # sub/loop/sub/loop/... is the same folder again
    (root / "sub" / "also_a.txt").symlink_to(root / "a.txt")
    documents = text_documents(pattern.format(root=root))
    real_names = sorted(os.path.realpath(document.name) for document in documents)
    assert real_names == [str(root / "a.txt"), str(root / "sub" / "b.txt")]


@pytest.mark.parametrize("name", ["a[1].txt", "notes*.txt", "what?.txt", "data[2]"])
def test_a_path_that_exists_is_read_even_if_it_looks_like_a_pattern(tmp_path, name):
    (tmp_path / "a1.txt").write_text("decoy that the pattern a[1].txt matches\n")
    (tmp_path / "notes_old.txt").write_text("decoy\n")
    (tmp_path / "whatX.txt").write_text("decoy\n")
    target = tmp_path / name
    if name.endswith(".txt"):
        target.write_text("the real text\n")
        expected = [str(target)]
    else:
        target.mkdir()
        (target / "x.txt").write_text("the real text\n")
        expected = [str(target / "x.txt")]
    assert [document.name for document in text_documents(str(target))] == expected


def make_unreadable(kind, tmp_path, monkeypatch):
    """A path of the given kind, and the folder that holds it."""
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "good.txt").write_text("readable text\n" * 50)
    bad = folder / "bad.txt"
    if kind == "no permission":
        bad.write_text("secret\n")
        bad.chmod(0)
        if os.geteuid() == 0:  # root reads it anyway: answer as the system answers anyone else

            def open_as_user(path, *args, **kwargs):
                if os.fspath(path) == str(bad):
                    raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
                return open(path, *args, **kwargs)

            monkeypatch.setattr(readers_module, "open", open_as_user, raising=False)
    elif kind == "pipe":
        os.mkfifo(bad)
    elif kind == "broken link":
        bad.symlink_to(folder / "gone.txt")
    elif kind == "device":
        bad.symlink_to("/dev/null")
    return bad, folder


UNREADABLE = {
    "no permission": "Permission denied; fix its permissions",
    "pipe": "not a regular file",
    "broken link": "broken link; fix the link",
    "device": "not a regular file",
}


@pytest.mark.parametrize("via", ["path", "folder"])
@pytest.mark.parametrize("kind", UNREADABLE)
def test_unreadable_files_are_one_line_errors_before_any_training(tmp_path, monkeypatch, kind, via):
    bad, folder = make_unreadable(kind, tmp_path, monkeypatch)
    monkeypatch.setattr(cache_module, "train_tokenizer", lambda *args: pytest.fail("must fail before training"))
    with pytest.raises(ConfigError) as error:
        prepare(bad if via == "path" else folder, tmp_path / "cache", block_size=16)
    message = str(error.value)
    assert message.startswith(f"data: cannot read {bad}: ") and UNREADABLE[kind] in message
    assert "\n" not in message
    assert message.endswith("remove it from data.path")


# ---- formats: each file read by its name, a folder of them, and what datasets wrote ----------------------
def write_formats(root, texts):
    """The same texts as JSON Lines, compressed JSON Lines, Parquet and a save_to_disk folder."""
    import gzip
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    lines = "".join(json.dumps({"id": i, "text": text}) + "\n" for i, text in enumerate(texts)).encode()
    root.mkdir(parents=True, exist_ok=True)
    (root / "a.jsonl").write_bytes(lines)
    (root / "b.jsonl.gz").write_bytes(gzip.compress(lines))
    (root / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines))
    pq.write_table(pa.table({"text": texts}), root / "d.parquet", row_group_size=7)
    return root


TEXTS = [f"document {i}: " + "words and more words " * (i % 5 + 1) for i in range(40)]


def record_texts(documents):
    return [text for document in documents for text in document.texts() if text is not None]


@pytest.mark.parametrize("name", ["a.jsonl", "b.jsonl.gz", "c.jsonl.zst", "d.parquet"])
def test_each_format_gives_its_records_texts(tmp_path, name):
    write_formats(tmp_path, TEXTS)
    assert record_texts(collect_documents(text_config(tmp_path / name))) == TEXTS


def test_a_folder_takes_every_format_and_a_saved_dataset_in_it(tmp_path):
    import datasets

    write_formats(tmp_path / "corpus", TEXTS)
    (tmp_path / "corpus" / "notes.md").write_text("not a corpus file\n")
    datasets.Dataset.from_dict({"text": TEXTS}).save_to_disk(str(tmp_path / "corpus" / "saved"))
    documents = collect_documents(text_config(tmp_path / "corpus"))
    assert [document.name.split("corpus/")[1] for document in documents] == [
        "a.jsonl",
        "b.jsonl.gz",
        "c.jsonl.zst",
        "d.parquet",
        "saved/data-00000-of-00001.arrow",  # not the folder's dataset_info.json and state.json
    ]
    assert record_texts(documents) == TEXTS * 5


def test_a_saved_dataset_dict_reads_data_split(tmp_path):
    import datasets

    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"text": TEXTS[:30]}),
            "test": datasets.Dataset.from_dict({"text": TEXTS[30:]}),
        }
    ).save_to_disk(str(tmp_path / "dict"))
    assert record_texts(collect_documents(text_config(tmp_path / "dict"))) == TEXTS[:30]
    config = DataConfig(source=DataSource.text, path=str(tmp_path / "dict"), split="test", val_fraction=0.1)
    assert record_texts(collect_documents(config)) == TEXTS[30:]
    config = DataConfig(source=DataSource.text, path=str(tmp_path / "dict"), split="validation", val_fraction=0.1)
    with pytest.raises(ConfigError, match=r"has no split `validation` \(it has: train, test\); set data.split"):
        collect_documents(config)


def test_a_hub_dataset_through_datasets(tmp_path, monkeypatch):
    """data=hf loads through datasets.load_dataset: a local dataset folder stands in for the hub here."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    write_formats(tmp_path / "owner_name", TEXTS)
    for name in ("b.jsonl.gz", "c.jsonl.zst", "d.parquet"):
        (tmp_path / "owner_name" / name).unlink()
    config = DataConfig(source=DataSource.hf, name=str(tmp_path / "owner_name"), val_fraction=0.1)
    assert record_texts(collect_documents(config)) == TEXTS
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    config = DataConfig(source=DataSource.hf, name="nobody/no-such-dataset", val_fraction=0.1)
    with pytest.raises(
        ConfigError, match=r"data.name=nobody/no-such-dataset \(split train\) could not be loaded \(offline"
    ):
        collect_documents(config)


@pytest.mark.parametrize(
    "module,name,extra",
    [("zstandard", "c.jsonl.zst", "data"), ("pyarrow", "d.parquet", "data"), ("datasets", None, "hf")],
)
def test_a_missing_package_names_its_extra(tmp_path, monkeypatch, module, name, extra):
    import builtins

    real_import = builtins.__import__

    def without(requested, *args, **kwargs):
        if requested == module or requested.startswith(module + "."):
            raise ImportError(f"No module named {module!r}")
        return real_import(requested, *args, **kwargs)

    write_formats(tmp_path, TEXTS)
    monkeypatch.setattr(builtins, "__import__", without)
    if name is None:
        config = DataConfig(source=DataSource.hf, name="owner/name", val_fraction=0.1)
    else:
        config = text_config(tmp_path / name)
    with pytest.raises(Exception, match=rf"pip install 'fragment-llm\[{extra}\]'") as caught:
        record_texts(collect_documents(config))
    assert "\n" not in str(caught.value)
