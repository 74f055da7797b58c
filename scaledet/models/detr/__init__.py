"""DETR R50/R101 and their DC5 forms, behind scaledet's detector contract.

``scaledet.create_model("detr_r50", num_classes=None, pretrained=None, image_size=None, **overrides)``
builds :class:`~scaledet.models.detr.model.DETR`. ``image_size`` is DETR's eval resize
``(shorter side, longest side cap)``, default ``(800, 1333)``; an ``int`` sets the shorter side
(cap scaled by 1333/800). ``overrides`` are fields of :class:`DetrVariant`.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from scaledet.models.detr.convert import check_compatible, to_scaledet
from scaledet.models.detr.criterion import SetCriterion
from scaledet.models.detr.matcher import HungarianMatcher
from scaledet.models.detr.model import DETR
from scaledet.models.detr.preprocess import Preprocessor, typical_input_size
from scaledet.models.detr.backbone import ResNetBackbone
from scaledet.models.detr.transformer import Transformer
from scaledet.models.detr.recipes import RECIPES
from scaledet.models.detr.variants import COCO91_CLASS_NAMES, VARIANTS, DetrVariant

__all__ = ["VARIANTS", "RECIPES", "DetrVariant", "DETR", "build", "assemble", "profile_info"]

_LOG = logging.getLogger(__name__)
_CLASS_HEAD = ("class_head.",)
_SIZE_FIELDS = ("min_size", "max_size")


def assemble(variant: DetrVariant, class_names: list[str] | None = None, name: str = "detr_r50",
             overrides: dict[str, Any] | None = None, category_ids: list[int] | None = None) -> DETR:
    """Build a randomly initialised DETR from a variant row (``name``/``overrides`` go to its config)."""
    matcher = HungarianMatcher(variant.cost_class, variant.cost_bbox, variant.cost_giou)
    return DETR(
        backbone=ResNetBackbone(variant.backbone, variant.dilation, variant.backbone_norm,
                                variant.backbone_trainable_layers),
        transformer=Transformer(variant.hidden_dim, variant.num_heads, variant.ffn_dim, variant.enc_layers,
                                variant.dec_layers, variant.dropout),
        num_classes=variant.num_classes,
        num_queries=variant.num_queries,
        preprocessor=Preprocessor(variant.min_size, variant.max_size, variant.train_min_sizes),
        criterion=SetCriterion(variant.num_classes, matcher, variant.eos_coef,
                               variant.cost_class, variant.cost_bbox, variant.cost_giou),
        aux_loss=variant.aux_loss,
        class_names=class_names,
        name=name,
        overrides=overrides,
        category_ids=category_ids,
    )


def _typed_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """Check override names against :class:`DetrVariant` and turn JSON lists back into tuples."""
    fields = {field.name: field for field in dataclasses.fields(DetrVariant)}
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"unknown DETR option(s) {unknown}; valid: {sorted(fields)}")
    return {key: tuple(value) if isinstance(value, list) else value for key, value in overrides.items()}


def _size_fields(image_size: int | tuple[int, int] | list[int] | None) -> dict[str, int]:
    if image_size is None:
        return {}
    if isinstance(image_size, int):
        return {"min_size": image_size, "max_size": max(image_size, round(image_size * 1333 / 800))}
    if len(image_size) != 2 or image_size[0] > image_size[1]:
        raise ValueError(f"DETR image_size is (shorter side, longest-side cap), got {image_size}")
    return {"min_size": int(image_size[0]), "max_size": int(image_size[1])}


def _default_class_names(num_classes: int) -> list[str]:
    return list(COCO91_CLASS_NAMES) if num_classes == len(COCO91_CLASS_NAMES) else [str(i) for i in range(num_classes)]


def _read_pretrained(pretrained: str | Path, variant: DetrVariant) -> tuple[dict, dict]:
    """-> (state dict in our key names, config stored with it or {})."""
    from scaledet import hub, weights

    if pretrained == "coco":
        path = hub.download_checkpoint(variant.url, variant.sha256_prefix)
    else:
        path = Path(pretrained)
    config = weights.read_weights_config(path) if weights.is_safetensors(path) and path.exists() else None
    return to_scaledet(weights.load_checkpoint(path)), config or {}


def build(name: str, num_classes: int | None = None, pretrained: str | Path | None = None,
          image_size: int | tuple[int, int] | None = None, class_names: list[str] | None = None,
          category_ids: list[int] | None = None, **overrides: Any) -> nn.Module:
    """Build DETR variant ``name`` (see :data:`VARIANTS`), optionally with weights.

    With a checkpoint and ``num_classes=None`` the checkpoint's class count is used; a different
    ``num_classes`` re-initialises the class head and loads everything else strictly.
    ``class_names`` / ``category_ids`` default to the file's (same class count), else to COCO's
    names / :func:`~scaledet.models.detr.model.default_category_ids`.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown DETR model {name!r}; choose one of {sorted(VARIANTS)}")
    overrides = _typed_overrides(overrides)
    state, stored = _read_pretrained(pretrained, VARIANTS[name]) if pretrained is not None else ({}, {})
    merged = {**_typed_overrides(stored.get("overrides", {})), **overrides}
    explicit_sizes = {key: merged.pop(key) for key in _SIZE_FIELDS if key in merged}  # config keeps image_size
    sizes = {**_size_fields(image_size if image_size is not None else stored.get("image_size")), **explicit_sizes}
    variant = dataclasses.replace(VARIANTS[name], **merged, **sizes)
    checkpoint_classes = state["class_head.weight"].shape[0] - 1 if "class_head.weight" in state else None
    num_classes = num_classes or checkpoint_classes or variant.num_classes
    variant = dataclasses.replace(variant, num_classes=num_classes)
    if stored.get("num_classes") == num_classes:
        class_names = class_names or stored.get("class_names")
        category_ids = category_ids or stored.get("category_ids")  # absent in older files: the default
    if class_names is not None and len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names given for num_classes={num_classes}")
    model = assemble(variant, class_names or _default_class_names(num_classes), name, merged, category_ids)
    if state:
        _load(model, state, checkpoint_classes)
    return model


def _load(model: DETR, state: dict, checkpoint_classes: int | None) -> None:
    """Strict load; when the checkpoint's class count differs, the class head keeps its fresh init."""
    reset_classes = checkpoint_classes != model.num_classes
    ignore = _CLASS_HEAD if reset_classes else ()
    if reset_classes:
        _LOG.info("DETR: class head re-initialised for %d classes (checkpoint: %s)", model.num_classes,
                  checkpoint_classes)
    expected = model.state_dict()
    counters = {key: value for key, value in expected.items() if key.endswith("num_batches_tracked")}
    check_compatible(state, {key: value for key, value in expected.items() if key not in counters}, ignore=ignore)
    state = {**counters, **state}  # BatchNorm2d counters (backbone_norm="batch") are not stored
    model.load_state_dict({key: value for key, value in state.items() if not key.startswith(ignore)},
                          strict=not reset_classes)


_PAPER = {  # Carion et al. 2020, Table 1 (GFLOPs there are multiply-accumulates, averaged over COCO sizes)
    "detr_r50": {"params_m": 41, "gflops": 86, "coco_ap": 42.0, "v100_fps": 28},
    "detr_r50_dc5": {"params_m": 41, "gflops": 187, "coco_ap": 43.3, "v100_fps": 12},
    "detr_r101": {"params_m": 60, "gflops": 152, "coco_ap": 43.5, "v100_fps": 20},
    "detr_r101_dc5": {"params_m": 60, "gflops": 253, "coco_ap": 44.9, "v100_fps": 10},
}


def _profile_forward(model: DETR, batch: Tensor):
    """Run the network on an unpadded batch (mask all False)."""
    mask = torch.zeros(batch.shape[0], *batch.shape[2:], dtype=torch.bool, device=batch.device)
    return model.forward_features(batch, mask)


def profile_info(name: str) -> dict:
    """What ``scaledet profile`` needs: native input size (h, w) = 800x1066 (a 4:3 COCO image at
    DETR's eval resize, :func:`~scaledet.models.detr.preprocess.typical_input_size`), the paper's
    numbers and the network forward to count."""
    if name not in _PAPER:
        raise ValueError(f"unknown DETR model {name!r}; choose one of {sorted(_PAPER)}")
    variant = VARIANTS[name]
    return {"native_size": typical_input_size(variant.min_size, variant.max_size), "paper": _PAPER[name],
            "forward": _profile_forward}
