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
