"""Training configuration: one dataclass; the recipe fills what the user leaves unset.

``TrainConfig`` holds every knob of a run. Recipe fields (optimizer, learning rate, schedule,
clipping, EMA ...) default to ``None`` and are filled by :func:`TrainConfig.for_model` from the
chosen recipe's row for the model family (:func:`scaledet.engine.recipe.family_recipe`):
``recipe="auto"`` (the default, adapted to the run's length and data) or ``"paper"`` (the published
recipe). A family plugs in with the ``RECIPES`` rows of its own package, never by editing the engine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scaledet.engine import distributed as dist_utils
from scaledet.engine.recipe import RECIPES, family_recipe, from_scratch_changes, scaled_lr
from scaledet.errors import OptionError, UserError
from scaledet.inference.tiling import MAX_OVERLAP

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step")


#: ``--anchors`` values (see ``TrainConfig.anchors``)
ANCHOR_CHOICES = ("auto", "fit", "default")

@dataclass
class TrainConfig:
    """Everything a training run needs (data paths, model, recipe, runtime).

    Recipe fields left ``None`` are filled from the model family's row of ``recipe`` (see
    :mod:`scaledet.engine.recipe`) by :meth:`for_model`; those still ``None`` after that (EMA decay,
    BatchNorm momentum, evaluation interval, augmentation under ``"auto"``) are chosen by the
    trainer once it knows how many optimizer steps the run makes.
    """

    # what to train on
    model: str = "efficientdet_d0"
    train: str | None = None
    val: str | None = None
    images: str | None = None  # COCO: the image folder (of both sets unless val_images is given)
    val_images: str | None = None  # COCO: the validation set's image folder (default: images)
    data_options: dict[str, Any] = field(default_factory=dict)  # extra open_dataset kwargs (e.g. shapes sizes)
    allow_empty: bool = False  # accept train / val data without a single box (background images only)
    num_classes: int | None = None
    pretrained: str | None = None
    image_size: int | None = None
    # "auto": fitted to the training boxes when that covers them better than the published anchors or, with
    # --pretrained, than the checkpoint's (its box head was trained for them); "fit": the search's best even
    # when fine-tuning; "default": the published ones (or the checkpoint's)
    anchors: str = "auto"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # large images: train on native-resolution tile x tile crops, validate through tiles (None: off)
    tile: int | None = None
    tile_overlap: float = 0.2  # validation tiles share this fraction of a tile
    tile_min_visible: float = 0.5  # a training box cut by the crop is dropped below this fraction of its area
    # how long
    epochs: int | None = None
    max_minutes: float | None = None
    max_steps: int | None = None  # stop (and checkpoint) after this many optimizer steps
    # recipe (family defaults when None)
    recipe: str = "auto"  # "auto": adapted to the run's length and data; "paper": the published recipe
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    backbone_lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    schedule: str | None = None
    warmup_epochs: float | None = None  # warm-up length in epochs (paper recipe) ...
    warmup_fraction: float | None = None  # ... or as a fraction of the run (auto recipe); epochs win if both
    warmup_factor: float | None = None
    min_lr_ratio: float | None = None
    lr_drop_at: float | None = None  # step schedule: fraction of training where lr drops x0.1
    clip_grad: float | None = None
    ema_decay: float | None = None  # 0 disables EMA; None: from the run's length (auto recipe) or 0.9998
    bn_momentum: float | None = None  # every BatchNorm's momentum; None: from the run's length (auto) or the model's
    # for this final fraction of training, BatchNorm normalises with its running statistics (and
    # stops updating them), so the weights adapt to the statistics evaluation will use
    freeze_bn_fraction: float | None = None
    augment: dict[str, Any] = field(default_factory=dict)  # train_transforms kwargs; auto recipe: chosen by the plan
    # runtime
    grad_accum: int = 1
    amp: bool = False
    channels_last: bool | None = None  # None: on for CPU fp32 training (1.35x faster for D0, both ISAs)
    workers: int = 0
    image_cache_gb: float = 4.0  # decoded training images kept in memory (uint8) up to this size; 0: off
    keep_freed_memory: bool = True  # CPU: glibc keeps freed blocks for reuse (1.3x faster steps; allocator.py)
    seed: int = 0
    threads: int = 0  # torch CPU threads; 0: OMP_NUM_THREADS if set, else the idle cores
    device: str = "auto"
    sync_bn: bool = False
    deterministic: bool = False
    out: str = "runs/train"
    resume: str | None = None  # path, or "auto" for OUT/last.pt
    eval_every: int | None = None  # epochs between evaluations (0: only at the end; None: ~4 per run)
    eval_max_images: int | None = None
    log_every: int = 10
    tensorboard: bool = False
    progress: bool = True
    predictions_grid: int = 8  # validation images drawn in predictions.png

    @classmethod
    def for_model(cls, model: str, **values: Any) -> TrainConfig:
        """A config for ``model`` with the recipe's row filling every unset recipe field.

        ``values`` may name the recipe (``recipe="paper"``); unset it is ``"auto"``. When the
        learning rate is not given, the row's lr is scaled from its ``reference_batch`` to the global
        batch ``batch_size * grad_accum * processes`` (:func:`~scaledet.engine.recipe.scaled_lr`;
        processes: torchrun's ``WORLD_SIZE``, ``batch_size`` being per process). The row's
        ``model_overrides`` are defaults under the user's; so, under the auto recipe without
        ``pretrained`` weights, are the family's from-scratch changes
        (:func:`~scaledet.engine.recipe.from_scratch_changes`: a backbone published for fine-tuning
        trains its BatchNorm, all its stages and, unless ``backbone_lr`` is given, at ``lr``).
        """
        known = [f.name for f in dataclasses.fields(cls)]
        unknown = set(values) - set(known)
        if unknown:
            named = ", ".join(_with_suggestion(key, known) for key in sorted(unknown))
            raise ValueError(f"unknown training option(s): {named}")
        given = {key: value for key, value in values.items() if value is not None}
        recipe = given.get("recipe", "auto")
        row = family_recipe(model, recipe)
        merged = {key: value for key, value in row.items() if key != "reference_batch"}
        merged.update(given)
        scratch = from_scratch_changes(model) if recipe == "auto" and not given.get("pretrained") else {}
        merged["model_overrides"] = {**row.get("model_overrides", {}), **scratch.get("model_overrides", {}),
                                     **given.get("model_overrides", {})}
        if "lr" not in given:
            merged["lr"] = scaled_lr(row, merged["batch_size"], merged.get("grad_accum", 1), dist_utils.world_size())
        if scratch.get("backbone_at_lr") and "backbone_lr" not in given:
            merged["backbone_lr"] = merged["lr"]
        config = cls(model=model, **merged)
        config.validate()
        return config

    @classmethod
    def from_sources(cls, yaml_path: str | Path | None = None, **flags: Any) -> TrainConfig:
        """Merge a YAML file (optional) with command-line ``flags`` (flags win; ``None`` = unset)."""
        values: dict[str, Any] = {}
        if yaml_path is not None:
            from scaledet.data.base import read_text  # imported here: the data layer, for a config file only

            try:
                loaded = yaml.safe_load(read_text(Path(yaml_path))) or {}  # as every data file: BOM, UTF-16
            except yaml.YAMLError as error:
                mark = getattr(error, "problem_mark", None)
                where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
                raise UserError(f"{yaml_path}: not valid YAML{where}: "
                                f"{getattr(error, 'problem', None) or error}; fix the file") from error
            if not isinstance(loaded, dict):
                raise UserError(f"{yaml_path}: a training config must be a YAML mapping of option: value")
            fields = {f.name: f.type for f in dataclasses.fields(cls)}
            values.update({key.replace("-", "_"): _typed(key.replace("-", "_"), value, fields, yaml_path)
                           for key, value in loaded.items()})
        values.update({key: value for key, value in flags.items() if value is not None})
        model = values.pop("model", None) or cls.model
        return cls.for_model(model, **values)

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first inconsistent option."""
        if self.anchors not in ANCHOR_CHOICES:
            raise OptionError("anchors", f"must be one of {', '.join(ANCHOR_CHOICES)}, got {self.anchors!r}")
        if self.recipe not in RECIPES:
            raise OptionError("recipe", f"must be one of {RECIPES}, got {self.recipe!r}")
        if self.optimizer not in OPTIMIZERS:
            raise OptionError("optimizer", f"must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise OptionError("schedule", f"must be one of {SCHEDULES}, got {self.schedule!r}")
        for option in dataclasses.fields(self):  # nan passes every comparison below, inf most
            value = getattr(self, option.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise OptionError(option.name, f"must be a finite number, got {value!r}")
        positive = {"batch_size": self.batch_size, "grad_accum": self.grad_accum, "lr": self.lr,
                    "log_every": self.log_every}  # grad_accum before lr: the lr is scaled by it
        for name, value in positive.items():
            if value is None or value <= 0:
                raise OptionError(name, f"must be > 0, got {value!r}")
        if self.backbone_lr is not None and self.backbone_lr < 0:
            raise OptionError("backbone_lr", f"must be >= 0 (0 freezes the backbone's weights), got {self.backbone_lr!r}")
        at_least = {"max_steps": (self.max_steps, 1), "num_classes": (self.num_classes, 1),
                    "eval_every": (self.eval_every, 0), "workers": (self.workers, 0),
                    "image_cache_gb": (self.image_cache_gb, 0), "clip_grad": (self.clip_grad, 0),
                    "warmup_epochs": (self.warmup_epochs, 0), "weight_decay": (self.weight_decay, 0),
                    "eval_max_images": (self.eval_max_images, 1)}
        for name, (value, low) in at_least.items():
            if value is not None and value < low:
                raise OptionError(name, f"must be >= {low}, got {value!r}")
        for name, value in (("momentum", self.momentum), ("bn_momentum", self.bn_momentum),
                            ("min_lr_ratio", self.min_lr_ratio), ("warmup_factor", self.warmup_factor),
                            ("lr_drop_at", self.lr_drop_at)):
            if value is not None and not 0.0 <= value <= 1.0:
                raise OptionError(name, f"must be in [0, 1], got {value!r}")
        if self.epochs is not None and self.epochs <= 0:
            raise OptionError("epochs", f"must be > 0, got {self.epochs}")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise OptionError("max_minutes", f"must be > 0, got {self.max_minutes}")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise OptionError("ema_decay", f"must be in [0, 1), got {self.ema_decay}")
        if self.freeze_bn_fraction is not None and not 0.0 <= self.freeze_bn_fraction < 1.0:
            raise OptionError("freeze_bn_fraction", f"must be in [0, 1), got {self.freeze_bn_fraction}")
        if self.warmup_fraction is not None and not 0.0 <= self.warmup_fraction < 1.0:
            raise OptionError("warmup_fraction", f"must be in [0, 1), got {self.warmup_fraction}")
        if self.tile is not None and self.tile < 16:
            raise OptionError("tile", f"must be at least 16 pixels, got {self.tile}")
        if not 0.0 <= self.tile_overlap <= MAX_OVERLAP:  # as predict's --overlap
            raise OptionError("tile_overlap", f"must be in [0, {MAX_OVERLAP}], got {self.tile_overlap}")
        if not 0.0 < self.tile_min_visible <= 1.0:
            raise OptionError("tile_min_visible", f"must be in (0, 1], got {self.tile_min_visible}")
        if self.threads < 0:
            raise OptionError("threads", f"must be >= 0 (0: automatic), got {self.threads}")
        if self.epochs is None and self.max_minutes is None and self.max_steps is None:
            raise ValueError("give --epochs, --max-minutes or --max-steps (epochs, max_minutes or max_steps in "
                             "Python): the run needs an end")
        dist_utils.resolve_device(self.device)  # a misspelt device or a missing GPU: one line, before the data loads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _typed(name: str, value: Any, fields: dict[str, str], source: str | Path) -> Any:
    """A YAML ``value`` for option ``name`` checked against the option's type (``fields``: name -> its
    annotation), so a wrong one is a line naming the file and the option, not a traceback later. Numbers
    written as strings are read; ``resume: true`` is ``--resume`` (``"auto"``). Unknown names pass
    through (:meth:`TrainConfig.for_model` names them)."""
    annotation = fields.get(name)
    if annotation is None or value is None:
        return value
    kind = annotation.replace(" | None", "").strip()
    if name == "resume" and isinstance(value, bool):
        return "auto" if value else None
    names = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string"}
    expected = "a mapping" if kind.startswith("dict") else names.get(kind, kind)
    wrong = UserError(f"{source}: {name}: {value!r} is not {expected}")
    if kind in ("int", "float"):
        if isinstance(value, bool):
            raise wrong
        if kind == "int" and isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
            return value  # e.g. image_size: [h, w]
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise wrong from None
        if kind == "int":
            if number != int(number):
                raise wrong
            return int(number)
        return number
    if kind == "bool" and not isinstance(value, bool):
        raise wrong
    if kind.startswith("dict") and not isinstance(value, dict):
        raise wrong
    if kind == "str" and not isinstance(value, (str, int, float)):
        raise wrong
    return str(value) if kind == "str" else value


__all__ = ["TrainConfig", "family_recipe"]


#: what other detection toolkits (Ultralytics, Detectron2, mmdetection, effdet's train.py) call some of the options
OTHER_TOOLKITS_NAMES = {"learning_rate": "lr", "lr0": "lr", "base_lr": "lr", "batch": "batch_size",
                        "imgsz": "image_size", "img_size": "image_size", "input_size": "image_size",
                        "max_iter": "max_steps", "iterations": "max_steps", "num_workers": "workers",
                        "weights": "pretrained", "opt": "optimizer", "model_ema_decay": "ema_decay",
                        "warmup": "warmup_epochs", "nc": "num_classes", "data": "train"}


def _with_suggestion(key: str, known: list[str]) -> str:
    """``key (did you mean NAME?)`` for a misspelt option or another toolkit's name for one; else ``key``."""
    import difflib

    guess = OTHER_TOOLKITS_NAMES.get(key) or next(iter(difflib.get_close_matches(key, known, n=1)), None)
    return f"{key} (did you mean {guess}?)" if guess else key
