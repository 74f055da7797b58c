"""Training configuration: one dataclass, recipe defaults per model family.

``TrainConfig`` holds every knob of a run. Fields that depend on the model family (optimizer,
learning rate, schedule, clipping, EMA ...) default to ``None`` and are filled by
:func:`TrainConfig.for_model` from :data:`FAMILY_RECIPES`, keyed by model-name prefix, so a
new family plugs in by adding one row, never by editing the trainer.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")


@dataclass
class TrainConfig:
    """Everything a training run needs (data paths, model, recipe, runtime).

    Recipe fields left ``None`` are filled from the model family's recipe (see
    :data:`FAMILY_RECIPES`) by :meth:`for_model`.
    """

    # what to train on
    model: str = "efficientdet_d0"
    train: str | None = None
    val: str | None = None
    images: str | None = None
    data_options: dict[str, Any] = field(default_factory=dict)  # extra open_dataset kwargs (e.g. shapes sizes)
    allow_empty: bool = False  # accept train / val data without a single box (background images only)
    num_classes: int | None = None
    pretrained: str | None = None
    image_size: int | None = None
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # how long
    epochs: int | None = None
    max_minutes: float | None = None
    max_steps: int | None = None  # stop (and checkpoint) after this many optimizer steps
    # recipe (family defaults when None)
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    backbone_lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None
    warmup_factor: float | None = None
    min_lr_ratio: float | None = None
    lr_drop_at: float | None = None  # step schedule: fraction of training where lr drops x0.1
    clip_grad: float | None = None
    ema_decay: float | None = None  # 0 disables EMA
    bn_momentum: float | None = None  # set every BatchNorm's momentum (short runs: 0.1 tracks faster)
    # for this final fraction of training, BatchNorm normalises with its running statistics (and
    # stops updating them), so the weights adapt to the statistics evaluation will use
    freeze_bn_fraction: float = 0.0
    augment: dict[str, Any] = field(default_factory=dict)  # passed to the data layer's train_transforms
    # runtime
    grad_accum: int = 1
    amp: bool = False
    channels_last: bool = False
    workers: int = 0
    seed: int = 0
    device: str = "auto"
    sync_bn: bool = False
    deterministic: bool = False
    out: str = "runs/train"
    resume: str | None = None  # path, or "auto" for OUT/last.pt
    eval_every: int = 1  # epochs between evaluations (0: only at the end)
    eval_max_images: int | None = None
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True
    predictions_grid: int = 8  # validation images drawn in predictions.png

    @classmethod
    def for_model(cls, model: str, **values: Any) -> TrainConfig:
        """A config for ``model`` with its family's recipe filling every unset recipe field."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        recipe = family_recipe(model)
        merged = {key: value for key, value in recipe.items()}
        merged.update({key: value for key, value in values.items() if value is not None})
        config = cls(model=model, **merged)
        config.validate()
        return config

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, **flags: Any) -> TrainConfig:
        """Merge a YAML file (optional) with command-line ``flags`` (flags win; ``None`` = unset)."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            loaded = yaml.safe_load(Path(yaml_path).read_text()) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{yaml_path}: a training config must be a YAML mapping")
            values.update({key.replace("-", "_"): value for key, value in loaded.items()})
        values.update({key: value for key, value in flags.items() if value is not None})
        model = values.pop("model", None) or cls.model
        return cls.for_model(model, **values)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent option."""
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        positive = {"batch_size": self.batch_size, "lr": self.lr, "grad_accum": self.grad_accum}
        for name, value in positive.items():
            if value is None or value <= 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.epochs is not None and self.epochs <= 0:
            raise ValueError(f"epochs must be > 0, got {self.epochs}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not 0.0 <= self.freeze_bn_fraction < 1.0:
            raise ValueError(f"freeze_bn_fraction must be in [0, 1), got {self.freeze_bn_fraction}")
        if self.epochs is None and self.max_minutes is None and self.max_steps is None:
            raise ValueError("give --epochs, --max-minutes or max_steps: the run needs an end")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Recipe rows: model-name prefix -> defaults. The first matching prefix wins.
FAMILY_RECIPES: dict[str, dict[str, Any]] = {
    # EfficientDet paper: SGD momentum 0.9, wd 4e-5, lr 0.16 at batch 128 with warm-up then cosine,
    # EMA 0.9998. Our batch default is small (CPU), so lr is linearly scaled: 0.16 * 16 / 128 = 0.02.
    "efficientdet_": dict(
        batch_size=16, optimizer="sgd", lr=0.02, momentum=0.9, weight_decay=4e-5, schedule="cosine",
        warmup_epochs=1.0, warmup_factor=0.001, min_lr_ratio=0.0, clip_grad=10.0, ema_decay=0.9998,
    ),
    # DETR paper: AdamW 1e-4 (backbone 1e-5), wd 1e-4, grad clip 0.1, lr x0.1 at 2/3 of training.
    "detr_": dict(
        batch_size=4, optimizer="adamw", lr=1e-4, backbone_lr=1e-5, weight_decay=1e-4, schedule="step",
        lr_drop_at=2 / 3, warmup_epochs=0.0, warmup_factor=1.0, clip_grad=0.1, ema_decay=0.0,
    ),
}

GENERIC_RECIPE: dict[str, Any] = dict(
    batch_size=8, optimizer="adamw", lr=1e-3, weight_decay=1e-4, schedule="cosine", warmup_epochs=0.0,
    warmup_factor=1.0, min_lr_ratio=0.0, clip_grad=10.0, ema_decay=0.0,
)

_RECIPE_FALLBACKS: dict[str, Any] = dict(momentum=0.9, min_lr_ratio=0.0, lr_drop_at=2 / 3, warmup_factor=1.0)


def family_recipe(model: str) -> dict[str, Any]:
    """The recipe defaults for ``model`` (first matching prefix in :data:`FAMILY_RECIPES`)."""
    for prefix, recipe in FAMILY_RECIPES.items():
        if model.startswith(prefix):
            return {**_RECIPE_FALLBACKS, **recipe}
    return {**_RECIPE_FALLBACKS, **GENERIC_RECIPE}
