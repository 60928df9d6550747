"""Learning-rate schedule shared by every trainer: linear warm-up, then cosine decay (or constant).

lr(step) = peak * (step + 1) / warmup                              for step < warmup
         = peak * (r + (1 - r) * (1 + cos(pi * p)) / 2)            after, p = (step - warmup) / (steps - warmup)
with r = min_lr_ratio (cosine; SGDR, Loshchilov & Hutter 2017) or lr = peak (constant). `step` counts
optimizer steps already taken, so the first step runs at peak / warmup (never at 0) and the last
(step = steps - 1) just above the floor. The scheduler is a torch LambdaLR: its state_dict is what
a checkpoint saves (prover.rl.checkpointing).
"""

from __future__ import annotations

import math

import torch
from torch.optim.lr_scheduler import LambdaLR

from prover.config import TrainingConfig


def lr_factor(step: int, *, warmup_steps: int, steps: int, schedule: str = "cosine",
              min_lr_ratio: float = 0.1) -> float:
    """The multiplier of the peak learning rate for the optimizer step that follows `step` steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown lr schedule {schedule!r} (known: cosine, constant)")
    span = max(steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainingConfig) -> LambdaLR:
    """A LambdaLR following `lr_factor` with the fields of `config` (training section)."""
    return LambdaLR(optimizer, lambda step: lr_factor(
        step, warmup_steps=config.warmup_steps, steps=config.steps, schedule=config.lr_schedule,
        min_lr_ratio=config.min_lr_ratio))
