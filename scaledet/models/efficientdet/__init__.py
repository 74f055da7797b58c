"""EfficientDet D0-D7x and Lite0-4 (Tan, Pang, Le, CVPR 2020), equal to the reference port.

``build`` is called by :func:`scaledet.create_model`; ``profile_info`` by ``scaledet profile``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from .anchors import num_anchors_for
from .coco import COCO90_CLASS_NAMES
from .config import VARIANTS, EfficientDetVariant, as_size, compound_scaling, with_overrides
from .loading import coco_checkpoint, load_into, read_state_dict
from .model import EfficientDet, EfficientDetNet, variant_overrides
from .recipes import RECIPES
from . import topologies  # noqa: F401  (registers fpn, panet, nasfpn, fcfpn in TOPOLOGIES)

__all__ = ["VARIANTS", "EfficientDet", "EfficientDetNet", "EfficientDetVariant", "build", "compound_scaling",
           "profile_info"]


def _pretrained_file(pretrained: str | Path, variant: EfficientDetVariant) -> Path:
    return coco_checkpoint(variant) if str(pretrained) == "coco" else Path(pretrained)


def build(name: str, num_classes: int | None = None, pretrained: str | Path | None = None,
          image_size: int | tuple[int, int] | None = None, **overrides) -> EfficientDet:
    """Build EfficientDet ``name`` (a key of :data:`VARIANTS`).

    Args:
        num_classes: default 90 (COCO), or the checkpoint's when ``pretrained`` is a file.
        pretrained: ``None``, ``"coco"`` or a checkpoint path (ours or effdet's ``.pth``).
        image_size: network input (h, w) or int; default the variant's (or the file's config).
        **overrides: fields of :class:`EfficientDetVariant` (e.g. ``fusion="softmax"``),
            ``class_names`` and ``category_ids`` (the dataset's category id of each label,
            default 1..K: COCO's ids for the 90-class COCO layout).
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown EfficientDet {name!r}; choose one of {sorted(VARIANTS)}")
    base = VARIANTS[name]
    class_names = overrides.pop("class_names", None)
    category_ids = overrides.pop("category_ids", None)
    state_dict, source = None, None
    if pretrained is not None:
        path = _pretrained_file(pretrained, base)
        saved = _our_config(path)
        if saved:  # our own file: its config fills what the caller left open
            image_size = image_size or saved.get("image_size")
            overrides = {**saved.get("overrides", {}), **overrides}
            if num_classes is None or num_classes == saved.get("num_classes"):
                num_classes, class_names = saved.get("num_classes"), class_names or saved.get("class_names")
                category_ids = category_ids or saved.get("category_ids")  # absent in older files: 1..K
        variant = with_overrides(base, **overrides)
        state_dict, source = read_state_dict(path, variant), str(path)
        if num_classes is None:
            num_classes = state_dict["network.class_net.predict.pointwise.bias"].shape[0] // variant.num_anchors
    fields = dict(overrides)
    if num_classes is not None:
        fields["num_classes"] = int(num_classes)
    if image_size is not None:
        fields["image_size"] = as_size(image_size)
    variant = with_overrides(base, **fields)
    if class_names is None and variant.num_classes == 90:
        class_names = COCO90_CLASS_NAMES
    model = EfficientDet(variant, name, class_names, overrides=variant_overrides(base, variant),
                         category_ids=category_ids)
    if state_dict is not None:
        load_into(model, state_dict, source)
    return model


def _our_config(path: Path) -> dict | None:
    from scaledet.weights import is_safetensors, read_weights_config

    return read_weights_config(path) if is_safetensors(path) and path.exists() else None


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
    from .anchor_fit import boxes_in_input_pixels, fit_anchors

    variant = with_overrides(VARIANTS[name], **(overrides or {}))
    return fit_anchors(boxes_in_input_pixels(records, tuple(image_size)), variant, tuple(image_size))
