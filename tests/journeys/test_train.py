"""Training, as a user runs `python run.py`: a run writes every file of its run directory, bad input ends in
one line and no checkpoint, `--cfg job` and `--help` show the composed config, runs started in the same
second get their own directories, other groups compose and run, and a mixture reports each of its sources."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import torch
from helpers import RUN, mixture_corpora, mixture_overrides, run_cli, run_dirs, run_in_process, tiny_overrides
from omegaconf import OmegaConf
from tokenizers import Tokenizer

from fragment_llm.runs.records import METRIC_NAMES
from fragment_llm.train.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow


def test_a_run_writes_every_artifact_of_the_run_directory(tmp_path, corpus):
    short = tmp_path / "short.txt"  # two epochs of about 18 steps
    short.write_text(corpus.read_text()[:25_000])
    overrides = tiny_overrides(tmp_path, short, **{"train.max_iters": 1000, "train.epochs": 2})
    result = run_cli([RUN, "train.checkpoint_every_epochs=1", *overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path / "outputs")
    assert run_dir.name.split("_")[1] == "tiny-cpu"
    for name in (
        ".hydra/config.yaml",
        ".hydra/overrides.yaml",
        ".hydra/hydra.yaml",
        "train.log",
        "tokenizer.json",
        "models/final_model.pt",
        "summary.json",
    ):
        assert (run_dir / name).is_file(), name
    assert OmegaConf.load(run_dir / ".hydra" / "config.yaml").model.n_embd == 64

    log = (run_dir / "train.log").read_text()
    for line in ("Epoch 1/2", "Epoch 2/2", "Train loss: ", "Val loss: ", "Step 0: val loss"):
        assert line in log
    assert "━" not in log and "\r" not in log  # no progress-bar noise
    assert "Epoch 1/2" in result.stdout

    Tokenizer.from_file(str(run_dir / "tokenizer.json")).encode("hello")
    checkpoints = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert checkpoints == ["checkpoint_epoch_1.pt", "checkpoint_epoch_2.pt", "last.pt"]
    for path in [*(run_dir / "checkpoints").iterdir(), run_dir / "models" / "final_model.pt"]:
        assert torch.load(path, weights_only=True)["model_state_dict"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert {"train/loss", "val/loss", "lr", "grad_norm", "tokens_per_sec", "mfu"} <= set(events.Tags()["scalars"])
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 2 and summary["steps"] > 20
    assert len(events.Scalars("train/loss")) == summary["steps"]
    assert summary["val_loss"] < summary["initial_val_loss"]
    assert load_checkpoint(run_dir / "models" / "final_model.pt")["step"] == summary["steps"]


# Found reading the corpus, once the run has its directory: a failed run is recorded there.
BAD_CORPORA = [
    (["data.path={empty}"], "is empty"),
    (["data.path={binary}"], "is not UTF-8 text"),
    (["data.path={small}"], "corpus is too small"),
    (["data.path={missing}"], "does not exist"),
]
# Refused before anything is written (issue 27): no run directory, no outputs/, no cache.
BAD_SETTINGS = [
    (["model.dropout=1.5"], "model.dropout=1.5 is out of range [0.0, 0.9]"),
    (["train.batch_size=0"], "train.batch_size=0 is out of range [1, 256]"),
    (["model.n_layer=0"], "model.n_layer=0 is out of range [1, 48]"),
    (["model.n_embd=100", "model.n_head=3"], "model.n_embd=100 is not divisible by model.n_head=3"),
    (["+model.typo=1"], "model.typo is not a config key"),
    (["model.n_layer=two"], "model.n_layer: Value 'two'"),
    (["optimizer.lr=0.5"], "optimizer.lr=0.5 is out of range"),
    (["hardware.device=tpu"], "hardware.device=tpu is not a device"),
    (["train.resume={missing}"], "does not exist; give a run directory or a checkpoint file"),
    (["train.resume={binary}"], "is damaged or not a checkpoint"),
]


if not torch.cuda.is_available():
    BAD_SETTINGS.append((["hardware.device=cuda"], "this machine has no CUDA device"))
BAD_RUNS = BAD_CORPORA + BAD_SETTINGS


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    (folder / "empty.txt").write_text("")
    (folder / "binary.bin").write_bytes(bytes(range(256)) * 40)
    (folder / "small.txt").write_text("Too short to hold one block of text.\n" * 5)
    return {
        name: str(folder / f"{name}.{ext}")
        for name, ext in [("empty", "txt"), ("binary", "bin"), ("small", "txt"), ("missing", "txt")]
    }


def assert_one_line_and_no_checkpoint(result, outputs, extra, needle):
    assert result.returncode != 0, extra
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], (extra, result.stderr)
    if any(needle == text for _, text in BAD_SETTINGS):
        assert result.returncode == 2 and not outputs.exists(), sorted(outputs.rglob("*"))  # nothing written
        return
    (run_dir,) = run_dirs(outputs / "outputs")
    assert sorted(p.name for p in run_dir.iterdir()) == [".hydra", "summary.json", "train.log"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "failed" and needle in summary["error"]
    assert needle in (run_dir / "train.log").read_text()
    assert not (outputs / "cache" / "tokens").exists()


@pytest.mark.parametrize("extra,needle", BAD_RUNS, ids=[" ".join(extra) for extra, _ in BAD_RUNS])
def test_bad_input_fails_with_one_line_and_writes_no_checkpoint(extra, needle, tmp_path, corpus, bad_files):
    # `python run.py` as a process runs it (one such process below shows they agree), without the seconds
    # of a new Python each: a traceback or a second line fails.
    extra = [item.format(**bad_files) for item in extra]
    outputs = tmp_path / "case"
    overrides = tiny_overrides(outputs, corpus) + extra
    result = run_in_process([RUN, *overrides], cwd=tmp_path)
    assert_one_line_and_no_checkpoint(result, outputs, extra, needle)


def test_bad_input_in_a_process_of_its_own_is_the_same_one_line(tmp_path, corpus, bad_files):
    extra, needle = BAD_RUNS[0]
    extra = [item.format(**bad_files) for item in extra]
    result = run_cli([RUN, *tiny_overrides(tmp_path, corpus), *extra], cwd=tmp_path)
    assert_one_line_and_no_checkpoint(result, tmp_path, extra, needle)


@pytest.mark.parametrize("train", [[RUN], ["-m", "fragment_llm", "train"]], ids=["run.py", "fragment-llm train"])
def test_cfg_job_and_help_show_the_composed_config(train, tmp_path):
    shown = run_in_process([*train, "--cfg", "job", "model=small", "optimizer.lr=3e-4"], cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    config = OmegaConf.create(shown.stdout)
    assert config.model.n_embd == 384 and config.optimizer.lr == 3e-4 and config.hardware.device == "cpu"
    help_text = run_in_process([*train, "--help"], cwd=tmp_path).stdout
    assert (
        "model: auto, large, medium, small, tiny" in help_text
        and "hardware: cpu, cpu_guide, ddp, gpu, gpu_high" in help_text
    )
    assert "debug: fast" in help_text and "model.n_embd=128  [64, 2048]" in help_text  # every key, from the schema
    assert "optimizer.momentum=(unset: only muon, sgd)" in help_text
    assert list(tmp_path.iterdir()) == []  # neither creates a run directory


def test_runs_started_in_the_same_second_get_their_own_directories(tmp_path, corpus):
    empty = tmp_path / "empty.txt"  # each run fails reading it, in a directory of its own
    empty.write_text("")
    overrides = tiny_overrides(tmp_path, empty)
    command = [sys.executable, RUN, *overrides]
    processes = [
        subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)
    ]
    for process in processes:
        process.communicate(timeout=120)
    assert len(run_dirs(tmp_path / "outputs")) == 3


def test_other_groups_compose_and_run(tmp_path, corpus):
    overrides = tiny_overrides(
        tmp_path,
        corpus,
        **{
            "train.max_iters": 3,
            "optimizer": "adafactor",
            "scheduler": "linear",
            "hardware": "gpu",
            "hardware.device": "cpu",
            "hardware.amp": False,
            "train.batch_size": 2,
            "train.grad_accum_steps": 2,
        },
    )
    result = run_in_process([RUN, *overrides], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path / "outputs")
    assert run_dir.name.split("_")[1] == "tiny-gpu"


def test_a_mixture_reports_each_source_beside_the_whole(tmp_path, corpus):
    # As a user types it: data=mix data.sources=[{path:.../prose.txt,weight:3},{path:.../code.txt,weight:1}]
    result = run_in_process([RUN, *mixture_overrides(tmp_path, corpus, **{"train.max_iters": 20})], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (run_dir,) = run_dirs(tmp_path / "outputs")
    names, shares = ("prose.txt", "code.txt"), (0.75, 0.25)
    log = (run_dir / "train.log").read_text()
    assert re.search(r"Step 20: val loss [\d.]+ \([\d.]+ bits per byte\); prose.txt [\d.]+ \([\d.]+\); code.txt", log)
    evaluations = [row for row in map(json.loads, (run_dir / "metrics.jsonl").open()) if "val/loss" in row]
    assert [row["step"] for row in evaluations] == [0, 10, 20]
    for row in evaluations:  # the whole: the sources' figures weighted by their shares
        for kind in ("loss", "bpb"):
            mean = sum(share * row[f"val/{kind}/{name}"] for name, share in zip(names, shares))
            assert row[f"val/{kind}"] == pytest.approx(mean, rel=1e-12)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["source_weights"] == dict(zip(names, shares))
    assert summary["val_bpb_by_source"] == {name: evaluations[-1][f"val/bpb/{name}"] for name in names}
    assert summary["val_loss_by_source"] == {name: evaluations[-1][f"val/loss/{name}"] for name in names}
    assert summary["val_bpb"] == evaluations[-1]["val/bpb"]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = {f"val/{kind}/{name}" for kind in ("loss", "bpb") for name in names}
    assert tags <= set(events.Tags()["scalars"])
    assert [event.step for event in events.Scalars("val/bpb/code.txt")] == [0, 10, 20]


def test_a_single_corpus_reports_as_it_always_did(finished_run):
    _, run_dir = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert not {"val_bpb_by_source", "val_loss_by_source", "source_weights"} & summary.keys()
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    assert set().union(*rows) == {"step", "tokens", "elapsed_s", *METRIC_NAMES}


@pytest.mark.parametrize(
    "sources,needle",
    [
        ("[{path:PROSE,weight:3},{path:CODE,wieght:1}]", "data.sources[1].wieght is not a key of a source"),
        ("[{path:PROSE,weight:0}]", "data.sources[0].weight=0 is not a finite number > 0"),
        ("[]", "data.sources is empty"),
    ],
)
def test_a_bad_source_is_one_line_before_anything_is_written(sources, needle, tmp_path, corpus):
    prose, code = mixture_corpora(tmp_path, corpus)
    overrides = mixture_overrides(tmp_path, corpus, **{"data.sources": sources.replace("PROSE", str(prose))})
    result = run_in_process([RUN, *[item.replace("CODE", str(code)) for item in overrides]], cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {needle}") and result.stderr.count("\n") == 1
    assert not (tmp_path / "outputs").exists()


def test_a_source_that_cannot_be_read_is_one_line_naming_it(tmp_path, corpus):
    prose, _ = mixture_corpora(tmp_path, corpus)
    missing = tmp_path / "missing.txt"
    sources = f"[{{path:{prose}}},{{path:{missing}}}]"
    result = run_in_process([RUN, *mixture_overrides(tmp_path, corpus, **{"data.sources": sources})], cwd=tmp_path)
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("error: data.sources[1] (missing.txt): ") and "does not exist" in result.stderr
    assert not (tmp_path / "cache" / "tokens").exists()
