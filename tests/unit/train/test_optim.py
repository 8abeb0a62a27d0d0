"""The optimizers and the learning-rate schedule (train/optim.py): each optimizer trains, Muon takes the
blocks' matrices and steps as torch's does, cautious weight decay, and the schedules step for step."""

from __future__ import annotations

import pytest
import torch
from helpers import make_trainer, settings_for, small_gpt

from fragment_llm.config.schema import SchedulerConfig, SchedulerName
from fragment_llm.train.optim import CautiousWeightDecay, build_optimizer, lr_factor


@pytest.mark.parametrize("optimizer", ["sgd", "adafactor", "muon"])
def test_other_optimizers_train(tmp_path, corpus, optimizer):
    trainer = make_trainer(tmp_path, corpus, **{"optimizer": optimizer, "optimizer.lr": 1e-2, "train.max_iters": 15})
    initial = trainer.evaluate()
    trainer.fit()
    assert trainer.best_val_loss < initial


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest(tmp_path, corpus):
    trainer = make_trainer(tmp_path, corpus, **{"optimizer": "muon", "model.n_layer": 2})
    muon = trainer.optimizer.optimizers["muon"]
    muon_ids = {id(p) for group in muon.param_groups for p in group["params"]}
    named = dict(trainer.model.named_parameters())
    assert {name for name, p in named.items() if id(p) in muon_ids} == {
        name for name, p in named.items() if name.startswith("blocks.") and p.dim() == 2
    }
    adamw_ids = {id(p) for group in trainer.optimizer.optimizers["adamw"].param_groups for p in group["params"]}
    assert adamw_ids | muon_ids == {id(p) for p in named.values()} and not adamw_ids & muon_ids
    assert trainer.optimizer.param_groups == [*muon.param_groups, *trainer.optimizer.optimizers["adamw"].param_groups]


def test_cautious_weight_decay_decays_only_weights_the_update_moves_towards_zero():
    weight = torch.nn.Parameter(torch.tensor([1.0, 1.0, -1.0, -1.0]))
    inner = torch.optim.SGD([{"params": [weight], "weight_decay": 0.5}], lr=0.1)
    optimizer = CautiousWeightDecay(inner)
    weight.grad = torch.tensor([1.0, -1.0, 1.0, -1.0])  # steps: -0.1, +0.1, -0.1, +0.1
    optimizer.step()
    # Coordinates 0 and 3 move towards zero, so they also decay by lr x 0.5 x weight = 0.05.
    torch.testing.assert_close(weight.detach(), torch.tensor([0.85, 1.1, -1.1, -0.85]))
    settings = settings_for(["optimizer.cautious_weight_decay=true"]).optimizer
    built = build_optimizer(small_gpt(), settings, torch.device("cpu"))
    assert isinstance(built, CautiousWeightDecay)
    assert {group["weight_decay"] for group in built.param_groups} == {0.0}
    assert {group["cautious_weight_decay"] for group in built.param_groups} == {0.0, settings.weight_decay}


def test_our_muon_steps_as_torchs_but_orthogonalises_in_fp32_on_a_cpu():
    from fragment_llm.train.optim import Muon, orthogonalise

    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(96, 32) * 0.02), torch.nn.Parameter(torch.randn(32, 64) * 0.02)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    mine = Muon(ours, lr=2e-3, weight_decay=0.1, momentum=0.95, nesterov=True)
    reference = torch.optim.Muon(
        theirs, lr=2e-3, weight_decay=0.1, momentum=0.95, nesterov=True, adjust_lr_fn="match_rms_adamw"
    )
    for _ in range(3):
        for mine_p, their_p in zip(ours, theirs):
            mine_p.grad = torch.randn_like(mine_p)
            their_p.grad = mine_p.grad.clone()
        mine.step()
        reference.step()
    for mine_p, their_p in zip(ours, theirs):
        # torch's bf16 iteration differs from fp32 by its rounding: well under a step's size (lr x 0.2 sqrt(96)).
        assert (mine_p - their_p).abs().max() < 2e-4
    mine.load_state_dict(reference.state_dict())  # the same state: checkpoints of either load
    matrix = torch.randn(64, 32)
    singular = torch.linalg.svdvals(orthogonalise(matrix))
    assert orthogonalise(matrix).dtype == torch.float32 and 0.5 < singular.min() and singular.max() < 1.5


def test_schedules_warm_up_then_decay():
    def curve(name, steps=100, **keys):
        settings = SchedulerConfig(name=name, **{"warmup_fraction": 0.1, "min_lr_fraction": 0.1, **keys})
        return [lr_factor(settings, step / steps, 1 / steps) for step in range(steps)]

    cosine = curve(SchedulerName.cosine)
    assert cosine[0] < 0.2 and cosine[:10] == sorted(cosine[:10])
    assert cosine[10] == pytest.approx(1.0) and cosine[10:] == sorted(cosine[10:], reverse=True)
    assert cosine[-1] == pytest.approx(0.1, abs=0.01)
    linear = curve(SchedulerName.linear)
    assert linear[55] == pytest.approx(0.55, abs=0.02) and linear[-1] == pytest.approx(0.1, abs=0.02)
    assert curve(SchedulerName.constant)[10:] == [pytest.approx(1.0)] * 90
    wsd = curve(SchedulerName.wsd, decay_fraction=0.3, min_lr_fraction=0.0)
    assert wsd[10:70] == [pytest.approx(1.0)] * 60 and wsd[70:] == sorted(wsd[70:], reverse=True)
    assert wsd[85] == pytest.approx(0.5) and wsd[-1] == pytest.approx(1 / 30)


def test_the_schedule_matches_torchs_schedulers_step_for_step():
    steps, warmup = 50, 5
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer,
        [
            torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1 / (warmup + 1), total_iters=warmup),
            torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps - warmup, eta_min=0.1),
        ],
        milestones=[warmup],
    )
    settings = SchedulerConfig(name=SchedulerName.cosine, warmup_fraction=warmup / steps, min_lr_fraction=0.1)
    for step in range(steps):
        assert lr_factor(settings, step / steps, 1 / steps) == pytest.approx(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
