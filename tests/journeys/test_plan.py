"""model=auto and `fragment-llm plan`: a plan shown without training, an auto run that trains what it
planned and records the prediction beside what it reached, the keys a user sets kept, and bad inputs in
one line."""

from __future__ import annotations

import json
import re

import pytest
from helpers import RUN, run_in_process

from fragment_llm.text import plural

KEYS = ["train.eval_iters=4", "train.eval_interval=10", "train.save_interval=0"]


def auto_overrides(tmp_path, corpus, *keys: str) -> list[str]:
    return [
        "model=auto",
        f"data.path={corpus}",
        f"paths.outputs={tmp_path / 'outputs'}",
        f"paths.cache={tmp_path / 'cache'}",
        *KEYS,
        *keys,
    ]


def test_plan_shows_the_choice_without_training(tmp_path, corpus):
    args = ["-m", "fragment_llm", "plan", "--json", *auto_overrides(tmp_path, corpus, "train.time_budget=2m")]
    result = run_in_process(args, tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["auto"] is True and plan["seconds"] == 120
    chosen = plan["chosen"]
    for key in ("model.vocab_size", "model.n_layer", "model.n_embd", "model.n_head", "train.batch_size"):
        assert chosen[key]["reason"], key
    decay = 1.0 if plan["outcome"]["epochs"] >= 8 else 0.1  # by the epochs it plans
    assert chosen["optimizer.weight_decay"]["value"] == decay, chosen["optimizer.weight_decay"]
    outcome = plan["outcome"]
    assert outcome["steps"] > 0 and outcome["tokens"] == outcome["steps"] * outcome["shape"]["batch_size"] * 128
    assert outcome["low"] <= outcome["bpb"] <= outcome["high"]
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").glob("20*"))  # no run made

    keys = auto_overrides(tmp_path, corpus, "train.time_budget=2m", "hardware.compile=auto")
    text = run_in_process(["-m", "fragment_llm", "plan", *keys], tmp_path)
    assert "model=auto chose" in text.stdout and "predicted validation bits per byte" in text.stdout
    assert re.search(r"hardware.compile=auto: stays eager \(a (1m [0-5]\d|2m 00)s run", text.stdout)  # less start-up


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_plan_reads_a_corpus_of_records(tmp_path, corpus, kind):
    # Auto samples the corpus's start to estimate it; a JSON Lines or Parquet file yields None between its
    # records, which once ended `plan` in a TypeError traceback.
    records = [part for part in corpus.read_text(encoding="utf-8").split("\n\n") if part.strip()]
    path = tmp_path / f"records.{kind}"
    if kind == "jsonl":
        path.write_text("".join(json.dumps({"text": text}) + "\n" for text in records), encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"text": records}), path)
    args = ["-m", "fragment_llm", "plan", "--json", *auto_overrides(tmp_path, path, "train.time_budget=2m")]
    result = run_in_process(args, tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["auto"] is True and plan["outcome"]["steps"] > 0


def test_plan_of_a_given_configuration_says_its_steps(tmp_path, corpus):
    keys = [f"data.path={corpus}", f"paths.outputs={tmp_path / 'o'}", "model=medium", "train.time_budget=5m"]
    result = run_in_process(["-m", "fragment_llm", "plan", "--json", *keys], tmp_path)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["auto"] is False and plan["chosen"] == {}
    assert plan["outcome"]["shape"]["n_layer"] == 12 and plan["outcome"]["steps"] >= 0


def test_an_auto_run_trains_its_plan_and_records_what_it_reached(tmp_path, corpus):
    run_dir = tmp_path / "run"
    args = [
        RUN,
        *auto_overrides(tmp_path, corpus, "train.time_budget=4s", "model.n_layer=1"),
        f"hydra.run.dir={run_dir}",
    ]
    result = run_in_process(args, tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    plan = summary["plan"]
    assert plan["auto"] and plan["outcome"]["shape"]["n_layer"] == 1  # the user's key, kept
    assert "model.n_layer" not in plan["chosen"]
    config = (run_dir / ".hydra" / "config.yaml").read_text()
    assert f"n_embd: {plan['outcome']['shape']['n_embd']}" in config
    reached = summary["plan_reached"]
    assert reached["val_bpb"] == summary["val_bpb"] and reached["predicted_bpb"] == plan["outcome"]["bpb"]
    assert reached["steps_per_second"] == summary["steps"] / summary["train_seconds"]
    assert reached["predicted_steps_per_second"] == plan["outcome"]["steps"] / plan["outcome"]["seconds"]
    log = (run_dir / "train.log").read_text()
    assert "Plan: model=auto chose" in log and "reached" in log
    assert log.count("validation tokens, vocabulary") == 1  # the corpus the plan prepared is the one trained on
    assert len(re.findall(r"Data: [\d,]+ documents?, ", log)) == 1  # read once: for the plan's estimate and tokens


def test_an_auto_run_resumes_and_fine_tunes_with_its_own_command(tmp_path, corpus):
    # model=auto beside train.resume or train.init_from leaves the model to the checkpoint (auto chose it
    # when the run began); its stand-in keys once read as a model=tiny given against it, in one wrong line.
    first = tmp_path / "first"
    command = [RUN, *auto_overrides(tmp_path, corpus, "train.time_budget=3s", "train.save_interval=0")]
    assert run_in_process([*command, f"hydra.run.dir={first}"], tmp_path).returncode == 0
    shape = json.loads((first / "summary.json").read_text())["plan"]["outcome"]["shape"]
    for key, folder in (("train.resume", "resumed"), ("train.init_from", "tuned")):
        args = [*command, f"{key}={first}", "train.time_budget=5s", f"hydra.run.dir={tmp_path / folder}"]
        result = run_in_process(args, tmp_path)
        assert result.returncode == 0, result.stderr
        model = f"({plural(shape['n_layer'], 'layer')}, {plural(shape['n_head'], 'head')}, {shape['n_embd']} wide"
        assert model in (tmp_path / folder / "train.log").read_text()  # the first run's model
        summary = json.loads((tmp_path / folder / "summary.json").read_text())
        assert summary.get("resumed_from" if key == "train.resume" else "init_from"), summary
        assert "plan" not in summary  # the law was fitted on runs from random weights
    wider = [*command, f"train.resume={first}", f"model.n_embd={shape['n_embd'] * 2}"]
    lines = [line for line in run_in_process(wider, tmp_path).stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and f"model.n_embd={shape['n_embd'] * 2} conflicts with the checkpoint" in lines[0]
    planned = run_in_process(["-m", "fragment_llm", "plan", *command[1:], f"train.init_from={first}"], tmp_path)
    lines = [line for line in planned.stderr.splitlines() if line.strip()]
    assert planned.returncode == 1 and len(lines) == 1 and "drop train.init_from to plan a new run" in lines[0]


def test_a_run_as_given_records_its_plan_too(finished_run):
    _, run_dir = finished_run
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["plan"]["auto"] is False
    assert summary["plan"]["outcome"]["steps"] == 6  # train.max_iters
    assert "val_bpb" in summary["plan_reached"]
    log = (run_dir / "train.log").read_text()
    assert log.count("validation tokens, vocabulary") == 1  # prepared once, for the plan and the run


def test_a_budget_too_short_for_a_step_is_one_line(tmp_path, corpus):
    result = run_in_process([RUN, *auto_overrides(tmp_path, corpus, "train.time_budget=0.00001s")], tmp_path)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "too short" in lines[0] and "give at least train.time_budget=" in lines[0], result.stderr


def test_auto_refuses_a_mixture_and_several_ranks_in_one_line(tmp_path, corpus):
    mixture = [RUN, "model=auto", f"data.sources=[{{path: {corpus}}}]", f"paths.outputs={tmp_path / 'o'}"]
    for args in (mixture, [RUN, *auto_overrides(tmp_path, corpus, "hardware.nproc=2")]):
        result = run_in_process(args, tmp_path)
        assert result.returncode != 0
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "model=auto" in lines[0], result.stderr
