"""Optimizers (AdamW, Muon with AdamW, SGD, Adafactor; weight decay plain or cautious) and the learning-rate
schedule, a function of the run's progress: the share of its steps done, or of its time budget spent."""

from __future__ import annotations

import math

import torch

from .config import OptimizerConfig, OptimizerName, SchedulerConfig, SchedulerName


class MuonWithAdamW(torch.optim.Optimizer):
    """Muon for the transformer blocks' weight matrices and AdamW for the rest (embeddings, head, gains,
    biases, scalars), stepped and scheduled as one optimizer: its param_groups are the two optimizers' own."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer):
        self.optimizers = {"muon": muon, "adamw": adamw}
        super().__init__(self._inner_groups(), {})

    def _inner_groups(self) -> list[dict]:
        return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for optimizer in self.optimizers.values():
            optimizer.step()

    def state_dict(self) -> dict:
        return {name: optimizer.state_dict() for name, optimizer in self.optimizers.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        for name, optimizer in self.optimizers.items():
            optimizer.load_state_dict(state_dict[name])
        self.param_groups = self._inner_groups()  # loading replaces the inner group dicts


class CautiousWeightDecay(torch.optim.Optimizer):
    """Cautious weight decay (Chen et al., 2025; nanochat): each weight decays only where the optimizer's
    own update already moves it towards zero, so decay never fights the gradient. The inner optimizer
    steps without decay; the groups' decay is kept as `cautious_weight_decay` and applied after, as
    decoupled decay (lr x decay x weight), to the coordinates whose step and weight have opposite
    signs. A step the GradScaler skips moves nothing, so nothing decays."""

    def __init__(self, inner: torch.optim.Optimizer):
        self.inner = inner
        for group in inner.param_groups:
            group["cautious_weight_decay"], group["weight_decay"] = group["weight_decay"], 0.0
        super().__init__(inner.param_groups, {})
        self.param_groups = inner.param_groups
        self.state = inner.state

    @torch.no_grad()
    def step(self, closure=None) -> None:
        decayed = [group for group in self.inner.param_groups if group["cautious_weight_decay"] > 0]
        before = [[p.detach().clone() for p in group["params"]] for group in decayed]
        self.inner.step()
        for group, olds in zip(decayed, before):
            for parameter, old in zip(group["params"], olds):
                towards_zero = (parameter - old) * old < 0
                parameter.sub_(old * towards_zero, alpha=group["lr"] * group["cautious_weight_decay"])

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        self.inner.load_state_dict(state_dict)
        self.param_groups = self.inner.param_groups


def build_optimizer(model: torch.nn.Module, settings: OptimizerConfig, device: torch.device) -> torch.optim.Optimizer:
    """Weight decay on matrices (dim >= 2: weights and embeddings) only, never on gains, biases and
    scalars; fused AdamW on CUDA and CPU (on CPU about 5x faster than foreach), foreach elsewhere."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    muon_names = {name for name, p in named if settings.name is OptimizerName.muon and name.startswith("blocks.") and p.dim() == 2}
    parameters = [p for name, p in named if name not in muon_names]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": settings.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    if settings.name in (OptimizerName.adamw, OptimizerName.muon):
        fused = device.type in ("cuda", "cpu")
        optimizer = torch.optim.AdamW(
            groups, lr=settings.lr, betas=(settings.beta1, settings.beta2), eps=settings.eps,
            fused=fused or None, foreach=None if fused else True,
        )
        if settings.name is OptimizerName.muon:
            # Muon's update scaled to AdamW's RMS ("match_rms_adamw"), so one learning rate serves both.
            muon = torch.optim.Muon(
                [p for name, p in named if name in muon_names], lr=settings.lr, weight_decay=settings.weight_decay,
                momentum=settings.momentum, nesterov=settings.nesterov, adjust_lr_fn="match_rms_adamw",
            )
            optimizer = MuonWithAdamW(muon, optimizer)
    elif settings.name is OptimizerName.sgd:
        optimizer = torch.optim.SGD(
            groups, lr=settings.lr, momentum=settings.momentum, nesterov=settings.nesterov and settings.momentum > 0
        )
    else:
        optimizer = torch.optim.Adafactor(groups, lr=settings.lr)
    for group in optimizer.param_groups:
        group["initial_lr"] = settings.lr
    return CautiousWeightDecay(optimizer) if settings.cautious_weight_decay else optimizer


def lr_factor(settings: SchedulerConfig, progress: float, tick: float) -> float:
    """The learning rate, as a fraction of the peak, at `progress` (0 at the start, 1 at the end). `tick` is
    the progress one step makes, so that the first warmup step trains (at tick / (warmup + tick)) and,
    counted in steps, warmup and decay match torch's LinearLR and CosineAnnealingLR step for step.

    cosine and linear: warmup, then decay over the rest to min_lr_fraction; wsd (warmup-stable-decay):
    warmup, the peak, then a linear decay over the last decay_fraction; constant: warmup, then the peak.
    """
    warmup, low = settings.warmup_fraction, settings.min_lr_fraction
    if progress < warmup:
        return (progress + tick) / (warmup + tick)
    if settings.name is SchedulerName.wsd:
        remaining = 1.0 - progress
        if remaining >= settings.decay_fraction:
            return 1.0
        return low + (1.0 - low) * max(0.0, remaining) / settings.decay_fraction
    done = min(1.0, (progress - warmup) / max(1.0 - warmup, 1e-12))
    if settings.name is SchedulerName.cosine:
        return low + (1.0 - low) * (1.0 + math.cos(math.pi * done)) / 2.0
    if settings.name is SchedulerName.linear:
        return 1.0 - (1.0 - low) * done
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
