"""Generation, evaluation and the training-time samples and bits per byte, on one tiny trained run."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fragment_llm.config.schema import DataConfig, DataSource
from fragment_llm.data.corpus import collect_documents, split_documents
from fragment_llm.data.tokenizer import end_of_text_id
from fragment_llm.model.evaluate import bits_per_byte, evaluate_documents
from fragment_llm.model.generate import Sampling, TextStream, generate_text, generate_tokens, sample_next
from fragment_llm.runs.records import RunError
from fragment_llm.train.from_run import load_run

GREEDY = Sampling(temperature=0)


@pytest.fixture(scope="module")
def trained(trained_run):
    return load_run(trained_run)


def tokens(trained, prompt, count, sampling=GREEDY, seed=0, use_cache=True):
    ids = trained.tokenizer.encode(prompt, add_special_tokens=False).ids
    generator = torch.Generator().manual_seed(seed)
    return list(generate_tokens(trained.model, ids, count, sampling, generator, use_cache))


def test_cached_and_uncached_greedy_paths_give_the_same_text_past_the_context(trained):
    # 300 new tokens on a 128-token context: the window slides (and the cache restarts) twice.
    cached = tokens(trained, "The import statement", 300)
    assert len(cached) == 300
    assert cached == tokens(trained, "The import statement", 300, use_cache=False)


def test_same_seed_same_text_and_another_seed_other_text(trained):
    sampling = Sampling(temperature=1.0, top_k=0)
    first = tokens(trained, "The", 60, sampling, seed=7)
    assert first == tokens(trained, "The", 60, sampling, seed=7)
    assert first != tokens(trained, "The", 60, sampling, seed=8)


def test_top_k_of_one_and_a_tiny_top_p_are_greedy(trained):
    greedy = tokens(trained, "The", 30)
    assert tokens(trained, "The", 30, Sampling(temperature=1.5, top_k=1)) == greedy
    assert tokens(trained, "The", 30, Sampling(temperature=1.5, top_k=0, top_p=1e-6)) == greedy


def test_top_k_and_top_p_keep_only_the_likeliest_tokens():
    logits = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0])
    generator = torch.Generator().manual_seed(0)
    top_k = {sample_next(logits, Sampling(1.0, top_k=2), generator) for _ in range(200)}
    assert top_k == {0, 1}
    # Softmax of these logits: 0.64, 0.24, 0.09, ...: top-p 0.8 keeps the first two.
    top_p = {sample_next(logits, Sampling(1.0, top_k=0, top_p=0.8), generator) for _ in range(200)}
    assert top_p == {0, 1}


def test_padded_vocabulary_rows_are_never_sampled(trained_run):
    trained = load_run(trained_run)
    vocab = trained.config.vocab_size
    assert trained.model.wte.num_embeddings > vocab
    boost = torch.zeros(trained.model.wte.num_embeddings)
    boost[vocab:] = 100.0  # make the padding rows the likeliest "tokens" by far
    trained.model.lm_head.register_forward_hook(lambda module, inputs, logits: logits + boost)
    for sampling in (GREEDY, Sampling(temperature=2.0, top_k=0)):
        assert max(tokens(trained, "The", 50, sampling)) < vocab


def test_text_streams_whole_characters_only(trained):
    text = "naïve café: 😀 and 中文"
    ids = trained.tokenizer.encode(text, add_special_tokens=False).ids
    stream = TextStream(trained.tokenizer)
    pieces = [stream.push(token) for token in ids]
    assert "".join(pieces) == text
    assert not any("\ufffd" in piece for piece in pieces)


def test_generated_text_is_the_tokens_up_to_the_end_of_the_document(trained):
    sampling = Sampling(temperature=1.0, top_k=0)
    ids = tokens(trained, "The", 80, sampling, seed=3)
    end = end_of_text_id(trained.tokenizer)
    expected = trained.tokenizer.decode(ids[: ids.index(end)] if end in ids else ids)
    generator = torch.Generator().manual_seed(3)
    assert "".join(generate_text(trained.model, trained.tokenizer, "The", 80, sampling, generator)) == expected
    # An empty prompt starts a new document: the continuation of a lone end-of-text token.
    after_end = generate_tokens(trained.model, [end], 5, GREEDY, torch.Generator(), stop_token=end)
    expected = trained.tokenizer.decode(list(after_end))
    empty = "".join(generate_text(trained.model, trained.tokenizer, "", 5, GREEDY, torch.Generator()))
    assert empty == expected and empty


def test_training_reports_bits_per_byte_and_writes_samples(trained_run):
    summary = json.loads((trained_run / "summary.json").read_text())
    assert summary["best_val_bpb"] == pytest.approx(
        bits_per_byte(summary["best_val_loss"], summary["val_tokens"], val_bytes(trained_run))
    )
    log = (trained_run / "train.log").read_text()
    assert "bits per byte" in log
    assert "Step 20 sample:" in log and "Step 40 sample:" in log

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    assert "val/bpb" in events.Tags()["scalars"]
    bpb = events.Scalars("val/bpb")[-1].value
    loss = events.Scalars("val/loss")[-1].value
    assert bpb == pytest.approx(loss / math.log(2) * summary["val_tokens"] / val_bytes(trained_run), rel=1e-5)
    assert summary["val_bpb"] == pytest.approx(bpb, rel=1e-5)
    assert "sample/text_summary" in events.Tags()["tensors"]


def val_bytes(trained_run) -> int:
    data = load_run(trained_run).settings["data"]
    settings = DataConfig(source=DataSource(data["source"]), path=data["path"], val_fraction=data["val_fraction"])
    return sum(document.size for document in split_documents(collect_documents(settings), settings.val_fraction)[1])


def test_bits_per_byte_is_nats_per_token_times_tokens_per_byte_over_ln2():
    assert bits_per_byte(math.log(2), tokens=100, text_bytes=400) == pytest.approx(0.25)


def test_evaluation_of_the_validation_split_matches_training(trained_run, trained):
    documents = split_documents(collect_documents(DataConfig(DataSource.text, trained.settings["data"]["path"])), 0.1)[
        1
    ]
    result = evaluate_documents(trained.model, trained.tokenizer, documents)
    summary = json.loads((trained_run / "summary.json").read_text())
    assert result.tokens == summary["val_tokens"]
    # Training measures a subset of the windows: close, not equal.
    assert result.loss == pytest.approx(summary["val_loss"], rel=0.05)
    assert result.perplexity == pytest.approx(math.exp(result.loss))
    assert result.bits_per_byte == pytest.approx(bits_per_byte(result.loss, result.tokens, result.text_bytes))


def test_a_folder_that_is_not_a_run_is_refused_with_the_fix(tmp_path, trained_run):
    with pytest.raises(RunError, match="is not a run directory"):
        load_run(tmp_path)
    with pytest.raises(RunError, match="is not a directory"):
        load_run(tmp_path / "missing")
    (tmp_path / "tokenizer.json").write_text((trained_run / "tokenizer.json").read_text())
    with pytest.raises(RunError, match=r"has no model \(models/final_model.pt\).*--checkpoint"):
        load_run(tmp_path)
