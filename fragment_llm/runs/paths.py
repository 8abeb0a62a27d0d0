"""A run directory's layout, in one object: every file and folder a run writes, and a sweep's own files.

The class attributes are the names relative to a run (`RunPaths.FINAL_MODEL`, for messages and for
matching); an instance gives each under its directory (`RunPaths(run_dir).final_model`).
"""

from __future__ import annotations

import os
from pathlib import Path


class RunPaths:
    SUMMARY = Path("summary.json")  # status and figures, updated at every evaluation
    LOG = Path("train.log")
    TOKENIZER = Path("tokenizer.json")
    METRICS = Path("metrics.jsonl")  # one JSON object per logged step
    TENSORBOARD = Path("tensorboard")
    CHECKPOINTS = Path("checkpoints")  # step_N.pt, checkpoint_epoch_N.pt, last.pt
    LAST = CHECKPOINTS / "last.pt"  # always the newest state
    MODELS = Path("models")
    FINAL_MODEL = MODELS / "final_model.pt"
    BEST_MODEL = MODELS / "best_model.pt"  # the lowest validation loss of the run
    HYDRA = Path(".hydra")  # Hydra's records of the composed config, the overrides and the group choices
    CONFIG_RECORD = HYDRA / "config.yaml"
    OVERRIDES_RECORD = HYDRA / "overrides.yaml"
    HYDRA_RECORD = HYDRA / "hydra.yaml"
    LOCK = Path(".lock")  # held by the process training into the run
    # A sweep's directory, above its jobs' run directories.
    SWEEP_REPORT = Path("sweep.txt")
    SWEEP_CURVES = Path("curves.png")
    # What says a run started here: Hydra's records (written first), or what it leaves to continue or load.
    # (train.log, tensorboard/ and tokenizer.json are names other programs write too.)
    RUN_MARKERS = (HYDRA, SUMMARY, CHECKPOINTS, MODELS)

    def __init__(self, root: Path | str):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunPaths({str(self.root)!r})"

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def log(self) -> Path:
        return self.root / self.LOG

    @property
    def tokenizer(self) -> Path:
        return self.root / self.TOKENIZER

    @property
    def metrics(self) -> Path:
        return self.root / self.METRICS

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def last(self) -> Path:
        return self.root / self.LAST

    @property
    def models(self) -> Path:
        return self.root / self.MODELS

    @property
    def final_model(self) -> Path:
        return self.root / self.FINAL_MODEL

    @property
    def best_model(self) -> Path:
        return self.root / self.BEST_MODEL

    @property
    def hydra(self) -> Path:
        return self.root / self.HYDRA

    @property
    def config_record(self) -> Path:
        return self.root / self.CONFIG_RECORD

    @property
    def hydra_record(self) -> Path:
        return self.root / self.HYDRA_RECORD

    @property
    def lock(self) -> Path:
        return self.root / self.LOCK

    @property
    def sweep_report(self) -> Path:
        return self.root / self.SWEEP_REPORT

    @property
    def sweep_curves(self) -> Path:
        return self.root / self.SWEEP_CURVES

    def holds_run(self) -> bool:
        """Whether a run was ever started here: it has Hydra's records (written first), a summary, checkpoints
        or models. (Claiming a directory for a run asks more: that it holds nothing else; see runs/claim.py.)"""
        return any(os.path.lexists(self.root / marker) for marker in self.RUN_MARKERS)

    @staticmethod
    def checkpoint_run(checkpoint: Path) -> Path:
        """The run directory a checkpoint belongs to (<run>/checkpoints/x.pt, <run>/models/final_model.pt)."""
        return Path(checkpoint).resolve().parent.parent
