"""One explicit table from model name to the family factory that builds it.

Each family module exposes:

* ``VARIANTS: dict[str, <variant dataclass>]`` - the rows of that family's variant table;
* ``build(name, num_classes, pretrained, image_size, **overrides) -> nn.Module``.

Families are imported on first use, so importing :mod:`scaledet` does not import timm.
"""

from __future__ import annotations

import importlib
from pathlib import Path

from torch import nn

# family module (under scaledet.models) -> model name prefix
_FAMILIES: dict[str, str] = {
    "efficientdet": "efficientdet_",
    "detr": "detr_",
    "baselines": "retinanet_",
}


def _family_module(family: str):
    return importlib.import_module(f"scaledet.models.{family}")


def family_hook(name: str, hook: str):
    """The family function ``hook`` of model ``name`` (e.g. ``"fit_anchors_for"``), or ``None`` when
    that family has none: optional abilities are looked up here, never by name prefix elsewhere."""
    for family, prefix in _FAMILIES.items():
        if name.startswith(prefix):
            return getattr(_family_module(family), hook, None)
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")


def list_models() -> list[str]:
    """All model names accepted by :func:`create_model`, sorted."""
    names: list[str] = []
    for family in _FAMILIES:
        names.extend(_family_module(family).VARIANTS)
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
        num_classes: number of object classes (no background). Default: the variant's
            (90 for the COCO EfficientDet checkpoints, 91 for DETR). When it differs from
            the pretrained checkpoint, the class predictor is re-initialised.
        pretrained: ``None`` (random init), ``"coco"`` (download the published weights,
            hash-checked) or a path to a checkpoint: our safetensors file or a reference
            project's ``.pth`` (detected and converted automatically).
        image_size: override the variant's input size, ``int`` or ``(height, width)``.
        **overrides: further typed fields of the family's variant dataclass
            (e.g. ``fusion="softmax"``).

    Returns:
        an ``nn.Module`` following the contract documented in :mod:`scaledet`.
    """
    if num_classes is not None and num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for family, prefix in _FAMILIES.items():
        if name.startswith(prefix):
            module = _family_module(family)
            if name not in module.VARIANTS:
                break
            return module.build(
                name, num_classes=num_classes, pretrained=pretrained, image_size=image_size, **overrides
            )
    raise ValueError(f"unknown model {name!r}; choose one of: {', '.join(list_models())}")
