"""W&B and MLflow beside TensorBoard (train/trackers.py, train/tracker_runs.py), read back from what they
wrote: W&B's offline files in the run directory and MLflow's local sqlite store. What they record (the
config, every row of metrics.jsonl, samples, the summary), a resumed run continuing the same tracker
runs, a sweep's jobs in one group, how a run ended, a tracker that cannot start (one warning, the run
goes on) or that the settings require (one error line, before training), and only rank 0 reporting."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest
from helpers import RUN, run_in_process, settings_for, tiny_overrides

from fragment_llm.config.load import to_plain
from fragment_llm.runs.records import find_runs, flatten, read_metrics, read_summary
from fragment_llm.train.distributed import Ranks
from fragment_llm.train.resumable import Interrupted
from fragment_llm.train.tracker_runs import MlflowTracker
from fragment_llm.train.trackers import NO_TRACKERS, for_run, tracking

pytestmark = pytest.mark.slow

OFFLINE = {"logging.wandb": "true", "logging.wandb_mode": "offline"}
WANDB_BLOCK = 32768  # the .wandb file: LevelDB's log format, records in blocks of this size


@pytest.fixture(autouse=True)
def tracker_environment(tmp_path, monkeypatch):
    """Neither the machine's W&B login and settings nor its MLflow server: what a test sets, it sets here."""
    for name in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)
    for name in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(name, str(tmp_path / "wandb-home" / name.lower()))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def mlflow_keys(tmp_path: Path) -> dict[str, str]:
    return {"logging.mlflow": "true", "logging.mlflow_tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}"}


def train(tmp_path: Path, corpus: Path, *arguments: str, **keys) -> tuple[Path, str]:
    """A tiny run by run.py with `keys`: its directory and standard error."""
    result = run_in_process([RUN, *arguments, *tiny_overrides(tmp_path, corpus, **keys)], tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    return find_runs(tmp_path / "outputs")[-1], result.stderr


def wandb_records(run_dir: Path) -> list:
    """Every record W&B wrote offline under `run_dir`, oldest run first: its .wandb files are protobuf
    records in LevelDB's log format (a 7-byte file header, then blocks; each record a 7-byte header of
    checksum, length and kind: whole, first, middle or last part)."""
    from wandb.proto.wandb_internal_pb2 import Record

    records = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, position, pending = path.read_bytes(), 7, b""
        assert data[:4] == b":W&B"
        while position + 7 <= len(data):
            left = WANDB_BLOCK - position % WANDB_BLOCK
            length, kind = struct.unpack("<HB", data[position + 4 : position + 7]) if left >= 7 else (0, 0)
            if kind == 0:  # the rest of a block is padding
                position += left
                continue
            pending += data[position + 7 : position + 7 + length]
            position += 7 + length
            if kind in (1, 4):
                record = Record()
                record.ParseFromString(pending)
                records.append(record)
                pending = b""
    return records


def wandb_run(run_dir: Path) -> dict:
    """What W&B recorded of the run: its id, name, group and tags, config, history rows, summary, exit code."""
    found = {"history": [], "summary": {}, "runs": [], "config": {}}
    for record in wandb_records(run_dir):
        kind = record.WhichOneof("record_type")
        if kind in ("run", "config"):  # the config a run starts with, and its updates
            found["runs"] += [record.run] if kind == "run" else []
            update = record.run.config.update if kind == "run" else record.config.update
            found["config"].update({item.key: json.loads(item.value_json) for item in update})
        elif kind == "history":
            found["history"].append(
                {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "summary":
            found["summary"].update({item.key: json.loads(item.value_json) for item in record.summary.update})
        elif kind == "exit":
            found["exit_code"] = record.exit.exit_code
    return found


def mlflow_client(tmp_path: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")


def mlflow_history(client, run_id: str, key: str) -> dict[int, float]:
    return {metric.step: metric.value for metric in client.get_metric_history(run_id, key)}


def test_wandb_and_mlflow_record_the_config_every_row_samples_and_the_summary(tmp_path, corpus):
    run_dir, stderr = train(tmp_path, corpus, **OFFLINE, **mlflow_keys(tmp_path), **{"train.sample_every": 10})
    assert stderr == ""
    rows, summary = read_metrics(run_dir), read_summary(run_dir)
    config = to_plain(settings_for(tiny_overrides(tmp_path, corpus, **OFFLINE, **mlflow_keys(tmp_path))))
    config["train"]["sample_every"] = 10
    name = str(run_dir.relative_to(tmp_path / "outputs"))

    wandb = wandb_run(run_dir)  # its folder is in the run directory
    assert [run.run_id for run in wandb["runs"]] == [summary["trackers"]["wandb"]["id"]]
    assert wandb["runs"][0].display_name == name and wandb["runs"][0].run_group == ""
    assert {"data=text", "optimizer.lr=0.003", "train.max_iters=30"} <= set(wandb["runs"][0].tags)
    assert wandb["config"]["train"] == config["train"] and wandb["config"]["model"] == config["model"]
    samples = [row for row in wandb["history"] if "samples/_type" in row]  # a table: its keys, flattened
    logged = {row["step"]: row for row in wandb["history"] if row not in samples}
    for row in rows:  # every value of every row, at its step; MFU beside them
        assert {key: logged[row["step"]][key] for key in row} == row
        assert row["step"] == 0 or logged[row["step"]]["mfu"] > 0
    assert [row["step"] for row in samples] == [10, 20, 30] and samples[-1]["samples/nrows"] == 3
    assert wandb["summary"]["status"] == "completed" and wandb["exit_code"] == 0
    assert wandb["summary"]["best_val_loss"] == summary["best_val_loss"]

    client = mlflow_client(tmp_path)
    run = client.get_run(summary["trackers"]["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.info.run_name == name
    assert run.data.params == {key: str(value) for key, value in flatten(config).items()}
    assert run.data.tags["data"] == "text" and run.data.tags["train.max_iters"] == "30"
    for key in ("train/loss", "val/loss", "val/bpb", "lr", "grad_norm", "tokens_per_sec", "tokens", "elapsed_s"):
        assert mlflow_history(client, run.info.run_id, key) == {row["step"]: row[key] for row in rows if key in row}
    assert run.data.metrics["summary/best_val_loss"] == summary["best_val_loss"] and run.data.metrics["mfu"] > 0
    assert run.data.tags["summary/status"] == "completed"
    samples = [item.path for item in client.list_artifacts(run.info.run_id, "samples")]
    assert samples == [f"samples/step_{step:08d}.txt" for step in (10, 20, 30)]
    assert (tmp_path / "mlartifacts").is_dir() and not (tmp_path / "mlruns").exists()  # beside its database


def test_a_resumed_run_continues_the_same_wandb_and_mlflow_runs(tmp_path, corpus):
    keys = {**OFFLINE, **mlflow_keys(tmp_path), "train.max_iters": 20}
    first, _ = train(tmp_path, corpus, **keys)
    resumed, stderr = train(tmp_path, corpus, f"train.resume={first}", **{**keys, "train.max_iters": 30})
    assert stderr == "" and resumed != first
    ids = read_summary(first)["trackers"]
    assert read_summary(resumed)["trackers"] == ids

    wandb = wandb_run(resumed)  # the resumed run's part, in its own directory, under the first run's id
    assert [run.run_id for run in wandb["runs"]] == [ids["wandb"]["id"]]
    assert sorted(row["step"] for row in wandb["history"]) == list(range(21, 31))
    assert wandb["config"]["train"]["max_iters"] == 30 and wandb["summary"]["steps"] == 30

    client = mlflow_client(tmp_path)
    assert len(client.search_runs([client.get_experiment_by_name("fragment-llm").experiment_id])) == 1
    run = client.get_run(ids["mlflow"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.metrics["summary/steps"] == 30
    assert sorted(mlflow_history(client, run.info.run_id, "train/loss")) == list(range(1, 31))
    assert run.data.params["train.max_iters"] == "20"  # MLflow's params never change: a tag says what did
    assert "train.max_iters=30" in run.data.tags["fragment_llm.resume_changed"]


def test_a_resume_from_behind_the_step_its_run_reached_gets_tracker_runs_of_its_own(tmp_path, corpus):
    keys = {**OFFLINE, **mlflow_keys(tmp_path), "train.max_iters": 20, "train.save_interval": 10}
    first, _ = train(tmp_path, corpus, **keys)
    branch, _ = train(tmp_path, corpus, f"train.resume={first / 'checkpoints' / 'step_10.pt'}", **keys)
    ids, own = read_summary(first)["trackers"], read_summary(branch)["trackers"]
    assert own["wandb"]["id"] != ids["wandb"]["id"] and own["mlflow"]["run_id"] != ids["mlflow"]["run_id"]
    assert sorted(mlflow_history(mlflow_client(tmp_path), own["mlflow"]["run_id"], "train/loss")) == list(range(11, 21))


def test_a_sweeps_jobs_share_a_wandb_group_and_an_mlflow_parent_run(tmp_path, corpus):
    result = run_in_process(
        [RUN, "-m", "train.seed=1,2", *tiny_overrides(tmp_path, corpus, **OFFLINE, **mlflow_keys(tmp_path))], tmp_path
    )
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    jobs = find_runs(tmp_path / "outputs")
    group = str(jobs[0].parent.relative_to(tmp_path / "outputs"))
    assert len(jobs) == 2 and all(wandb_run(job)["runs"][0].run_group == group for job in jobs)
    client = mlflow_client(tmp_path)
    parents = {
        client.get_run(read_summary(job)["trackers"]["mlflow"]["run_id"]).data.tags["mlflow.parentRunId"]
        for job in jobs
    }
    assert len(parents) == 1 and client.get_run(parents.pop()).info.run_name == group


NO_SERVER = {"logging.mlflow": "true", "logging.mlflow_tracking_uri": "http://127.0.0.1:9"}  # nothing listens


@pytest.mark.parametrize(
    "case, keys, said",
    [
        (
            "W&B not installed",
            {**OFFLINE, "logging.mlflow": "true"},
            "W&B is not installed: pip install 'fragment-llm[trackers]'",
        ),
        (
            "MLflow not installed",
            {**OFFLINE, "logging.mlflow": "true"},
            "MLflow is not installed: pip install 'fragment-llm[trackers]'",
        ),
        ("no W&B login", {"logging.wandb": "true"}, "W&B could not start: No API key configured"),
        ("no MLflow server", NO_SERVER, "MLflow could not start: API request to http://127.0.0.1:9/"),
    ],
)
def test_a_tracker_that_cannot_start_is_one_warning_and_the_run_goes_on(
    tmp_path, corpus, monkeypatch, case, keys, said
):
    if "not installed" in case:
        for module in ("wandb",) if "W&B" in case else ("mlflow", "mlflow.tracking"):
            monkeypatch.setitem(sys.modules, module, None)  # importing it fails
    run_dir, stderr = train(tmp_path, corpus, **keys)
    assert stderr.startswith(f"warning: {said}") and stderr.endswith("; the run goes on without it\n"), stderr
    assert len(stderr.splitlines()) == 1
    summary = read_summary(run_dir)
    assert summary["status"] == "completed" and (run_dir / "tensorboard").is_dir() and len(read_metrics(run_dir)) == 31
    the_other = {"W&B not installed": "mlflow", "MLflow not installed": "wandb"}.get(case)
    assert set(summary.get("trackers", {})) == ({the_other} if the_other else set())  # it went on alone


def test_a_tracker_that_fails_during_the_run_stops_alone_with_one_warning(tmp_path, corpus, monkeypatch):
    def server_gone(self, rows):
        raise OSError("the server is gone")

    monkeypatch.setattr(MlflowTracker, "log", server_gone)
    run_dir, stderr = train(tmp_path, corpus, **OFFLINE, **mlflow_keys(tmp_path))
    assert stderr == "warning: MLflow stopped: the server is gone; the run goes on without it\n"
    assert read_summary(run_dir)["status"] == "completed" and len(read_metrics(run_dir)) == 31
    wandb = wandb_run(run_dir)
    assert wandb["summary"]["status"] == "completed" and len(wandb["history"]) == 31


def test_a_required_tracker_that_cannot_start_stops_the_run_before_training(tmp_path, corpus):
    keys = {**OFFLINE, **NO_SERVER}
    result = run_in_process(
        [RUN, *tiny_overrides(tmp_path, corpus, **keys, **{"logging.require_trackers": "true"})], tmp_path
    )
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("error: MLflow could not start: API request to http://127.0.0.1:9/")
    assert "logging.require_trackers=false" in result.stderr and "Traceback" not in result.stderr + result.stdout
    run_dir = find_runs(tmp_path / "outputs")[-1]
    assert read_summary(run_dir)["status"] == "failed" and not (run_dir / "metrics.jsonl").exists()
    assert wandb_run(run_dir)["summary"]["status"] == "failed"  # the tracker that started is ended as failed


@pytest.mark.parametrize(
    "ending, status, mlflow_status",
    [(Interrupted(15, "stopped"), "interrupted", "KILLED"), (RuntimeError("boom"), "failed", "FAILED")],
)
def test_the_trackers_end_as_the_run_ended(tmp_path, corpus, ending, status, mlflow_status):
    settings = settings_for(tiny_overrides(tmp_path, corpus, **OFFLINE, **mlflow_keys(tmp_path)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with pytest.raises(type(ending)), tracking(settings, run_dir, Ranks()):
        assert for_run(run_dir)  # what RunOutputs reports to
        raise ending
    assert for_run(run_dir) is NO_TRACKERS
    wandb = wandb_run(run_dir)
    assert wandb["summary"]["status"] == status and wandb["exit_code"] == 1
    run = mlflow_client(tmp_path).get_run(read_summary(run_dir)["trackers"]["mlflow"]["run_id"])
    assert run.info.status == mlflow_status and run.data.tags["summary/status"] == status


def test_only_rank_0_reports(tmp_path, corpus):
    settings = settings_for(tiny_overrides(tmp_path, corpus, **OFFLINE, **mlflow_keys(tmp_path)))
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    with tracking(settings, run_dir, Ranks(rank=1, world_size=2)):
        assert for_run(run_dir) is NO_TRACKERS
    assert list(run_dir.iterdir()) == [] and not (tmp_path / "mlflow.db").exists()


def test_their_environment_variables_apply_where_no_key_says_otherwise(tmp_path, corpus, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    (tmp_path / "elsewhere").mkdir()
    for name, keys in (("env", {}), ("keys", {"logging.mlflow_tracking_uri": "sqlite:///" + str(tmp_path / "k.db")})):
        run_dir = tmp_path / name
        run_dir.mkdir()
        settings = settings_for(
            tiny_overrides(tmp_path, corpus, **{"logging.wandb": True, "logging.mlflow": True}, **keys)
        )
        with tracking(settings, run_dir, Ranks()):
            pass
        assert read_summary(run_dir)["trackers"]["mlflow"]["tracking_uri"].endswith("k.db" if keys else "mlflow.db")
    assert len(list((tmp_path / "elsewhere").glob("wandb/offline-run-*"))) == 2 and not (run_dir / "wandb").exists()
