"""What a run says about itself, as a part of the Trainer (train/trainer.py): what it trains as it
starts, where it is (summary.json), and its figures as it ends, through RunOutputs.

`ReportedRun` is a base of `Trainer`: its methods read the trainer's state."""

from __future__ import annotations

import logging
import math
import time
from typing import Any, Optional

import torch

from ..model.generate import Sampling, generate_text
from ..text import plural
from .hardware import gpu_missing, peak_matmul_flops
from .outputs import format_seconds

log = logging.getLogger(__name__)

SAMPLE_PROMPT_TOKENS = 8
SAMPLE_TOKENS = 48
SAMPLE_SAMPLING = Sampling(temperature=0.8, top_k=50)
# The share of the CPU's measured matmul peak a projection assumes training reaches (`fragment-llm bench`
# measures 58-63% on the CPU profiles' models).
PROJECTED_MFU = 0.5


class ReportedRun:
    def start(self) -> None:
        """Say what is trained, mark the summary running, and evaluate the model a new run starts from."""
        if gpu_missing(self.settings.hardware, self.device) and self.ranks.is_main:
            log.warning(self.missing_gpu_line())
        length = (
            f"for {format_seconds(self.budget)} (train.time_budget)"
            if self.budget
            else f"{plural(self.total_steps, 'step')} ({self.steps_per_epoch} per epoch, "
            f"{plural(self.epochs, 'epoch')})"
        )
        self.outputs.run_started(
            self.model_config,
            self.model.num_parameters(),
            self.precision.name,
            self.device,
            self.settings.train,
            self.tokens_per_step,
            length,
            summary={
                **self.summary(),
                "vocab_size": self.data.vocab_size,
                "train_tokens": self.data.train_tokens,
                "val_tokens": self.data.val_tokens,
                "data_seconds": round(self.data.seconds, 3),
                "time_budget_s": self.budget,
                "compile": self.compile_choice,
                **(
                    {"source_weights": {source.name: source.share for source in self.data.sources}}
                    if self.data.mixture
                    else {}
                ),
            },
        )
        if self.dropout_epochs is not None and not self.budget:
            self.outputs.dropout_chosen(self.model_config.dropout, self.dropout_epochs, 0, False)
        if self.step == 0:
            initial_val_loss = self.evaluate()
            self.outputs.update(initial_val_loss=initial_val_loss)
        else:
            self.outputs.resumed(self.step, self.total_steps)
        self.model.train()

    def missing_gpu_line(self) -> str:
        """A GPU profile on a machine without a GPU, in one line: what trains instead, how long that is
        projected to take (its training and evaluation FLOPs at PROJECTED_MFU of this CPU's measured matmul
        peak), and how to stop it for a recipe made for a CPU."""
        precision, train_settings = self.precision, self.settings.train
        tokens_per_sec = (
            PROJECTED_MFU
            * peak_matmul_flops(precision.dtype or torch.float32, self.device)
            / self.model.flops_per_token()
        )
        if self.budget:
            seconds = self.budget - self.train_seconds
        else:  # an evaluation's forward passes are a third of training's work per token
            steps = self.total_steps - self.step  # and an evaluation at the start, every eval_interval and epoch
            evaluations = (self.step == 0) + steps // train_settings.eval_interval + -(-steps // self.steps_per_epoch)
            windows = evaluations * train_settings.eval_iters * train_settings.batch_size * len(self.data.sources)
            tokens = steps * self.tokens_per_step + windows * self.model_config.block_size / 3
            seconds = tokens / tokens_per_sec
        return (
            f"No GPU found: hardware.device=auto trains on the CPU instead, in {precision.name}"
            f"{f' ({precision.note})' if precision.note else ''}, projected at about {tokens_per_sec:,.0f} "
            f"tokens/s to take {rough_duration(seconds)}; to stop, press Ctrl-C now and train a recipe made for a "
            "CPU (hardware=cpu, or experiment=low_end_cpu); hardware.device=cpu trains this one without this line"
        )

    def finish(self, start_step: int, train_loss: float) -> None:
        """Save the final model, then mark the summary completed with the run's figures."""
        loop_seconds = time.perf_counter() - self.loop_started
        ending_started = time.perf_counter()
        final = self.paths.final_model
        self.save_checkpoint(final)
        tokens_per_sec = (self.step - start_step) * self.tokens_per_step / max(loop_seconds, 1e-9)
        metrics = {
            "best_val_loss": self.best_val_loss,
            "best_val_bpb": self.best_val_bpb,
            "val_loss": self.last_val_loss,
            "train_loss": train_loss,
            "tokens_per_sec": tokens_per_sec,
        }
        self.outputs.run_finished(
            loop_seconds,
            final,
            metrics,
            summary={
                **self.summary(),
                "train_loss": train_loss,
                "tokens_per_sec": round(tokens_per_sec, 1),
                "startup_seconds": round(self.loop_started - self.started, 2),
                "final_seconds": round(time.perf_counter() - ending_started, 2),
                "early_stopped": self.early_stopped,
            },
        )

    def summary(self) -> dict[str, Any]:
        """Where the run is, for summary.json (losses not measured yet are null; a mixture's latest, by
        source, in val_loss_by_source and val_bpb_by_source)."""
        by_source = self.last_val_by_source
        mixture = (
            {
                "val_loss_by_source": {name: loss for name, (loss, _) in by_source.items()} or None,
                "val_bpb_by_source": {name: bpb for name, (_, bpb) in by_source.items()} or None,
            }
            if self.data.mixture
            else {}
        )
        return {
            "steps": self.step,
            "epochs": self.step / self.steps_per_epoch,
            "tokens": self.step * self.tokens_per_step,
            "val_loss": None if math.isnan(self.last_val_loss) else self.last_val_loss,
            "best_val_loss": None if math.isinf(self.best_val_loss) else self.best_val_loss,
            "val_bpb": None if math.isnan(self.last_val_bpb) else self.last_val_bpb,
            "best_val_bpb": None if math.isinf(self.best_val_bpb) else self.best_val_bpb,
            "best_step": self.best_step,
            "dropout": self.model_config.dropout,
            "wall_time_s": round(time.perf_counter() - self.started, 2),
            "train_seconds": round(self.train_seconds, 2),
            "eta_seconds": None if (eta := self.eta_seconds()) is None else round(eta, 1),
            **mixture,
        }

    def eta_seconds(self) -> Optional[float]:
        """Training time left: a time budget's rest, or the steps left at the pace so far (evaluations and
        checkpoints included); None before the first step."""
        if self.finished() or self.early_stopped:
            return 0.0
        if self.budget:
            return self.budget - self.train_seconds
        return (self.total_steps - self.step) * self.train_seconds / self.step if self.step else None

    def sample(self) -> None:
        """A short sample from the run's fixed prompt."""
        self.model.eval()
        text = self.sample_prompt + "".join(
            generate_text(
                self.model,
                self.data.tokenizer,
                self.sample_prompt,
                SAMPLE_TOKENS,
                SAMPLE_SAMPLING,
                torch.Generator().manual_seed(self.settings.train.seed),
            )
        )
        self.model.train()
        self.outputs.sampled(self.step, text)


def rough_duration(seconds: float) -> str:
    """`under a minute`, `about 40 minutes`, `about 3.5 hours`: a projection's precision."""
    if seconds < 60:
        return "under a minute"
    if seconds < 5400:
        return f"about {round(seconds / 60)} minute{'s' if round(seconds / 60) > 1 else ''}"
    return f"about {seconds / 3600:.1f} hours"
