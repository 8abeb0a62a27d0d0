"""The training loop on tiny configs: learning, equivalences, precision, checkpoints, failures."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import settings_for, tiny_overrides

from fragment_llm.config.schema import ConfigError, SchedulerConfig, SchedulerName
from fragment_llm.model.gpt import GPT, GPTConfig
from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import CheckpointError, load_checkpoint
from fragment_llm.train.hardware import oom_advice, physical_cores, resolve_device
from fragment_llm.train.optim import build_optimizer, lr_factor
from fragment_llm.train.trainer import Trainer, TrainingError, train


def make_trainer(tmp_path, corpus, name="run", **keys) -> Trainer:
    run_dir = tmp_path / name
    run_dir.mkdir()
    return Trainer(settings_for(tiny_overrides(tmp_path, corpus, **keys)), run_dir)


def test_a_short_run_learns_and_fills_its_run_directory(tmp_path, corpus):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    keys = {"train.max_iters": 1000, "train.epochs": 2, "train.checkpoint_every_epochs": 1, "train.save_interval": 0}
    best = train(settings_for(tiny_overrides(tmp_path, corpus, **keys)), run_dir)
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and summary["epochs"] == 2
    assert summary["steps"] > 40 and summary["tokens"] == summary["steps"] * 4 * 128
    assert summary["best_val_loss"] == best
    assert best < summary["initial_val_loss"] - 0.7
    assert summary["train_loss"] < summary["initial_val_loss"]
    assert summary["params"] > 0 and summary["tokens_per_sec"] > 0 and summary["wall_time_s"] > 0
    assert (run_dir / "tokenizer.json").is_file()
    assert (run_dir / "models" / "final_model.pt").is_file()
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "last.pt"]
    assert (run_dir / "checkpoints" / "last.pt").samefile(run_dir / "models" / "final_model.pt")
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))


def test_checkpoints_round_trip_with_the_guides_keys(tmp_path, corpus):
    trainer = make_trainer(tmp_path, corpus, **{"train.max_iters": 3})
    trainer.fit()
    checkpoint = load_checkpoint(tmp_path / "run" / "models" / "final_model.pt")
    for key in ("model_state_dict", "optimizer_state_dict", "scheduler_state_dict", "config", "model_config", "step"):
        assert key in checkpoint
    assert type(checkpoint["config"]) is dict and checkpoint["config"]["optimizer"]["name"] == "adamw"
    assert checkpoint["step"] == 3
    model = GPT(GPTConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model_state_dict"])
    model.eval(), trainer.model.eval()
    idx = torch.randint(0, 512, (2, 64))
    assert torch.equal(model(idx)[0], trainer.model(idx)[0])
    optimizer = build_optimizer(model, trainer.settings.optimizer, torch.device("cpu"))
    optimizer.load_state_dict(checkpoint["optimizer_state_dict"])


def test_gradient_accumulation_matches_a_larger_batch(tmp_path, corpus):
    # SGD's update is linear in the gradient, so equal gradients show as equal weights (Adam's first
    # step, close to sign(gradient), would magnify float noise in gradients near zero).
    big = make_trainer(
        tmp_path, corpus, "big", **{"train.batch_size": 8, "train.grad_accum_steps": 1, "optimizer": "sgd"}
    )
    split = make_trainer(
        tmp_path, corpus, "split", **{"train.batch_size": 4, "train.grad_accum_steps": 2, "optimizer": "sgd"}
    )
    assert all(torch.equal(a, b) for a, b in zip(big.model.parameters(), split.model.parameters()))
    big_loss, _ = big.train_step()
    split_loss, _ = split.train_step()
    assert big_loss == pytest.approx(split_loss, rel=1e-5)
    for a, b in zip(big.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_training_is_deterministic_on_cpu(tmp_path, corpus):
    first = make_trainer(tmp_path, corpus, "first", **{"model.dropout": 0.1, "train.max_iters": 5})
    first.fit()
    second = make_trainer(tmp_path, corpus, "second", **{"model.dropout": 0.1, "train.max_iters": 5})
    second.fit()
    assert all(torch.equal(a, b) for a, b in zip(first.model.parameters(), second.model.parameters()))


@pytest.mark.parametrize("optimizer", ["sgd", "adafactor", "muon"])
def test_other_optimizers_train(tmp_path, corpus, optimizer):
    trainer = make_trainer(tmp_path, corpus, **{"optimizer": optimizer, "optimizer.lr": 1e-2, "train.max_iters": 15})
    initial = trainer.evaluate()
    trainer.fit()
    assert trainer.best_val_loss < initial


def test_bf16_autocast_on_a_cpu_with_native_bf16(tmp_path, corpus, monkeypatch):
    monkeypatch.setattr("fragment_llm.train.hardware.cpu_bf16_speedup", lambda: 2.0)  # as with AVX512-BF16 or AMX
    # bf16 matmuls are hundreds of times slower on a CPU without native bf16, as CI's may be: no
    # TensorBoard, whose MFU would measure the bf16 matmul peak, and two evaluation batches.
    keys = {"train.max_iters": 2, "train.eval_iters": 1, "logging.tensorboard": False}
    trainer = make_trainer(tmp_path, corpus, **{"hardware.amp": True, **keys})
    assert trainer.precision.name == "bf16 autocast" and not trainer.precision.scaler.is_enabled()
    trainer.fit()
    assert math.isfinite(trainer.best_val_loss)


def test_amp_on_a_cpu_without_native_bf16_warns_and_stays_fp32(tmp_path, corpus, monkeypatch, caplog):
    monkeypatch.setattr("fragment_llm.train.hardware.cpu_bf16_speedup", lambda: 0.0025)  # as on an AVX2-only CPU
    trainer = make_trainer(tmp_path, corpus, **{"hardware.amp": True})
    assert trainer.precision.name == "fp32" and trainer.precision.dtype is None
    assert "bf16 matmuls 400x slower than fp32" in caplog.text and "training in fp32" in caplog.text


def test_threads_default_to_the_physical_cores(tmp_path, corpus):
    default = torch.get_num_threads()
    try:
        make_trainer(tmp_path, corpus, name="one", **{"hardware.num_threads": 1})
        assert torch.get_num_threads() == 1
        make_trainer(tmp_path, corpus, name="auto")
        assert torch.get_num_threads() == physical_cores()
    finally:
        torch.set_num_threads(default)


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


def test_a_nan_loss_stops_the_run_and_writes_no_model(tmp_path, corpus):
    trainer = make_trainer(tmp_path, corpus, **{"train.max_iters": 5})
    with torch.no_grad():
        trainer.model.wte.weight.fill_(math.nan)
    before = {name: weight.clone() for name, weight in trainer.model.named_parameters()}
    with pytest.raises(TrainingError, match="loss became nan at step 1; lower the learning rate"):
        trainer.fit()
    # The non-finite loss reached no weight and no optimizer state, and no model was written.
    for name, weight in trainer.model.named_parameters():
        assert torch.equal(weight, before[name]) or name == "wte.weight", name
    assert not trainer.optimizer.state and trainer.step == 0
    assert (tmp_path / "run" / "summary.json").is_file() and not (tmp_path / "run" / "models").exists()


def test_out_of_memory_advice_names_concrete_overrides():
    advice = oom_advice(settings_for(["hardware=gpu", "model=medium"]))
    assert "train.batch_size=8 train.grad_accum_steps=8" in advice
    assert "model.block_size=512" in advice and "\n" not in advice


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_asking_for_a_missing_device_is_a_config_error():
    with pytest.raises(ConfigError, match="hardware.device=cuda but this machine has no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto").type in ("cpu", "mps")


def test_damaged_and_missing_checkpoints_are_one_line_errors(tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="damaged or not a checkpoint"):
        load_checkpoint(damaged)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="/dev/null is not a file; pass a .pt file"):
        load_checkpoint(Path("/dev/null"))


class Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_checkpoints_carrying_code_are_refused(tmp_path, capsys):
    evil = tmp_path / "evil.pt"
    torch.save({"model_state_dict": {}, "payload": Payload()}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert "code ran" not in capsys.readouterr().out


@pytest.mark.slow
def test_torch_compile_trains_the_same_model(tmp_path, corpus):
    keys = {"train.max_iters": 3, "train.eval_iters": 1}
    compiled = make_trainer(tmp_path, corpus, "compiled", **keys, **{"hardware.compile": True})
    compiled.fit()
    eager = make_trainer(tmp_path, corpus, "eager", **keys)
    eager.fit()
    assert compiled.forward is not compiled.model and eager.forward is eager.model
    for a, b in zip(compiled.model.parameters(), eager.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert "_orig_mod" not in next(iter(compiled.state()["model_state_dict"]))


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
