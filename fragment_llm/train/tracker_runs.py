"""A run in each experiment tracker: Weights & Biases (`WandbTracker`) and MLflow (`MlflowTracker`),
started, sent rows, samples and the end, and found again for a resume. train/trackers.py decides when,
from the sending thread its `Trackers` keeps, and turns what they raise into one line each."""

from __future__ import annotations

import logging
import math
import os
import re
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Optional

from ..config.load import to_plain
from ..config.schema import Config
from ..errors import UserError
from ..runs.records import flatten

START_SECONDS = 30  # the longest a tracker's start may take (W&B's init, MLflow's first requests)


class Labels(NamedTuple):
    """What names a run in a tracker: its name, tags and group (a sweep's jobs share one)."""

    name: str
    tags: list[str]
    group: Optional[str]


def scalars(values: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of `values` (a metrics row holds null for a value that was not finite)."""
    return {
        key: float(value)
        for key, value in values.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


class Tracker:
    """One tracker's run. `start` starts it, or raises; from then on only the sending thread calls it:
    `log(rows)` (rows of metrics.jsonl, each with the time it was written), `sample(step, text)` and
    `finish(status, summary)`. `record()` is what finds it again (in summary.json, for a resume), and
    `where()` says where it is, for the run's log. `key` is its switch (`logging.<key>`) and its entry in
    summary.json's `trackers`."""

    key = name = ""


class WandbTracker(Tracker):
    key, name = "wandb", "W&B"

    def __init__(self, wandb: Any, run: Any):
        self.wandb, self.run, self.samples = wandb, run, []

    @classmethod
    def start(cls, settings: Config, run_dir: Path, labels: Labels, earlier: dict[str, Any]) -> WandbTracker:
        import wandb

        keys, config = settings.logging, to_plain(settings)
        wandb.setup(wandb.Settings(silent=True))  # silent from the login on, which comes before init's settings
        run = wandb.init(
            project=earlier.get("project") or keys.wandb_project or os.environ.get("WANDB_PROJECT") or "fragment-llm",
            entity=earlier.get("entity") or keys.wandb_entity or os.environ.get("WANDB_ENTITY"),
            mode=keys.wandb_mode.value if keys.wandb_mode else os.environ.get("WANDB_MODE"),
            dir=os.environ.get("WANDB_DIR") or str(run_dir),  # offline: its folder in the run directory
            id=earlier.get("id"),
            resume="allow" if earlier else None,
            **({} if earlier else {"name": labels.name, "tags": labels.tags, "group": labels.group, "config": config}),
            # Our console and train.log stay ours: W&B neither captures them nor prints its banners.
            settings=wandb.Settings(console="off", silent=True, disable_git=True, init_timeout=START_SECONDS),
        )
        if earlier:  # what a resume changed (train.max_iters, the device) replaces the config's values
            run.config.update(config, allow_val_change=True)
        # Our step is the x-axis: rows a resume trains again are logged again at their step, not dropped.
        run.define_metric("step")
        run.define_metric("*", step_metric="step")
        return cls(wandb, run)

    def record(self) -> dict[str, Any]:
        return {"id": self.run.id, "project": self.run.project, "entity": self.run.entity or None}

    def where(self) -> str:
        if self.run.settings.mode in ("offline", "dryrun"):
            return (
                f"offline run {self.run.id} in {Path(self.run.dir).parent} (upload it with `wandb sync` on that folder)"
            )
        return f"run {self.run.id}, {self.run.url}"

    def log(self, rows: list[tuple[float, dict[str, Any]]]) -> None:
        for _, row in rows:
            self.run.log({key: value for key, value in row.items() if value is not None})

    def sample(self, step: int, text: str) -> None:
        self.samples.append([step, text])  # one table of every sample so far: W&B shows the latest logged
        self.run.log({"step": step, "samples": self.wandb.Table(columns=["step", "text"], data=list(self.samples))})

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        self.run.summary.update({key: value for key, value in summary.items() if isinstance(value, (str, int, float))})
        self.run.finish(exit_code=0 if status == "completed" else 1)


# MLflow's names: letters, digits and `_ - . / space`; another character in a key becomes `_`.
MLFLOW_NAME = re.compile(r"[^\w\-./ ]")
MLFLOW_END = {"completed": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
MLFLOW_BATCH = 1000  # metrics per request (MLflow's limit); params: 100
PARENT_TAG, GROUP_TAG = "fragment_llm.sweep_parent", "fragment_llm.group"


class MlflowTracker(Tracker):
    key, name = "mlflow", "MLflow"

    def __init__(self, client: Any, run_id: str, uri: str, parent: Optional[str]):
        self.client, self.run_id, self.uri, self.parent = client, run_id, uri, parent
        self.last_step = 0

    @classmethod
    def start(cls, settings: Config, run_dir: Path, labels: Labels, earlier: dict[str, Any]) -> MlflowTracker:
        from mlflow.tracking import MlflowClient

        for name in ("mlflow", "alembic"):  # their INFO lines (creating a database) are not the run's
            logging.getLogger(name).setLevel(logging.WARNING)
        keys = settings.logging
        uri = earlier.get("tracking_uri") or keys.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        uri = uri or f"sqlite:///{Path(settings.paths.outputs).expanduser().resolve() / 'mlflow.db'}"
        client = MlflowClient(tracking_uri=uri)
        params = {key: str(value) for key, value in flatten(to_plain(settings)).items()}
        with bounded_requests():
            if earlier:
                run_id, parent = earlier["run_id"], earlier.get("parent_run_id")
                client.update_run(run_id, status="RUNNING")
                given = client.get_run(run_id).data.params
                changed = [f"{key}={value}" for key, value in params.items() if given.get(key, value) != value]
                if changed:  # MLflow's params never change: what a resume changed is a tag
                    client.set_tag(run_id, "fragment_llm.resume_changed", " ".join(changed)[:5000])
                params = {key: value for key, value in params.items() if key not in given}
            else:
                experiment = mlflow_experiment(client, uri, keys.mlflow_experiment)
                parent = sweep_parent(client, experiment, labels.group) if labels.group else None
                tags = dict(map(mlflow_tag, labels.tags))
                tags.update({"fragment_llm.run_dir": str(run_dir.resolve())})
                tags.update({GROUP_TAG: labels.group, "mlflow.parentRunId": parent} if parent else {})
                run_id = client.create_run(experiment, run_name=labels.name, tags=tags).info.run_id
            from mlflow.entities import Param

            items = [Param(key, value[:6000]) for key, value in params.items()]
            for first in range(0, len(items), 100):
                client.log_batch(run_id, params=items[first : first + 100])
        return cls(client, run_id, uri, parent)

    def record(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "tracking_uri": self.uri, "parent_run_id": self.parent}

    def where(self) -> str:
        return f"run {self.run_id} at {self.uri}"

    def log(self, rows: list[tuple[float, dict[str, Any]]]) -> None:
        from mlflow.entities import Metric

        metrics = [
            Metric(MLFLOW_NAME.sub("_", key), value, int(when * 1000), row["step"])
            for when, row in rows
            for key, value in scalars(row).items()
            if key != "step"
        ]
        self.last_step = max([self.last_step, *(row["step"] for _, row in rows)])
        for first in range(0, len(metrics), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, metrics=metrics[first : first + MLFLOW_BATCH])

    def sample(self, step: int, text: str) -> None:
        self.client.log_text(self.run_id, text, f"samples/step_{step:08d}.txt")

    def finish(self, status: str, summary: dict[str, Any]) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        metrics = [Metric(f"summary/{key}", value, now, self.last_step) for key, value in scalars(summary).items()]
        texts = [RunTag(f"summary/{key}", value[:5000]) for key, value in summary.items() if isinstance(value, str)]
        self.client.log_batch(self.run_id, metrics=metrics, tags=texts)
        self.client.set_terminated(self.run_id, MLFLOW_END[status])
        if self.parent:  # a sweep's parent run ends with its last job (and runs again with the next)
            self.client.set_terminated(self.parent, "FINISHED")


def mlflow_tag(tag: str) -> tuple[str, str]:
    """A tag `key=value` (a group option, an override) as MLflow's key and value; a bare tag is `tag=true`."""
    key, _, value = tag.partition("=")
    return MLFLOW_NAME.sub("_", key), value or "true"


@contextmanager
def bounded_requests() -> Iterator[None]:
    """An MLflow server that does not answer fails a start in START_SECONDS, without MLflow's retries
    (minutes, by default); the user's own settings of these variables are kept."""
    bounds = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(START_SECONDS)}
    added = {name: value for name, value in bounds.items() if name not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for name in added:
            os.environ.pop(name, None)


def mlflow_experiment(client: Any, uri: str, name: Optional[str]) -> str:
    """The id of the experiment `name` (null: MLFLOW_EXPERIMENT_NAME, else fragment-llm), made if it is new;
    with a local database its artifacts (the samples) go to mlartifacts/ beside it, not the working folder."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "fragment-llm"
    found = client.get_experiment_by_name(name)
    if found is None:
        database = uri.removeprefix("sqlite:///") if uri.startswith("sqlite:///") else None
        location = (Path(database).resolve().parent / "mlartifacts").as_uri() if database else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except Exception:  # another job of a sweep made it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
    if found.lifecycle_stage == "deleted":
        raise UserError(f"MLflow experiment {name} is deleted; restore it, or choose another logging.mlflow_experiment")
    return found.experiment_id


def sweep_parent(client: Any, experiment: str, group: str) -> str:
    """The run that a sweep's jobs (a group) nest under: the first made, when parallel jobs made several."""
    query = f"tags.`{PARENT_TAG}` = 'true' and tags.`{GROUP_TAG}` = '{group}'"

    def first() -> list[Any]:
        return client.search_runs([experiment], query, order_by=["attributes.start_time ASC"], max_results=1)

    found = first()
    if found:
        client.update_run(found[0].info.run_id, status="RUNNING")
        return found[0].info.run_id
    made = client.create_run(experiment, run_name=group, tags={PARENT_TAG: "true", GROUP_TAG: group}).info.run_id
    chosen = first()[0].info.run_id
    if chosen != made:
        client.delete_run(made)
    return chosen
