"""The token cache (data/cache.py, `prepare_data`): trained, encoded and reused; a corpus too small is one
line; and under stress: files that change while they are read, damaged entries and tokenizers rebuilt,
stale temporary files of dead processes removed."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers import mixture_corpora, prepare

from fragment_llm.config.schema import ConfigError, DataConfig, DataSource
from fragment_llm.data import cache as cache_module
from fragment_llm.data.cache import prepare_data
from fragment_llm.data.tokenizer import END_OF_TEXT


def test_prepare_trains_encodes_and_caches(tmp_path, corpus, caplog, monkeypatch):
    cache = tmp_path / "cache"
    first = prepare(corpus, cache)
    assert isinstance(first.train, np.memmap) and isinstance(first.val, np.memmap)
    assert first.train.dtype == np.uint16
    assert first.vocab_size == 512
    assert first.tokenizer.token_to_id(END_OF_TEXT) == 0
    assert first.train_bytes + first.val_bytes == corpus.stat().st_size
    sample = corpus.read_text()[:2000]
    assert first.tokenizer.decode(first.tokenizer.encode(sample).ids) == sample

    def forbidden(*args, **kwargs):
        raise AssertionError("a second run on the same corpus must not tokenize")

    with monkeypatch.context() as patch:
        patch.setattr(cache_module, "train_tokenizer", forbidden)
        patch.setattr(cache_module, "_encode", forbidden)
        with caplog.at_level(logging.INFO, logger="fragment_llm"):
            second = prepare(corpus, cache)
    assert "reusing" in caplog.text
    assert np.array_equal(first.train, second.train) and np.array_equal(first.val, second.val)
    assert second.seconds < 1.0

    retrained = prepare(corpus, cache, retrain=True)
    assert retrained.tokenizer_hash == first.tokenizer_hash  # BPE training is deterministic


def test_the_token_files_are_the_same_whichever_library_encodes(tmp_path, corpus, caplog):
    """tiktoken (the `fast` extra) encodes a large corpus; forced here on a small one, its token files are
    byte for byte those of tokenizers, and the log says which encoded."""
    pytest.importorskip("tiktoken")
    from fragment_llm.data.fast_encoder import encoding_with

    text = corpus.read_text()
    texts = ["x" * 3000 + " the end\n" + "漢字" * 700 + text, "<|endoftext|> in text\r\n" + text[:10_000]]
    for index, text in enumerate(texts):
        (tmp_path / "corpus").mkdir(exist_ok=True)
        (tmp_path / "corpus" / f"{index}.txt").write_text(text, encoding="utf-8")
    prepared = {}
    for library in ("tokenizers", "tiktoken"):
        with encoding_with(library), caplog.at_level(logging.INFO, logger="fragment_llm"):
            prepared[library] = prepare(tmp_path / "corpus", tmp_path / library, vocab_size=300)
        assert f"with {library}" in caplog.records[-2].getMessage()  # Data: encoded in ... with tiktoken
    assert prepared["tokenizers"].tokenizer_hash == prepared["tiktoken"].tokenizer_hash
    for split in ("train", "val"):
        assert np.array_equal(getattr(prepared["tokenizers"], split), getattr(prepared["tiktoken"], split))


def test_a_corpus_too_small_for_one_block_is_an_error(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("A short text.\n" * 20)
    with pytest.raises(ConfigError) as error:
        prepare(path, tmp_path / "cache")
    assert "too small" in str(error.value) and "model.block_size=128" in str(error.value)
    assert not (tmp_path / "cache").exists()


def test_fewer_merges_than_asked_sizes_the_model_from_the_real_vocabulary(tmp_path, corpus, caplog):
    with caplog.at_level(logging.WARNING, logger="fragment_llm"):
        prepared = prepare(corpus, tmp_path / "cache", vocab_size=50_000)
    assert prepared.vocab_size < 50_000
    assert "fewer than model.vocab_size=50000" in caplog.text


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


# ---- a mixture ---------------------------------------------------------------------------------------------
def prepare_mixture(folder, corpus, cache, weights=(3, 1), **keys):
    """A mixture of mixture_corpora (prose.txt, code.txt) weighted `weights`, prepared into `cache`."""
    prose, code = mixture_corpora(folder, corpus)
    sources = [{"path": str(prose), "weight": weights[0]}, {"path": str(code), "weight": weights[1]}]
    data = DataConfig(source=DataSource.mix, sources=sources, val_fraction=0.1)
    options = dict(vocab_size=512, block_size=128, min_frequency=2, retrain=False, cache_dir=cache)
    return prepare_data(data, **{**options, **keys})


def test_each_source_of_a_mixture_has_the_token_entry_it_would_have_alone(tmp_path, corpus, monkeypatch):
    cache = tmp_path / "cache"
    mixed = prepare_mixture(tmp_path, corpus, cache)
    assert mixed.mixture and [(source.name, source.share) for source in mixed.sources] == [
        ("prose.txt", 0.75),
        ("code.txt", 0.25),
    ]
    assert mixed.train_tokens == sum(len(source.train) for source in mixed.sources)
    for source, path in zip(mixed.sources, mixture_corpora(tmp_path, corpus)):
        assert source.train_bytes + source.val_bytes == path.stat().st_size  # its own split of 0.1
        with monkeypatch.context() as patch:
            patch.setattr(cache_module, "_encode", lambda *args: pytest.fail("a source's entry is encoded again"))
            alone = prepare(path, cache, tokenizer=mixed.tokenizer)
        assert not alone.mixture and np.array_equal(alone.train, source.train) and np.array_equal(alone.val, source.val)
    assert mixed.corpus_hash not in {prepare(path, cache).corpus_hash for path in mixture_corpora(tmp_path, corpus)}


def test_a_mixtures_tokenizer_trains_on_its_sources_at_their_weights(tmp_path, corpus, caplog):
    prose, code = (path.read_text() for path in mixture_corpora(tmp_path, corpus))

    def tokens_per_byte(tokenizer, text):
        return len(tokenizer.encode(text).ids) / len(text.encode())

    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        prose_heavy = prepare_mixture(tmp_path, corpus, tmp_path / "cache", weights=(9, 1)).tokenizer
    assert re.search(
        r"on the mixture at its weights \(prose.txt \d+ KB \(all\), code.txt \d+ KB of \d+ KB\)", caplog.text
    )
    code_heavy = prepare_mixture(tmp_path, corpus, tmp_path / "cache", weights=(1, 9)).tokenizer
    assert tokens_per_byte(prose_heavy, prose) < 0.9 * tokens_per_byte(code_heavy, prose)
    assert tokens_per_byte(code_heavy, code) < 0.9 * tokens_per_byte(prose_heavy, code)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="fragment_llm"):
        same_shares = prepare_mixture(tmp_path, corpus, tmp_path / "cache", weights=(18, 2)).tokenizer
    assert "Tokenizer: reusing" in caplog.text and same_shares.to_str() == prose_heavy.to_str()


def test_a_source_too_small_is_an_error_naming_it(tmp_path, corpus):
    small = tmp_path / "small.txt"
    small.write_text("A short text.\n" * 20)
    prose, _ = mixture_corpora(tmp_path, corpus)
    data = DataConfig(source=DataSource.mix, sources=[{"path": str(prose)}, {"path": str(small)}], val_fraction=0.1)
    with pytest.raises(ConfigError) as error:
        prepare_data(data, vocab_size=512, block_size=128, min_frequency=2, retrain=False, cache_dir=tmp_path / "c")
    assert str(error.value).startswith("data.sources[1] (small.txt): data: the corpus is too small")
    assert not (tmp_path / "c").exists()
