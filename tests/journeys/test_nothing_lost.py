"""Nothing lost, outside the tested cases too: run directories, resume's checks, every value finite,
the recorded config, file modes, and one `error:` line for every way a run can fail."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import typing

import pytest
import torch
from conftest import ROOT, RUN, compose_config, run_in_process, settings_for, tiny_overrides, train_tiny_run
from omegaconf import OmegaConf

from fragment_llm.config import schema as config_module
from fragment_llm.config.schema import ConfigError
from fragment_llm.files import FILE_MODE, atomic_path, write_json
from fragment_llm.launch.compose import check_overrides
from fragment_llm.launch.job import run_job
from fragment_llm.runs.claim import RunLock
from fragment_llm.runs.records import read_summary
from fragment_llm.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fragment_llm.train.from_run import find_resume_checkpoint


def one_error_line(result: subprocess.CompletedProcess, needle: str) -> None:
    """The process failed with exactly one `error:` line on standard error, holding `needle`."""
    assert result.returncode != 0, result.stdout[-2000:]
    assert "Traceback" not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and needle in errors[0], result.stderr


def snapshot(folder) -> dict:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, corpus):
    """A finished tiny run trained by run.py into a directory of our choosing."""
    root = tmp_path_factory.mktemp("finished")
    run_dir = root / "run"
    keys = {"train.max_iters": 6, "train.save_interval": 2, "train.eval_interval": 3}
    result = run_in_process([RUN, *tiny_overrides(root, corpus, **keys), f"hydra.run.dir={run_dir}"], cwd=root)
    assert result.returncode == 0, result.stderr
    return root, run_dir


# ---- a run never overwrites another run ---------------------------------------------------------------
@pytest.mark.slow
def test_a_directory_holding_a_run_is_refused_and_left_untouched(finished_run, corpus, tmp_path):
    root, run_dir = finished_run
    before = snapshot(run_dir)
    again = run_in_process(
        [RUN, *tiny_overrides(root, corpus, **{"train.max_iters": 2}), f"hydra.run.dir={run_dir}"], cwd=tmp_path
    )
    one_error_line(again, "already holds a run; continue it with train.resume=")
    assert snapshot(run_dir) == before  # not even Hydra's record of it changed

    sweep = run_in_process(
        [RUN, "-m", *tiny_overrides(root, corpus, **{"train.max_iters": "1,2"}), f"hydra.sweep.dir={run_dir.parent}"],
        cwd=tmp_path,
    )
    one_error_line(sweep, "already holds runs")
    assert snapshot(run_dir) == before


def test_resuming_into_its_own_directory_is_allowed_but_not_twice_at_once(tmp_path, corpus):
    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 4})
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 6}) + [f"train.resume={run_dir}"]
    with RunLock(run_dir).acquire():  # another process is training into it
        assert run_job(compose_config(overrides), run_dir, overrides) == math.inf
        assert read_summary(run_dir)["status"] == "completed" and read_summary(run_dir)["steps"] == 4
    (run_dir / ".lock").write_text("999999999\n")  # a stale lock file left by a dead process locks nothing
    assert run_job(compose_config(overrides), run_dir, overrides) < math.inf
    assert read_summary(run_dir)["steps"] == 6


@pytest.mark.slow
def test_a_second_process_training_into_a_busy_directory_is_refused(tmp_path, corpus):
    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 2})
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from fragment_llm.runs.claim import RunLock; "
            f"lock = RunLock({str(run_dir)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = run_in_process(
            [
                RUN,
                *tiny_overrides(tmp_path, corpus, **{"train.max_iters": 4}),
                f"train.resume={run_dir}",
                f"hydra.run.dir={run_dir}",
            ],
            cwd=tmp_path,
        )
        one_error_line(result, f"is in use: another process (pid {holder.pid})")
    finally:
        holder.kill()
        holder.wait()
    assert read_summary(run_dir)["steps"] == 2


# ---- resume checks everything it depends on ---------------------------------------------------------
def test_resume_picks_the_highest_step_not_the_newest_file(tmp_path, corpus):
    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 12, "train.save_interval": 4})
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)  # like cp -r: last.pt is a copy now, and file times are new
    os.utime(copy / "checkpoints" / "step_4.pt")  # the oldest state has the newest file time
    path, checkpoint = find_resume_checkpoint(copy)
    assert checkpoint["step"] == 12 and path.name == "final_model.pt"
    (copy / "models" / "final_model.pt").unlink()
    (copy / "checkpoints" / "last.pt").unlink()
    assert find_resume_checkpoint(copy)[1]["step"] == 8


def test_resume_trains_on_the_checkpoints_own_tokenizer_whatever_the_cache_holds(tmp_path, corpus):
    from fragment_llm.data.tokenizer import load_tokenizer, tokenizer_hash

    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 4})
    (cached,) = (tmp_path / "cache" / "tokenizers").glob("*.json")
    tokenizer = json.loads(cached.read_text())
    tokenizer["model"]["merges"] = tokenizer["model"]["merges"][:-1]  # another tokenizer under the same name
    cached.write_text(json.dumps(tokenizer))
    final = run_dir / "models" / "final_model.pt"
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 6}) + [f"train.resume={final}"]
    assert run_job(compose_config(overrides), tmp_path / "resumed", overrides) < math.inf
    saved_hash = load_checkpoint(final)["tokenizer_hash"]
    assert tokenizer_hash(load_tokenizer(tmp_path / "resumed" / "tokenizer.json")) == saved_hash
    assert load_checkpoint(tmp_path / "resumed" / "models" / "final_model.pt")["tokenizer_hash"] == saved_hash

    # A checkpoint from before checkpoints carried their tokenizer and said how the corpus was hashed.
    older = {
        key: value for key, value in load_checkpoint(final).items() if key not in ("tokenizer", "corpus_hash_version")
    }
    save_checkpoint(tmp_path / "older.pt", older)
    overrides[-1] = f"train.resume={tmp_path / 'older.pt'}"
    assert run_job(compose_config(overrides), tmp_path / "from_older", overrides) == math.inf
    error = read_summary(tmp_path / "from_older")["error"]
    assert f"the cached tokenizer {cached} differs" in error and "copy the run's tokenizer.json over it" in error
    assert "comes from an older fragment-llm" in (tmp_path / "from_older" / "train.log").read_text()

    damaged = {**load_checkpoint(final), "tokenizer": "{not a tokenizer"}
    save_checkpoint(tmp_path / "damaged.pt", damaged)
    overrides[-1] = f"train.resume={tmp_path / 'damaged.pt'}"
    assert run_job(compose_config(overrides), tmp_path / "from_damaged", overrides) == math.inf
    assert "the checkpoint's tokenizer is damaged" in read_summary(tmp_path / "from_damaged")["error"]


@pytest.mark.parametrize("optimizer", ["sgd", "muon", "adafactor"])
def test_resume_with_another_optimizer_starts_its_state_afresh(tmp_path, corpus, optimizer):
    run_dir = train_tiny_run(tmp_path, corpus, **{"train.max_iters": 4})
    overrides = tiny_overrides(tmp_path, corpus, **{"train.max_iters": 6, "optimizer": optimizer})
    overrides.append(f"train.resume={run_dir}")
    assert run_job(compose_config(overrides), tmp_path / "resumed", overrides) < math.inf
    log = (tmp_path / "resumed" / "train.log").read_text()
    assert f"Resuming with optimizer {optimizer} (the checkpoint was trained with adamw)" in log
    assert (
        load_checkpoint(tmp_path / "resumed" / "models" / "final_model.pt", for_resume=True)["config"]["optimizer"][
            "name"
        ]
        == optimizer
    )


MODEL_CONFIG = {
    "vocab_size": 512,
    "block_size": 128,
    "n_layer": 1,
    "n_head": 2,
    "n_embd": 64,
    "dropout": 0.0,
    "bias": False,
}
NOT_CHECKPOINTS = {
    "a list": [1, 2, 3],
    "an empty dict": {},
    "no model": {"step": 3},
    "weights that are not tensors": {"model_state_dict": {"w": 1}, "model_config": MODEL_CONFIG},
    "a vocabulary of 2e9": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "vocab_size": 2_000_000_000}},
    "an unknown config key": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "n_expert": 8}},
    "a string for a size": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "n_layer": "4"}},
    "a float for a size": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "n_layer": 1.0}},
    "more layers than its weights": {"model_state_dict": {"w": torch.zeros(1000)}, "model_config": MODEL_CONFIG},
    "heads that do not divide the width": {"model_state_dict": {}, "model_config": {**MODEL_CONFIG, "n_head": 3}},
}


@pytest.mark.parametrize("case", NOT_CHECKPOINTS)
def test_pickle_free_data_that_is_not_a_checkpoint_is_refused_in_one_line(tmp_path, case):
    path = tmp_path / "odd.pt"
    torch.save(NOT_CHECKPOINTS[case], path)
    with pytest.raises(CheckpointError, match="is not a fragment-llm checkpoint") as error:
        load_checkpoint(path)
    assert "\n" not in str(error.value) and str(path) in str(error.value)


def test_a_model_checkpoint_cannot_be_resumed_and_a_folder_is_not_a_checkpoint(tmp_path):
    from fragment_llm.model.gpt import GPT, GPTConfig

    path = tmp_path / "model.pt"
    torch.save({"model_state_dict": GPT(GPTConfig(**MODEL_CONFIG)).state_dict(), "model_config": MODEL_CONFIG}, path)
    load_checkpoint(path)  # enough for the tools
    with pytest.raises(CheckpointError, match="it lacks optimizer_state_dict"):
        find_resume_checkpoint(path)
    with pytest.raises(CheckpointError, match="is a directory; pass a .pt file"):
        load_checkpoint(tmp_path)


# ---- every value is finite and in range -----------------------------------------------------------------
FLOAT_KEYS = [
    f"{section}.{field.name}"
    for section, node in config_module.Config.__dataclass_fields__.items()
    for field in dataclasses.fields(node.default_factory)
    if typing.get_type_hints(node.default_factory)[field.name] in (float, typing.Optional[float])
]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key", FLOAT_KEYS)
def test_every_float_key_refuses_nan_and_inf(key, value):
    with pytest.raises(ConfigError, match="is not a finite number") as error:
        settings_for(["optimizer=muon", "scheduler=wsd", f"{key}={value}"])  # muon and wsd have every key of theirs
    assert str(error.value).startswith(f"{key}={value}")


def test_the_float_keys_are_found():
    assert {
        "optimizer.lr",
        "train.grad_clip",
        "model.dropout",
        "data.val_fraction",
        "model.logit_softcap",
        "scheduler.decay_fraction",
    } <= set(FLOAT_KEYS)


# ---- mistakes Hydra would report in many lines ------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["model.nembd=128"], "model.nembd is not a config key; did you mean model.n_embd?"),
        (["train.lr=1e-3"], "did you mean optimizer.lr?"),
        (["modle=small"], "did you mean model?"),
        (["model=tinny"], "model=tinny is not an option of model; choose one of large, medium, small, tiny"),
        (["+model.n_embd=64"], "model.n_embd exists already; drop the +"),
        (["model.n_layer=["], "is not a valid override"),
        (["optimizer.momentum=0.5"], "optimizer.momentum is not a setting of optimizer=adamw, only of optimizer=muon"),
        (["optimizer=adamw,sgd", "optimizer.beta1=0.5"], "optimizer.beta1 is not a setting of optimizer=sgd"),
        (["optimizer=choice(adamw,sgd)", "optimizer.momentum=0.5"], "not a setting of optimizer=adamw"),
        (["optimizer.momentum=0.5", "data.path=a[1].txt"], "data.path=a[1].txt is not a valid override"),
    ],
)
def test_unknown_keys_and_options_are_one_line_naming_the_closest(overrides, needle):
    with pytest.raises(ConfigError) as error:
        check_overrides(overrides)
    assert needle in str(error.value) and "\n" not in str(error.value)


def test_valid_overrides_pass_the_check():
    check_overrides(
        [
            "model=tiny,small",
            "optimizer.lr=1e-3",
            "hydra/launcher=joblib",
            "experiment=debug",
            "+model.typo=1",
            "~train.seed",
            "hydra.run.dir=x",
            "model.n_embd=choice(64,128)",
        ]
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra,needle",
    [
        (["model.nembd=128"], "did you mean model.n_embd?"),
        (["paths.outputs={file}"], "is a file, not a folder"),
        (["paths.cache={file}/cache"], "paths.cache="),
        (["paths.outputs=/proc/fragment-llm"], "is not a writable folder"),
        (["hydra.run.dir={file}"], "hydra.run.dir="),
        (["paths.outputs=${{nothing}}"], "paths.outputs: Interpolation key 'nothing' not found"),
        (["train.resume=${{nothing}}"], "train.resume: Interpolation key 'nothing' not found"),
        (["train.grad_clip=nan"], "train.grad_clip=nan is not a finite number"),
        (["experiment=debug", "train.resume={run}"], "experiment=debug does not combine with train.resume"),
    ],
)
def test_bad_command_lines_end_in_one_line(tmp_path, corpus, finished_run, extra, needle):
    a_file = tmp_path / "a_file"
    a_file.write_text("not a folder")
    extra = [item.format(file=a_file, run=finished_run[1]) for item in extra]
    result = run_in_process([RUN, *tiny_overrides(tmp_path, corpus), *extra], cwd=tmp_path)
    one_error_line(result, needle)


# ---- a run's record says what it ran ---------------------------------------------------------------------
@pytest.mark.slow
def test_a_resumed_run_records_the_config_it_trained_with(finished_run, tmp_path):
    _, run_dir = finished_run
    outputs = tmp_path / "outputs"
    # Nothing says data=text or the model's size here: both come from the checkpoint.
    result = run_in_process(
        [
            RUN,
            f"train.resume={run_dir}",
            "train.max_iters=8",
            "optimizer.lr=1e-3",
            f"paths.outputs={outputs}",
            f"paths.cache={run_dir.parent / 'cache'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    (resumed,) = [path.parent for path in outputs.rglob("summary.json")]
    recorded = OmegaConf.load(resumed / ".hydra" / "config.yaml")
    assert recorded.data.source == "text" and recorded.model.n_embd == 64 and recorded.optimizer.lr == 1e-3
    assert recorded.train.max_iters == 8
    assert OmegaConf.load(resumed / ".hydra" / "hydra.yaml").hydra.runtime.choices.data == "text"
    listing = run_in_process(
        ["-m", "fragment_llm", "runs", str(outputs), "--filter", "data.source=text", "--json"], cwd=tmp_path
    )
    assert [run["path"] for run in json.loads(listing.stdout)] == [str(resumed)]

    # Continued in its own directory, where Hydra rewrites .hydra/ with this command's composition.
    in_place = tmp_path / "in_place"
    shutil.copytree(run_dir, in_place)
    result = run_in_process(
        [
            RUN,
            f"train.resume={in_place}",
            f"hydra.run.dir={in_place}",
            "train.max_iters=8",
            f"paths.outputs={outputs}",
            f"paths.cache={run_dir.parent / 'cache'}",
        ],
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert OmegaConf.load(in_place / ".hydra" / "config.yaml").data.source == "text"
    assert OmegaConf.load(in_place / ".hydra" / "hydra.yaml").hydra.runtime.choices.data == "text"
    assert read_summary(in_place)["choices"]["data"] == "text" and read_summary(in_place)["steps"] == 8


def test_atomically_written_files_get_the_usual_mode(tmp_path):
    from safetensors.torch import save_file

    with atomic_path(tmp_path / "model.safetensors") as temporary:
        save_file({"w": torch.zeros(2)}, str(temporary))  # safetensors itself writes 0600
    write_json(tmp_path / "summary.json", {})
    save_checkpoint(tmp_path / "step_1.pt", {"step": 1})
    for name in ("model.safetensors", "summary.json", "step_1.pt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == FILE_MODE, name


# ---- failures at the process level: full disks, memory, signals --------------------------------------------
def limited(run_args, cwd, file_size=None, memory=None, timeout=300):
    """run.py in a subprocess with a file-size limit (a full disk, as `ulimit -f`) or a memory limit."""

    def limit():
        if file_size is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
        if memory is not None:
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    return subprocess.run(
        [sys.executable, RUN, *run_args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=limit,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "file_size,needle",
    [
        (300_000, "could not write checkpoint"),  # the data fits, a checkpoint does not
        (20_000, "File too large"),  # not even the token cache fits
    ],
)
def test_a_full_disk_is_one_line_and_a_failed_summary(tmp_path, corpus, file_size, needle):
    keys = {"train.max_iters": 4, "train.save_interval": 2, "logging.tensorboard": False}
    result = limited(tiny_overrides(tmp_path, corpus, **keys), tmp_path, file_size=file_size)
    one_error_line(result, needle)
    (summary,) = (tmp_path / "outputs").rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "failed"
    assert not list(tmp_path.rglob("*.tmp"))


@pytest.mark.slow
def test_cpu_out_of_memory_is_one_line_with_advice(tmp_path, corpus):
    keys = {"model.n_layer": 48, "model.n_embd": 2048, "model.n_head": 16, "train.max_iters": 2}
    # 3 GiB: Python and torch fit; building the 2.4B-parameter model soon does not (a higher limit only
    # spends longer initialising weights before it fails).
    result = limited(tiny_overrides(tmp_path, corpus, **keys), tmp_path, memory=3 << 30)
    one_error_line(result, "out of memory at train.batch_size=4")
    (summary,) = (tmp_path / "outputs").rglob("summary.json")
    assert json.loads(summary.read_text())["status"] == "failed"


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory):
    """About 4 MB of varied text: preparing it takes long enough to be interrupted."""
    from pydoc_data.topics import topics

    folder = tmp_path_factory.mktemp("big")
    text = "\n\n".join(topics[name] for name in sorted(topics))
    for index in range(8):
        (folder / f"part{index}.txt").write_text(text.replace("the", f"the{index}"))
    return folder


def signalled(overrides, cwd, after_line: str, signum: int, delay: float):
    """Start run.py, send `signum` `delay` seconds after it prints a line starting with `after_line`;
    returns its exit code, its standard error, and its run directory's summary.json."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    process = subprocess.Popen(
        [sys.executable, RUN, *overrides], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    for line in process.stdout:
        if line.startswith(after_line):
            break
    time.sleep(delay)
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    (summary,) = (cwd / "outputs").rglob("summary.json")
    return process.returncode, err, summary


TRAIN_ON = {"train.max_iters": 100_000, "train.epochs": 1000, "train.save_interval": 0, "train.eval_interval": 1000}


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_signal_while_preparing_data_stops_cleanly(tmp_path, big_corpus, signum):
    overrides = tiny_overrides(tmp_path, big_corpus, **{"model.vocab_size": 4096})
    code, err, summary = signalled(overrides, tmp_path, "Tokenizer: training", signum, 0.5)
    assert code == 128 + signum, err
    assert "Traceback" not in err and f"{signal.Signals(signum).name}: stopped before training began" in err
    assert json.loads(summary.read_text())["status"] == "interrupted"
    assert not list((tmp_path / "cache").rglob("*.tmp"))


@pytest.mark.slow
def test_sighup_during_training_saves_like_sigterm(tmp_path, corpus):
    code, err, summary = signalled(tiny_overrides(tmp_path, corpus, **TRAIN_ON), tmp_path, "Epoch ", signal.SIGHUP, 1.0)
    assert code == 129, err
    assert "SIGHUP: stopped at step" in err and "Traceback" not in err
    assert json.loads(summary.read_text())["status"] == "interrupted"
    assert load_checkpoint(summary.parent / "checkpoints" / "last.pt")["step"] > 0


@pytest.mark.slow
def test_sigterm_to_the_parent_of_spawned_ranks_stops_them_with_a_checkpoint(tmp_path, corpus):
    overrides = tiny_overrides(
        tmp_path,
        corpus,
        **{
            "hardware": "ddp",
            "hardware.device": "cpu",
            "hardware.amp": False,
            "hardware.nproc": 2,
            "train.batch_size": 2,
            **TRAIN_ON,
        },
    )
    # To the parent alone, as a scheduler might send it.
    code, err, summary = signalled(overrides, tmp_path, "Epoch ", signal.SIGTERM, 1.0)
    assert code == 143, err
    assert "Traceback" not in err and "SIGTERM: stopped at step" in err
    assert json.loads(summary.read_text())["status"] == "interrupted"
    assert load_checkpoint(summary.parent / "checkpoints" / "last.pt", for_resume=True)["step"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("delay", [0.2, 1.5])
def test_a_signal_while_starting_up_quits_quietly(tmp_path, corpus, signum, delay):
    """Before the run starts (importing torch, composing the config): no traceback, 128 + the signal."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), COLUMNS="250")
    process = subprocess.Popen(
        [sys.executable, RUN, *tiny_overrides(tmp_path, corpus)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    process.send_signal(signum)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signum and "Traceback" not in err, err
