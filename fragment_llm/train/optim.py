"""Optimizers (AdamW, Muon with AdamW, SGD, Adafactor; weight decay plain or cautious) and the learning-rate
schedule, a function of the run's progress: the share of its steps done, or of its time budget spent."""

from __future__ import annotations

import math

import torch

from ..config.schema import OptimizerConfig, OptimizerName, SchedulerConfig, SchedulerName

NEWTON_SCHULZ = (3.4445, -4.7750, 2.0315)  # the quintic iteration's coefficients (Keller Jordan's Muon)


def orthogonalise(matrix: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """About U V^T of the matrix's SVD, by Newton-Schulz iteration: in bf16 on a GPU, as torch's Muon
    does; in fp32 elsewhere, because a CPU without native bf16 runs bf16 matmuls many times slower
    (torch.optim.Muon's bf16 made a Muon step on this 2-core CPU about 5x as slow as an AdamW one)."""
    a, b, c = NEWTON_SCHULZ
    x = matrix.bfloat16() if matrix.is_cuda else matrix.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / x.norm().clamp(min=1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return (x.T if tall else x).to(matrix.dtype)


class Muon(torch.optim.Optimizer):
    """Muon (momentum, then its orthogonalised direction) for 2-D weight matrices, as torch.optim.Muon
    with adjust_lr_fn="match_rms_adamw" (the update scaled to AdamW's RMS, 0.2 sqrt(max(rows, cols)),
    so one learning rate serves both) and the same state, but orthogonalising in fp32 off the GPU."""

    def __init__(self, params, lr: float, weight_decay: float, momentum: float, nesterov: bool):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum, "nesterov": nesterov})

    @torch.no_grad()
    def step(self, closure=None) -> None:
        for group in self.param_groups:
            for parameter in group["params"]:
                if parameter.grad is None:
                    continue
                state = self.state[parameter]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(parameter)
                buffer = state["momentum_buffer"]
                buffer.lerp_(parameter.grad, 1 - group["momentum"])
                update = parameter.grad.lerp(buffer, group["momentum"]) if group["nesterov"] else buffer
                scale = 0.2 * math.sqrt(max(parameter.shape[:2]))
                parameter.mul_(1 - group["lr"] * group["weight_decay"])
                parameter.add_(orthogonalise(update), alpha=-group["lr"] * scale)


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


def build_optimizer(
    model: torch.nn.Module, optimizer_settings: OptimizerConfig, device: torch.device
) -> torch.optim.Optimizer:
    """Weight decay on matrices (dim >= 2: weights and embeddings) only, never on gains, biases and
    scalars; fused AdamW on CUDA and CPU (on CPU about 5x faster than foreach), foreach elsewhere."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    uses_muon = optimizer_settings.name is OptimizerName.muon
    muon_names = {name for name, p in named if uses_muon and name.startswith("blocks.") and p.dim() == 2}
    parameters = [p for name, p in named if name not in muon_names]
    groups = [
        {"params": [p for p in parameters if p.dim() >= 2], "weight_decay": optimizer_settings.weight_decay},
        {"params": [p for p in parameters if p.dim() < 2], "weight_decay": 0.0},
    ]
    if optimizer_settings.name in (OptimizerName.adamw, OptimizerName.muon):
        fused = device.type in ("cuda", "cpu")
        optimizer = torch.optim.AdamW(
            groups,
            lr=optimizer_settings.lr,
            betas=(optimizer_settings.beta1, optimizer_settings.beta2),
            eps=optimizer_settings.eps,
            fused=fused or None,
            foreach=None if fused else True,
        )
        if uses_muon:
            muon = Muon(
                [p for name, p in named if name in muon_names],
                lr=optimizer_settings.lr,
                weight_decay=optimizer_settings.weight_decay,
                momentum=optimizer_settings.momentum,
                nesterov=optimizer_settings.nesterov,
            )
            optimizer = MuonWithAdamW(muon, optimizer)
    elif optimizer_settings.name is OptimizerName.sgd:
        optimizer = torch.optim.SGD(
            groups,
            lr=optimizer_settings.lr,
            momentum=optimizer_settings.momentum,
            nesterov=optimizer_settings.nesterov and optimizer_settings.momentum > 0,
        )
    else:
        optimizer = torch.optim.Adafactor(groups, lr=optimizer_settings.lr)
    for group in optimizer.param_groups:
        group["initial_lr"] = optimizer_settings.lr
    return CautiousWeightDecay(optimizer) if optimizer_settings.cautious_weight_decay else optimizer


def lr_factor(schedule: SchedulerConfig, progress: float, tick: float) -> float:
    """The learning rate, as a fraction of the peak, at `progress` (0 at the start, 1 at the end). `tick` is
    the progress one step makes, so that the first warmup step trains (at tick / (warmup + tick)) and,
    counted in steps, warmup and decay match torch's LinearLR and CosineAnnealingLR step for step.

    cosine and linear: warmup, then decay over the rest to min_lr_fraction; wsd (warmup-stable-decay):
    warmup, the peak, then a linear decay over the last decay_fraction; constant: warmup, then the peak.
    """
    warmup, low = schedule.warmup_fraction, schedule.min_lr_fraction
    if progress < warmup:
        return (progress + tick) / (warmup + tick)
    if schedule.name is SchedulerName.wsd:
        remaining = 1.0 - progress
        if remaining >= schedule.decay_fraction:
            return 1.0
        return low + (1.0 - low) * max(0.0, remaining) / schedule.decay_fraction
    done = min(1.0, (progress - warmup) / max(1.0 - warmup, 1e-12))
    if schedule.name is SchedulerName.cosine:
        return low + (1.0 - low) * (1.0 + math.cos(math.pi * done)) / 2.0
    if schedule.name is SchedulerName.linear:
        return 1.0 - (1.0 - low) * done
    return 1.0


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor
