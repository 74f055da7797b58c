"""Training recipes: the default that adapts to the run (``"auto"``) and the papers' (``"paper"``).

A recipe row gives the values of :class:`~scaledet.engine.config.TrainConfig` fields a user did not
set. Each model family keeps its rows in its own package (``RECIPES``, read by
:func:`family_recipe`). The ``paper`` rows are the published recipes (EfficientDet: SGD, 1-epoch warm-up, EMA 0.9998,
scale jitter 0.1-2.0, for 300 epochs at batch 128 on accelerators; DETR: AdamW, lr drop at 2/3).

The ``auto`` rows are the default. They leave open every value that only makes sense relative
to the length of the run, and :func:`plan_values` fills them once the number of optimizer steps is
known (from ``--epochs`` / ``--max-steps``, or measured from the step time for ``--max-minutes``):

* warm-up: the first ``warmup_fraction`` (10%) of the run, so a run of any length leaves it;
* EMA decay: a horizon of a tenth of the run (``1 - 10 / steps``, within 0.9-0.9998);
* BatchNorm momentum: running statistics that follow the last ~200 steps (0.01-0.1);
* the final ``freeze_bn_fraction`` (20%) trains on BatchNorm's running statistics, which is what
  evaluation uses (without it short runs scored AP 0.16 or 0.61 by summation order alone);
* augmentation (:func:`augmentation_for`): little scale jitter and no colour jitter for short runs
  (0.9-1.1 up to 40 epochs, 0.75-1.33 up to 100), the paper's strength for long ones; never shrink
  small objects further;
* evaluation: at most ~4 intermediate evaluations per run.

The learning rate of a row is given at the row's ``reference_batch`` and scaled to the global
batch ``batch_size * grad_accum * processes`` (linearly for SGD, by the square root for AdamW)
when the user sets the batch or runs several processes (torchrun) but does not set the lr. Why each value: see
docs/training.md ("The default recipe").
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from scaledet.models.registry import family_hook

RECIPES = ("auto", "paper")

# Each family's rows live in its package (``scaledet/models/<family>/recipes.py``, exposed as the
# package's ``RECIPES = {"auto": {...}, "paper": {...}}``); a model whose family has no row for a
# recipe, or that the registry does not know, gets this generic row. ``reference_batch`` is not a
# config field: it is the batch at which ``lr`` is given.
GENERIC_RECIPE: dict[str, Any] = dict(
    batch_size=8, optimizer="adamw", lr=1e-3, reference_batch=8, weight_decay=1e-4, schedule="cosine",
    warmup_fraction=0.05, warmup_factor=1.0, min_lr_ratio=0.0, clip_grad=10.0, ema_decay=0.0, freeze_bn_fraction=0.0,
)

_RECIPE_FALLBACKS: dict[str, Any] = dict(momentum=0.9, min_lr_ratio=0.0, lr_drop_at=2 / 3, warmup_factor=1.0)


def family_recipe(model: str, recipe: str = "auto") -> dict[str, Any]:
    """The recipe row for model name ``model``, with ``reference_batch``: its family's
    ``RECIPES[recipe]`` (:func:`scaledet.models.registry.family_hook`), else :data:`GENERIC_RECIPE`
    (families without that row, and names the registry does not know, e.g. test fixtures)."""
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {RECIPES}, got {recipe!r}")
    try:
        rows = family_hook(model, "RECIPES") or {}
    except ValueError:  # not a registered model name
        rows = {}
    return {**_RECIPE_FALLBACKS, **rows.get(recipe, GENERIC_RECIPE)}


def from_scratch_changes(model: str) -> dict[str, Any]:
    """What the auto recipe changes to train ``model`` without pretrained weights: its family's
    ``from_scratch(name)`` hook (:func:`scaledet.models.registry.family_hook`), e.g. a DETR backbone
    published for fine-tuning (FrozenBatchNorm2d, whose fresh statistics are the identity: no
    normalisation at all in a random ResNet; a frozen random stem; a 10x lower backbone lr) trains
    like the rest of the network. ``{"model_overrides": {...}, "backbone_at_lr": bool}`` or ``{}``."""
    try:
        hook = family_hook(model, "from_scratch")
    except ValueError:  # not a registered model name
        return {}
    return hook(model) if hook is not None else {}


def scaled_lr(row: dict[str, Any], batch_size: int, grad_accum: int = 1, world_size: int = 1) -> float:
    """The row's lr scaled from its ``reference_batch`` to the global batch ``batch_size *
    grad_accum * world_size`` (``batch_size`` is per process): linearly for SGD (Goyal et al.
    2017), by the square root for AdamW (whose update size does not grow with the gradient's: the
    square-root rule keeps the noise scale, Malladi et al. 2022)."""
    ratio = batch_size * grad_accum * world_size / row["reference_batch"]
    return row["lr"] * (ratio if row["optimizer"] == "sgd" else math.sqrt(ratio))


@dataclass(frozen=True)
class PlanValues:
    """The values of the auto recipe that depend on the planned number of optimizer steps."""

    steps: int
    ema_decay: float
    bn_momentum: float


def plan_values(steps: int) -> PlanValues:
    """EMA decay and BatchNorm momentum for a run of ``steps`` optimizer steps.

    EMA: horizon ``1 / (1 - decay)`` = a tenth of the run, within [0.9, 0.9998] (the paper's value
    for its ~100k-step runs). BatchNorm: running statistics over the last ~200 steps, within
    [0.01, 0.1]; with PyTorch's convention (new = (1 - m) * old + m * batch) 0.01 is TF's 0.99.
    """
    steps = max(int(steps), 1)
    ema = min(max(1.0 - 10.0 / steps, 0.9), 0.9998)
    bn = min(max(200.0 / steps, 0.01), 0.1)
    return PlanValues(steps=steps, ema_decay=ema, bn_momentum=bn)


def augmentation_for(planned_epochs: float, median_box_fraction: float | None = None) -> dict[str, Any]:
    """Training augmentation (``train_transforms`` keyword arguments) for a run of ``planned_epochs``.

    A short run cannot afford to learn invariances it will rarely be tested on. Up to 40 planned
    epochs the scale jitter is 0.9-1.1, up to 100 epochs 0.75-1.33, both without colour jitter; up to
    300 epochs 0.5-1.5 with colour jitter, beyond that the paper's 0.1-2.0. Measured on 60 images
    of the ``scenes`` tune set (D0, batch 4; docs/training.md): at 33 epochs 0.9-1.1 scored AP 0.304
    (2 seeds) against 0.254 for 0.75-1.33 (and 0.75-1.33 had beaten 0.5-1.5 with colour jitter); at 53 epochs
    0.75-1.33 won (0.441 against 0.412, 1 seed), so the first bound lies between the two (40 is
    not itself measured; neither are 100 and 300).
    ``median_box_fraction`` (median box side / image side): when objects are small (< 8% of the
    side), images are not shrunk below 0.9 of the input size, which would erase them.
    """
    if planned_epochs <= 40:
        low, high, photometric = 0.9, 1.1, False
    elif planned_epochs <= 100:
        low, high, photometric = 0.75, 1.33, False
    elif planned_epochs <= 300:
        low, high, photometric = 0.5, 1.5, True
    else:
        low, high, photometric = 0.1, 2.0, True
    if median_box_fraction is not None and median_box_fraction < 0.08:
        low = max(low, 0.9)
    return {"scale_range": (low, high), "photometric": photometric}


def eval_interval(planned_epochs: float, evaluations: int = 4) -> int:
    """Epochs between intermediate evaluations so that a run makes about ``evaluations`` of them."""
    return max(1, math.ceil(planned_epochs / evaluations))


# ---- what the recipe reads from the data -------------------------------------------------------


def box_statistics(records: list) -> dict[str, float | int]:
    """Median image size and median box side (absolute and relative to the longer image side) over
    the non-crowd boxes of ``records`` (:class:`scaledet.data.ImageRecord` or alike).

    ``fit_height`` x ``fit_width``: the box that holds nearly all (95%) of the images once each is
    scaled to the median longer side, as a letterboxing resize does: the images' own size when they
    all share one; 3:4 for landscape 4:3 photos of several sizes (e.g. 3024x4032, which
    :func:`fitted_input_size` makes 384x512 for D0); square for mixed orientations."""
    heights = np.array([r.height for r in records], dtype=np.float64)
    widths = np.array([r.width for r in records], dtype=np.float64)
    sides, fractions = [], []
    for record in records:
        boxes = np.asarray(record.boxes, dtype=np.float64).reshape(-1, 4)[~np.asarray(record.iscrowd, bool)]
        if len(boxes):
            side = np.sqrt(np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0))
            sides.append(side)
            fractions.append(side / max(record.height, record.width))
    long_side = float(np.median(np.maximum(heights, widths))) if len(heights) else 0.0
    to_long_side = long_side / np.maximum(np.maximum(heights, widths), 1.0)
    sides = np.concatenate(sides) if sides else np.zeros(0)
    fractions = np.concatenate(fractions) if fractions else np.zeros(0)
    return {
        "images": len(records), "boxes": int(len(sides)),
        "median_height": float(np.median(heights)) if len(heights) else 0.0,
        "median_width": float(np.median(widths)) if len(widths) else 0.0,
        "median_long_side": long_side,
        "fit_height": float(np.percentile(heights * to_long_side, 95)) if len(heights) else 0.0,
        "fit_width": float(np.percentile(widths * to_long_side, 95)) if len(heights) else 0.0,
        "same_size": bool(len(records) and (heights == heights[0]).all() and (widths == widths[0]).all()),
        "median_box_side": float(np.median(sides)) if len(sides) else 0.0,
        "median_box_fraction": float(np.median(fractions)) if len(fractions) else 0.0,
    }


def fitted_input_size(stats: dict[str, Any], native: tuple[int, int], multiple: int = 128) -> tuple[int, int]:
    """An input size for data of ``stats`` (see :func:`box_statistics`): the data's own size rounded
    up to ``multiple`` (the network's largest stride), never above the model's ``native`` size.

    The data's size is the box holding nearly all images at the median longer side (``fit_height``
    x ``fit_width``): images that all share one size keep it (e.g. 224x384 -> (256, 384)), photos
    of one orientation and several sizes keep their shape, mixed orientations get a square.
    Upsampling small images costs CPU time quadratically and adds no detail, so the data's size
    wins when it is the smaller one. Data larger than ``native`` is scaled to fit it first, then
    rounded up: 640x480 -> (384, 512), as 800x600 (rounding before scaling gave (512, 512), a third
    of it padding around the scaled 384x512 images).
    """
    def up(value: float) -> int:  # (the small allowance: 384.0000001 from scaling is 384, not 512)
        return max(multiple, int(math.ceil(value / multiple - 1e-6)) * multiple)

    height, width = stats["fit_height"], stats["fit_width"]
    scale = min(1.0, native[0] / max(height, 1.0), native[1] / max(width, 1.0))
    return min(native[0], up(height * scale)), min(native[1], up(width * scale))


# ---- threads -----------------------------------------------------------------------------------


def configure_threads(threads: int) -> int:
    """Set torch's CPU threads: ``threads`` if > 0, else ``OMP_NUM_THREADS`` when the environment
    sets it, else the idle cores (:func:`idle_threads`). Returns the count."""
    if threads > 0:
        cores = os.cpu_count() or threads
        if threads > cores:
            warnings.warn(f"--threads {threads} is more than this machine's {cores} cores: the extra threads only "
                          "wait on each other (a step can take many times longer); 0 picks the idle cores",
                          stacklevel=2)
        torch.set_num_threads(threads)
    elif not os.environ.get("OMP_NUM_THREADS"):
        torch.set_num_threads(idle_threads())
    return torch.get_num_threads()


def idle_threads(sample_seconds: float = 0.5) -> int:
    """Every core the machine is not already busy with (at least 1).

    Measured from the CPU time the kernel counts over ``sample_seconds`` (``/proc/stat``), not the
    load average, which lags a minute behind (a run started right after another would see the
    finished one). Falls back to the load average where ``/proc/stat`` is missing. On a shared,
    oversubscribed machine one thread is several times faster than two: OpenMP threads that wait
    for a descheduled sibling at every barrier waste their time slices.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    busy = _busy_cores(sample_seconds, os.cpu_count() or cores)
    if busy is None:
        busy = os.getloadavg()[0]
    return max(1, min(cores, int(cores - busy + 0.5)))


def _busy_cores(seconds: float, total_cores: int) -> float | None:
    """Cores' worth of CPU time spent busy machine-wide during ``seconds``, or ``None``."""
    def snapshot() -> tuple[int, int] | None:
        try:
            with open("/proc/stat") as stat:
                fields = [int(v) for v in stat.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields), idle

    first = snapshot()
    time.sleep(seconds)
    second = snapshot()
    if first is None or second is None or second[0] == first[0]:
        return None
    total, idle = second[0] - first[0], second[1] - first[1]
    return total_cores * (1.0 - idle / total)
