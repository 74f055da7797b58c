"""EfficientDet D0-D7x and Lite0-4 (Tan, Pang, Le, CVPR 2020), equal to the reference port.

``build`` is called by :func:`scaledet.create_model` (weights files: :data:`CHECKPOINT`);
``profile_info`` by ``scaledet profile``.
"""

from __future__ import annotations

import dataclasses

from .anchor_fit import boxes_in_input_pixels, fit_anchors
from .anchors import num_anchors_for
from .coco import COCO90_CLASS_NAMES
from .config import VARIANTS, EfficientDetVariant, as_size, compound_scaling, with_overrides
from .loading import CHECKPOINT
from .model import EfficientDet, EfficientDetNet, variant_overrides
from .recipes import RECIPES
from . import topologies  # noqa: F401  (registers fpn, panet, nasfpn, fcfpn in TOPOLOGIES)

__all__ = ["CHECKPOINT", "VARIANTS", "EfficientDet", "EfficientDetNet", "EfficientDetVariant", "build",
           "compound_scaling", "profile_info"]


def build(name: str, num_classes: int | None = None, image_size: int | tuple[int, int] | None = None,
          class_names: list[str] | None = None, category_ids: list[int] | None = None,
          **overrides) -> EfficientDet:
    """Build EfficientDet ``name`` (a key of :data:`VARIANTS`), randomly initialised (weights
    files: :data:`CHECKPOINT`, loaded by ``create_model(name, pretrained=...)``).

    Args:
        num_classes: default the variant's, 90 (COCO).
        image_size: network input (h, w) or int; default the variant's.
        class_names: K names; default COCO's for 90 classes, else ``"0"``, ``"1"``, ...
        category_ids: the dataset's category id of each label, default 1..K (COCO's ids for the
            90-class COCO layout).
        **overrides: fields of :class:`EfficientDetVariant` (e.g. ``fusion="softmax"``).
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientDet {name!r}; choose one of {sorted(VARIANTS)}")
    base = VARIANTS[name]
    fields = dict(overrides)
    if num_classes is not None:
        fields["num_classes"] = int(num_classes)
    if image_size is not None:
        fields["image_size"] = as_size(image_size)
    variant = with_overrides(base, **fields)
    if class_names is None and variant.num_classes == 90:
        class_names = COCO90_CLASS_NAMES
    return EfficientDet(variant, name, class_names, overrides=variant_overrides(base, variant),
                        category_ids=category_ids)


def profile_info(name: str) -> dict:
    """For ``scaledet profile``: native input size, anchor count and the paper's numbers."""
    variant = VARIANTS[name]
    paper = {k: v for k, v in dataclasses.asdict(variant.paper).items() if v is not None}
    anchors = num_anchors_for(variant.image_size, variant.min_level, variant.max_level, variant.num_anchors)
    return {"native_size": variant.image_size, "anchors": anchors, "paper": paper}


def fit_anchors_for(name: str, records: list, image_size: tuple[int, int], overrides: dict | None = None):
    """For ``scaledet doctor`` and ``--anchors auto``: ``(published, best)``
    :class:`~scaledet.models.efficientdet.anchor_fit.AnchorFit` of the training ``records`` (boxes
    in their image pixels) for model ``name`` at input ``image_size``; ``best.overrides()`` builds it."""
    variant = with_overrides(VARIANTS[name], **(overrides or {}))
    return fit_anchors(boxes_in_input_pixels(records, tuple(image_size)), variant, tuple(image_size))
