"""The corpus and the token cache under stress: files that change while they are read, damaged cache
entries, interrupted preparations, links, odd names, unreadable files and text that BPE training
used to crawl through."""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from tokenizers import pre_tokenizers

from fragment_llm.config.schema import ConfigError, DataConfig, DataSource
from fragment_llm.data import cache as cache_module
from fragment_llm.data import corpus as corpus_module
from fragment_llm.data import readers as readers_module
from fragment_llm.data.cache import prepare_data
from fragment_llm.data.corpus import collect_documents, fingerprint
from fragment_llm.data.readers import text_documents
from fragment_llm.data.tokenizer import MAX_RUN, byte_level_pre_tokenizer, train_tokenizer


def text_config(path) -> DataConfig:
    return DataConfig(source=DataSource.text, path=str(path), val_fraction=0.1)


def prepare(path, cache, **keys):
    options = dict(vocab_size=512, block_size=128, min_frequency=2, retrain=False, cache_dir=cache)
    options.update(keys)
    return prepare_data(text_config(path), **options)


def replace_file(path, content: bytes) -> None:
    """Replace `path` the way an editor saves: write a new file, rename it over the old one. (Old
    memory maps keep the old file, so a test can damage a cached file that a memmap still maps.)"""
    temporary = path.with_name(path.name + ".new")
    temporary.write_bytes(content)
    os.replace(temporary, path)


def cache_entries(cache) -> list[str]:
    """What the cache holds under a final name: tokenizers and complete token entries."""
    entries = [*cache.glob("tokenizers/*.json"), *cache.glob("tokens/*/meta.json")]
    return sorted(str(entry.relative_to(cache)) for entry in entries)


@pytest.fixture
def own_corpus(tmp_path, corpus):
    path = tmp_path / "corpus.txt"
    shutil.copyfile(corpus, path)
    return path


@pytest.mark.parametrize("moment", ["training", "encoding the training split", "encoding the validation split"])
@pytest.mark.parametrize("edit", ["same size", "shorter"])
def test_a_file_replaced_during_preparation_leaves_no_cache_entry(tmp_path, own_corpus, monkeypatch, moment, edit):
    original = own_corpus.read_bytes()
    edited = original.replace(b"e", b"E") if edit == "same size" else original[: len(original) // 2]
    cache = tmp_path / "cache"
    calls = {"encode": 0}
    real_train, real_encode = cache_module.train_tokenizer, cache_module._encode

    def train_after_replacing(*args):
        if moment == "training":
            replace_file(own_corpus, edited)
        return real_train(*args)

    def encode_after_replacing(*args):
        calls["encode"] += 1
        if moment == ["encoding the training split", "encoding the validation split"][calls["encode"] - 1]:
            replace_file(own_corpus, edited)
        return real_encode(*args)

    monkeypatch.setattr(cache_module, "train_tokenizer", train_after_replacing)
    monkeypatch.setattr(cache_module, "_encode", encode_after_replacing)
    with pytest.raises(ConfigError) as error:
        prepare(own_corpus, cache)
    message = str(error.value)
    assert message == f"data: {own_corpus} changed while it was being read; run again"
    if moment == "training":
        assert cache_entries(cache) == []
    else:  # the tokenizer was trained on the fingerprinted text: a right entry; no token entry
        assert [entry.split("/")[0] for entry in cache_entries(cache)] == ["tokenizers"]

    monkeypatch.undo()
    again = prepare(own_corpus, cache)  # the file now holds the edited text, and stays so
    fresh = prepare(own_corpus, tmp_path / "fresh cache")
    assert again.tokenizer_hash == fresh.tokenizer_hash and again.corpus_hash == fresh.corpus_hash
    assert np.array_equal(again.train, fresh.train) and np.array_equal(again.val, fresh.val)


def zero_fill(path) -> bytes:
    """The file's content with 64 bytes in its middle zeroed: same size, damaged."""
    content = path.read_bytes()
    middle = len(content) // 2
    return content[:middle] + bytes(64) + content[middle + 64 :]


def edit_meta(change):
    def damage(entry):
        meta = json.loads((entry / "meta.json").read_text())
        change(meta)
        replace_file(entry / "meta.json", json.dumps(meta).encode())

    return damage


DAMAGES = {
    "truncated train.bin": lambda entry: replace_file(entry / "train.bin", (entry / "train.bin").read_bytes()[:-2]),
    "zero-filled train.bin": lambda entry: replace_file(entry / "train.bin", zero_fill(entry / "train.bin")),
    "zero-filled val.bin": lambda entry: replace_file(entry / "val.bin", zero_fill(entry / "val.bin")),
    "missing val.bin": lambda entry: (entry / "val.bin").unlink(),
    "token count off": edit_meta(lambda meta: meta["train"].update(tokens=meta["train"]["tokens"] + 1)),
    "no checksum": edit_meta(lambda meta: meta["val"].pop("blake2b")),
    "wrong dtype": edit_meta(lambda meta: meta.update(dtype="uint32")),
    "meta.json not a dict": lambda entry: replace_file(entry / "meta.json", b"[1, 2]"),
    "meta.json cut short": lambda entry: replace_file(entry / "meta.json", (entry / "meta.json").read_bytes()[:20]),
    "meta.json zero-filled": lambda entry: replace_file(entry / "meta.json", bytes(200)),
}


@pytest.mark.parametrize("damage", DAMAGES, ids=list(DAMAGES))
def test_a_damaged_token_cache_entry_is_rebuilt_with_a_warning(tmp_path, corpus, caplog, monkeypatch, damage):
    cache = tmp_path / "cache"
    first = prepare(corpus, cache)
    expected_train, expected_val = np.array(first.train), np.array(first.val)
    (entry,) = cache.glob("tokens/*")
    DAMAGES[damage](entry)

    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        rebuilt = prepare(corpus, cache)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "\n" not in warnings[0]
    assert "Data: encoded in" in caplog.text
    assert np.array_equal(rebuilt.train, expected_train) and np.array_equal(rebuilt.val, expected_val)

    caplog.clear()
    monkeypatch.setattr(cache_module, "_encode", lambda *args: pytest.fail("a repaired entry must be reused"))
    with caplog.at_level(logging.WARNING, logger="fragment_llm"):
        reused = prepare(corpus, cache)
    assert caplog.text == ""
    assert np.array_equal(reused.train, expected_train)


def test_counts_of_one_are_singular_in_messages(tmp_path, corpus, caplog):
    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        prepare(corpus, cache)
    assert "Data: encoding 1 document into" in caplog.text
    (entry,) = cache.glob("tokens/*")
    replace_file(entry / "train.bin", b"x")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fragment_llm"):
        prepare(corpus, cache)
    assert "(train.bin has 1 byte, not the " in caplog.text and " tokens meta.json says)" in caplog.text


@pytest.mark.parametrize("damage", ["cut short", "zero-filled", "empty", "not a tokenizer"])
def test_a_damaged_cached_tokenizer_is_trained_again(tmp_path, corpus, caplog, damage):
    cache = tmp_path / "cache"
    first = prepare(corpus, cache)
    (tokenizer_file,) = cache.glob("tokenizers/*.json")
    content = tokenizer_file.read_bytes()
    replace_file(
        tokenizer_file,
        {
            "cut short": content[: len(content) // 2],
            "zero-filled": zero_fill(tokenizer_file),
            "empty": b"",
            "not a tokenizer": b'{"version": "1.0"}',
        }[damage],
    )

    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        again = prepare(corpus, cache)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1 and "damaged" in warnings[0] and "\n" not in warnings[0]
    assert "Tokenizer: trained in" in caplog.text
    assert again.tokenizer_hash == first.tokenizer_hash
    assert tokenizer_file.read_bytes() == content


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path, corpus):
    cache = tmp_path / "cache"
    prepare(corpus, cache)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(dead.stdout), os.getpid()
    (entry,) = cache.glob("tokens/*")
    stale = [cache / "tokenizers" / f".abc.json.{dead_pid}.tmp", entry / f".train.bin.{dead_pid}.tmp"]
    kept = [
        cache / "tokenizers" / f".abc.json.{live_pid}.tmp",
        entry / f".meta.json.{live_pid}.tmp",
        entry / ".notes.tmp",
        entry / "train.bin",
    ]
    for path in stale + kept[:-1]:
        path.write_bytes(b"half written")

    prepare(corpus, cache)
    assert [path.exists() for path in stale] == [False, False]
    assert [path.exists() for path in kept] == [True, True, True, True]


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


def test_a_file_that_becomes_unreadable_after_collection_is_a_one_line_error(tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for name in ("a.txt", "b.txt"):
        (folder / name).write_text(f"text of {name}\n")
    documents = collect_documents(text_config(folder))
    (folder / "b.txt").unlink()
    (folder / "b.txt").mkdir()
    with pytest.raises(ConfigError) as error:
        fingerprint(documents)
    assert str(error.value).startswith(f"data: cannot read {folder / 'b.txt'}: Is a directory; ")


LONG_RUNS = {
    "letters": "x" * 10_000,
    "digits": "7" * 10_000,
    "spaces": "a" + " " * 10_000 + "b",
    "newlines": "a" + "\n" * 10_000 + "b",
    "punctuation": "=-" * 5_000,
    "cjk": "漢字" * 5_000,
    "base64": "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODkrLw" * 200,
}


@pytest.mark.parametrize("run", LONG_RUNS, ids=list(LONG_RUNS))
def test_the_pre_tokenizer_cuts_long_runs(run):
    pieces = byte_level_pre_tokenizer().pre_tokenize_str(LONG_RUNS[run])
    assert max(end - start for _, (start, end) in pieces) <= MAX_RUN + 1  # + a word's leading space


def test_ordinary_text_is_split_exactly_as_gpt2_splits_it():
    from pydoc_data.topics import topics  # the bundled corpus, ASCII-art tables included: the defaults' text

    for text in topics.values():
        gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False).pre_tokenize_str(text)
        assert byte_level_pre_tokenizer().pre_tokenize_str(text) == gpt2


def test_decoding_gives_back_the_exact_text(corpus):
    tricky = [
        "👩‍👩‍👧‍👦 family, 🇫🇷 flag, e\u0301 and \u00e9, Å and A\u030a",
        "é" * 200 + " " + "漢字" * 100 + "\t\t\r\n" + " " * 300 + "end",
        LONG_RUNS["base64"] + "==\n" + LONG_RUNS["punctuation"],
        "\x00\x01 control \ufeff BOM \u200b zero width \U0010ffff",
    ]
    tokenizer = train_tokenizer([corpus.read_text()[:20_000], *tricky], vocab_size=512, min_frequency=2)
    for text in tricky:
        assert tokenizer.decode(tokenizer.encode(text).ids) == text


def progress_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if " MB (" in record.getMessage()]


def test_progress_is_logged_for_long_passes_only(tmp_path, corpus, caplog, monkeypatch):
    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        prepare(corpus, tmp_path / "quiet")
    assert "Data: encoded in" in caplog.text and progress_lines(caplog) == []

    caplog.clear()
    monkeypatch.setattr(corpus_module, "PROGRESS_SECONDS", 0.0)  # as if every pass were a long one
    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        prepare(corpus, tmp_path / "verbose")
    progress = progress_lines(caplog)
    for what in ("Data: checking the corpus", "Tokenizer: reading the training split", "Data: encoding"):
        assert any(line.startswith(f"{what}: ") and line.endswith("MB/s)") for line in progress), what
