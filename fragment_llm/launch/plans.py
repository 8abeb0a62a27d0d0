"""The plan in a run: model=auto's choices made before the settings are checked (`auto_config`), the
plan logged and kept in summary.json as the run starts (`record_plan`), and beside it at the end what the
run reached (`record_reached`). See fragment_llm/plan/README.md."""

from __future__ import annotations

import logging
from typing import Optional, Sequence

from omegaconf import DictConfig, OmegaConf

from ..config.schema import Config, ConfigError, DataSource
from ..plan.machine import record_advice
from ..plan.planning import AUTO, Plan, from_checkpoint, planned, with_stand_ins
from ..runs.records import read_summary
from ..train import distributed
from ..train.outputs import RunOutputs

log = logging.getLogger(__name__)


def auto_config(
    cfg: DictConfig, overrides: Sequence[str], choices: dict[str, str]
) -> tuple[DictConfig, Optional[Plan]]:
    """With model=auto, the config with the keys auto chose, and its plan (logged). A resumed or fine-tuned
    run takes its model from its checkpoint: model=auto's open keys are filled with model=tiny's, for the
    checkpoint's to replace (or for the usual line saying they conflict)."""
    if choices.get("model") != AUTO:
        return cfg, None
    if from_checkpoint(cfg):
        return with_stand_ins(cfg), None
    ranks = distributed.from_environment()
    if ranks.distributed or (OmegaConf.select(cfg, "hardware.nproc") or 1) > 1:
        raise ConfigError(
            "model=auto plans for one process (its timed steps would differ from rank to rank); "
            "run it with hardware.nproc=1, or give the model (model=small, model.n_layer=...) for several"
        )
    cfg, plan = planned(cfg, overrides, auto=True)
    for line in plan.lines():
        log.info(line)
    return cfg, plan


def without_auto(overrides: Sequence[str]) -> list[str]:
    """A resumed or fine-tuned run's `overrides` to check against its checkpoint: all but `model=auto`, which
    sets no key of its own there (the checkpoint's model is the one auto chose when the run began, or the
    parent's); its stand-ins would otherwise read as a model=tiny given against it. Keys set beside it
    (`model.n_layer=...`) are still checked."""
    return [override for override in overrides if override.lstrip("+").replace(" ", "") != f"model={AUTO}"]


def record_plan(plan: Optional[Plan], settings: Config, new_run: bool, ranks: distributed.Ranks) -> Optional[Plan]:
    """The run's plan: model=auto's, or for a new single-corpus run on one process the plan of its
    settings as given (logged here). None for a resumed or fine-tuned run, a mixture or conversations,
    which the law was not fitted on."""
    if plan is not None or not new_run or not ranks.is_main or ranks.distributed or settings.hardware.nproc > 1:
        return plan
    if settings.data.source in (DataSource.mix, DataSource.chat):
        return None
    from ..config.load import to_plain

    _, plan = planned(OmegaConf.create(to_plain(settings)), (), auto=False)
    for line in plan.lines():
        log.info(line)
    return plan


def record_reached(plan: Optional[Plan], run_dir, outputs: RunOutputs) -> None:
    """The end of a planned run: the prediction beside the bits per byte it reached, in the log and summary.json."""
    if plan is None:
        return
    summary = read_summary(run_dir)
    reached = summary.get("val_bpb")
    if summary.get("status") != "completed" or reached is None:
        return
    o = plan.outcome
    inside = o.low <= reached <= o.high
    log.info(
        "Plan: predicted %.2f bits per byte (%.2f-%.2f), reached %.3f (%s the range)",
        o.bpb,
        o.low,
        o.high,
        reached,
        "inside" if inside else "outside",
    )
    reached_record = {"predicted_bpb": o.bpb, "low": o.low, "high": o.high, "val_bpb": reached}
    steps, seconds = summary.get("steps"), summary.get("train_seconds")
    if isinstance(steps, int) and isinstance(seconds, (int, float)) and seconds > 0 and o.steps > 0 and o.seconds > 0:
        predicted_rate, reached_rate = o.steps / o.seconds, steps / seconds
        log.info("Plan: predicted %.3g steps a second, made %.3g", predicted_rate, reached_rate)
        reached_record.update(predicted_steps_per_second=predicted_rate, steps_per_second=reached_rate)
        compiled = (summary.get("compile") or {}).get("compiled")  # the record times eager steps
        advice = None if compiled else record_advice(plan.machine, reached_rate / predicted_rate, seconds)
        if advice:
            log.warning(advice)
    outputs.try_update(plan_reached=reached_record)
