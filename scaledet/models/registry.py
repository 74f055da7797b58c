"""One explicit table from model name to the family that builds it.

A family is one package under ``scaledet/models/`` plus one row of :data:`FAMILIES`. The package
exposes:

* ``VARIANTS: dict[str, <variant dataclass>]`` - the rows of that family's variant table;
* ``build(name, num_classes=None, image_size=None, **overrides) -> Detector``
  (:class:`scaledet.models.base.Detector`), randomly initialised; ``overrides`` are variant fields
  plus ``class_names`` and ``category_ids``;
* ``CHECKPOINT`` - a :class:`~scaledet.models.checkpoints.CheckpointSpec`: its class predictor,
  its converter from other projects' files and its published weights (every weights file is
  loaded by :func:`~scaledet.models.checkpoints.build_pretrained`);
* ``RECIPES: {"auto": {...}, "paper": {...}}`` - the training recipe rows
  (:mod:`scaledet.engine.recipe` documents the fields);
* ``profile_info(name) -> dict`` for ``scaledet profile``;
* optional abilities looked up with :func:`family_hook` (e.g. ``fit_anchors_for``).

Families are imported on first use, so importing :mod:`scaledet` does not import timm.
"""

from __future__ import annotations

import importlib
import numbers
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from scaledet.models.checkpoints import build_pretrained


@dataclass(frozen=True)
class Family:
    """A registry row: the package under ``scaledet.models`` and the prefix of its model names."""

    package: str
    prefix: str


FAMILIES: tuple[Family, ...] = (
    Family("efficientdet", "efficientdet_"),
    Family("detr", "detr_"),
    Family("baselines", "retinanet_"),
    Family("deformable_detr", "deformable_detr_"),
    Family("rtdetr", "rtdetr_"),
)


def _import(family: Family) -> ModuleType:
    return importlib.import_module(f"scaledet.models.{family.package}")


def family_of(name: str) -> ModuleType:
    """The family package that builds model ``name``; ValueError naming the choices if none does."""
    for family in FAMILIES:
        if name.startswith(family.prefix):
            module = _import(family)
            if name in module.VARIANTS:
                return module
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")


def family_hook(name: str, hook: str) -> Any:
    """The family attribute ``hook`` of model ``name`` (e.g. ``"fit_anchors_for"``, ``"RECIPES"``), or
    ``None`` when that family has none: abilities are looked up here, never by name prefix elsewhere."""
    return getattr(family_of(name), hook, None)


def list_models() -> list[str]:
    """All model names accepted by :func:`create_model`, sorted."""
    names: list[str] = []
    for family in FAMILIES:
        names.extend(_import(family).VARIANTS)
    return sorted(names)


def create_model(
    name: str,
    num_classes: int | None = None,
    pretrained: str | Path | None = None,
    image_size: int | tuple[int, int] | None = None,
    **overrides,
) -> nn.Module:
    """Build a detector by name.

    Args:
        name: one of :func:`list_models` (e.g. ``"efficientdet_d0"``, ``"detr_r50"``).
        num_classes: number of object classes (no background). Default: the checkpoint's, else
            the variant's (90 for the COCO EfficientDet checkpoints, 91 for DETR). When it
            differs from the pretrained checkpoint, the class predictor is re-initialised.
        pretrained: ``None`` (random init), ``"coco"`` (download the published weights,
            hash-checked) or a path to a checkpoint: our safetensors file or a reference
            project's ``.pth`` (detected and converted automatically); loaded strictly by
            :func:`~scaledet.models.checkpoints.build_pretrained` (explicit arguments > the
            file's config > the variant's defaults).
        image_size: override the variant's input size, ``int`` or ``(height, width)``.
        **overrides: further typed fields of the family's variant dataclass
            (e.g. ``fusion="softmax"``), ``class_names`` and ``category_ids``.

    Returns:
        an ``nn.Module`` following the contract documented in :mod:`scaledet`.
    """
    num_classes, image_size = _checked_arguments(num_classes, pretrained, image_size, overrides)
    family = family_of(name)
    if pretrained is None:
        return family.build(name, num_classes=num_classes, image_size=image_size, **overrides)
    return build_pretrained(family, name, pretrained, num_classes=num_classes, image_size=image_size, **overrides)


def _checked_arguments(num_classes: Any, pretrained: Any, image_size: Any,
                       overrides: dict[str, Any]) -> tuple[int | None, int | tuple[int, int] | None]:
    """``(num_classes, image_size)`` as Python ints (numpy's integers are taken); ValueError naming an argument
    of :func:`create_model` of the wrong kind (``num_classes=2.5`` was truncated to 2, ``class_names="cat"``
    became three classes c, a, t, ``pretrained=True`` a TypeError)."""
    def whole(value: Any) -> bool:  # numpy's integers too
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)

    if num_classes is not None and (not whole(num_classes) or num_classes < 1):
        raise ValueError(f"num_classes must be an int >= 1, got {num_classes!r}")
    if pretrained is not None and not isinstance(pretrained, (str, Path)):
        raise ValueError(f"pretrained must be None, 'coco' or a weights file path, got {pretrained!r}")
    if image_size is not None:
        pair = isinstance(image_size, (tuple, list)) and len(image_size) == 2
        sizes = [image_size] if whole(image_size) else list(image_size) if pair else []
        if not sizes or not all(whole(v) and v >= 1 for v in sizes):
            raise ValueError(f"image_size must be an int or (height, width) of ints >= 1, got {image_size!r}")
        image_size = int(image_size) if whole(image_size) else tuple(int(v) for v in sizes)
    for key in ("class_names", "category_ids"):
        if isinstance(overrides.get(key), (str, bytes)):
            raise ValueError(f"{key} must be a list (one entry per class), got the string {overrides[key]!r}")
    return (None if num_classes is None else int(num_classes)), image_size


def create_from_config(config: dict[str, Any], pretrained: str | Path | None = None) -> nn.Module:
    """Rebuild a model from its ``config`` (:attr:`scaledet.models.base.Detector.config`, the JSON
    stored with our weights and in exported files)."""
    extras = {key: config[key] for key in ("class_names", "category_ids") if config.get(key) is not None}
    image_size = config.get("image_size")
    return create_model(config["model"], num_classes=config.get("num_classes"), pretrained=pretrained,
                        image_size=tuple(image_size) if image_size is not None else None,
                        **extras, **config.get("overrides", {}))


def build_for_processing(config: dict[str, Any]) -> nn.Module:
    """A model rebuilt from ``config`` on the ``meta`` device: no weights, no memory, but
    ``preprocess`` / ``export_feeds`` / ``detections_from_export`` work (the contract has them read
    configuration only). Used to run exported files."""
    with torch.device("meta"):
        return create_from_config(config)
