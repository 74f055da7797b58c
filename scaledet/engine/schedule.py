"""Learning-rate schedules as a pure function of training progress.

``LRSchedule.factor(step, progress)`` -> multiplier of each parameter group's base lr:
linear warm-up over ``warmup_steps`` optimizer steps (or over the first ``warmup_fraction`` of
the run's progress, when the number of steps is not known in advance) from ``warmup_factor`` to 1, then either
cosine decay to ``min_ratio`` or a x0.1 step at ``drop_at`` (fraction of training).
``progress`` in [0, 1] is supplied by the trainer (steps done / planned steps, or elapsed / budget
time for ``--max-minutes`` runs, whichever is further), so time-limited runs still anneal fully.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch


@dataclass
class LRSchedule:
    """Warm-up + cosine (EfficientDet) or warm-up + step drop (DETR)."""

    kind: str = "cosine"
    warmup_steps: int = 0
    warmup_factor: float = 1.0
    warmup_fraction: float = 0.0  # used when warmup_steps is 0
    min_ratio: float = 0.0
    drop_at: float = 2 / 3

    def factor(self, step: int, progress: float) -> float:
        """Multiplier for optimizer step ``step`` (0-based) at ``progress`` in [0, 1]."""
        progress = min(max(progress, 0.0), 1.0)
        if self.kind == "cosine":
            value = self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        elif self.kind == "step":
            value = 0.1 if progress >= self.drop_at else 1.0
        else:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        if step < self.warmup_steps:
            alpha = step / self.warmup_steps
        elif not self.warmup_steps and progress < self.warmup_fraction:
            alpha = progress / self.warmup_fraction
        else:
            return value
        return value * (self.warmup_factor * (1 - alpha) + alpha)

    def apply(self, optimizer: torch.optim.Optimizer, step: int, progress: float) -> float:
        """Set every group's lr to ``initial_lr * factor``; returns the factor."""
        value = self.factor(step, progress)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * value
        return value

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
