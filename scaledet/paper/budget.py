"""The ablation's training budget: a light module, read by ``scaledet paper --help`` without torch."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class AblationBudget:
    """The recipe shared by every run (EfficientDet-D0 network at a tiny resolution, from scratch)."""

    model: str = "efficientdet_d0"
    image_size: int = 128  # the demo's resolution (objects 20-51 px)
    train_images: int = 800
    val_images: int = 200
    epochs: int = 12  # 600 steps: shapes detectors leave the loss plateau after ~300 steps (measured)
    max_minutes: float = 20.0  # safety cap only: every run should end by its epochs (equal steps)
    max_steps: int | None = None  # for tests: stop after this many optimizer steps
    batch_size: int = 16
    lr: float = 0.04  # the demo's (swept on the shapes data)
    ema_decay: float = 0.999
    bn_momentum: float = 0.1
    freeze_bn_fraction: float = 0.2  # the demo's: without it a run's AP swings with the seed (docs/training.md)
    warmup_epochs: float = 1.0
    scale_range: tuple[float, float] = (0.75, 1.33)
    seeds: tuple[int, ...] = (0, 1)
    extra: dict[str, Any] = field(default_factory=dict)  # further TrainConfig fields

    def key(self) -> str:
        """A stable string naming the budget; cached runs of another budget are not reused."""
        return json.dumps({k: v for k, v in asdict(self).items() if k != "seeds"}, sort_keys=True)
