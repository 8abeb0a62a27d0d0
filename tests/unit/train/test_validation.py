"""Validation (train/validation.py): a single corpus scored as it always was, a mixture's sources one by one,
its whole the mean of their figures weighted by the mixture's shares."""

from __future__ import annotations

import torch
from helpers import make_trainer, mixture_overrides, settings_for

from fragment_llm.data.batches import eval_batches
from fragment_llm.model.evaluate import bits_per_byte, loss_sum
from fragment_llm.train.trainer import Trainer


def scored(trainer, tokens, text_bytes):
    """The loss and bits per byte of `tokens`' validation windows, as the trainer scored them before mixtures."""
    train = trainer.settings.train
    batches = eval_batches(tokens, trainer.model_config.block_size, train.batch_size, train.eval_iters, trainer.device)
    total, count = loss_sum(trainer.forward, batches, trainer.precision.autocast)
    totals = torch.tensor([float(total), float(count)])
    loss = (totals[0] / totals[1]).item()
    return loss, bits_per_byte(loss, len(tokens), text_bytes)


def test_a_single_corpus_is_scored_as_before_and_has_no_figures_by_source(tmp_path, corpus):
    trainer = make_trainer(tmp_path, corpus)
    loss, bpb, by_source = trainer.validation()
    assert (loss, bpb) == scored(trainer, trainer.data.val, trainer.data.val_bytes) and by_source == {}


def test_a_mixture_scores_each_source_and_weights_them_by_their_shares(tmp_path, corpus):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    trainer = Trainer(settings_for(mixture_overrides(tmp_path, corpus, weights=(1, 3))), run_dir)
    loss, bpb, by_source = trainer.validation()
    expected = {source.name: scored(trainer, source.val, source.val_bytes) for source in trainer.data.sources}
    assert by_source == expected and list(by_source) == ["prose.txt", "code.txt"]
    assert loss == 0.25 * expected["prose.txt"][0] + 0.75 * expected["code.txt"][0]
    assert bpb == 0.25 * expected["prose.txt"][1] + 0.75 * expected["code.txt"][1]
