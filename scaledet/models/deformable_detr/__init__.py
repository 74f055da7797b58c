"""Deformable DETR R50 (plain, with iterative box refinement, two-stage) behind scaledet's detector contract.

``scaledet.create_model("deformable_detr_r50", num_classes=None, pretrained=None, image_size=None, **overrides)``
builds :class:`~scaledet.models.deformable_detr.model.DeformableDETR` (weights files:
:data:`CHECKPOINT`: ours, or transformers' ``DeformableDetrForObjectDetection`` state dicts).
``image_size`` is the eval resize ``(shorter side, longest-side cap)`` as DETR's, default
``(800, 1333)``; ``overrides`` are fields of :class:`DeformableDetrVariant`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from scaledet.models.checkpoints import CheckpointSpec
from scaledet.models.deformable_detr.backbone import MultiScaleResNet
from scaledet.models.deformable_detr.convert import to_scaledet
from scaledet.models.deformable_detr.criterion import FocalHungarianMatcher, FocalSetCriterion
from scaledet.models.deformable_detr.model import DeformableDETR
from scaledet.models.deformable_detr.recipes import RECIPES
from scaledet.models.detr.recipes import backbone_from_scratch as from_scratch  # DETR's backbone fields
from scaledet.models.deformable_detr.transformer import DeformableTransformer
from scaledet.models.deformable_detr.variants import VARIANTS, DeformableDetrVariant
from scaledet.models.detr import default_class_names, size_fields
from scaledet.models.detr.preprocess import Preprocessor, scaled_train_sizes, typical_input_size
from scaledet.models.inputs import typed_options

__all__ = ["VARIANTS", "RECIPES", "from_scratch", "DeformableDetrVariant", "DeformableDETR", "build", "assemble", "profile_info",
           "CHECKPOINT"]

_SIZE_FIELDS = ("min_size", "max_size")


def _check(variant: DeformableDetrVariant) -> None:
    if variant.two_stage and not variant.box_refine:
        raise ValueError("Deformable DETR two_stage=True needs box_refine=True (as the paper's two-stage model)")
    if variant.hidden_dim % 32:
        raise ValueError("Deformable DETR hidden_dim must be a multiple of 32 (GroupNorm(32)), "
                         f"got {variant.hidden_dim}")
    if variant.num_feature_levels < 3:
        raise ValueError(f"Deformable DETR num_feature_levels must be >= 3 (C3-C5), got {variant.num_feature_levels}")


def assemble(variant: DeformableDetrVariant, class_names: list[str] | None = None, name: str = "deformable_detr_r50",
             overrides: dict[str, Any] | None = None, category_ids: list[int] | None = None) -> DeformableDETR:
    """Build a randomly initialised Deformable DETR from a variant row (``name``/``overrides`` go to its config)."""
    _check(variant)
    matcher = FocalHungarianMatcher(variant.cost_class, variant.cost_bbox, variant.cost_giou,
                                    variant.focal_alpha, variant.focal_gamma)
    return DeformableDETR(
        backbone=MultiScaleResNet(variant.backbone, variant.backbone_norm, variant.backbone_trainable_layers),
        transformer=DeformableTransformer(variant.hidden_dim, variant.num_heads, variant.ffn_dim, variant.enc_layers,
                                          variant.dec_layers, variant.dropout, variant.num_feature_levels,
                                          variant.enc_points, variant.dec_points, variant.two_stage,
                                          variant.num_queries),
        num_classes=variant.num_classes,
        num_queries=variant.num_queries,
        box_refine=variant.box_refine,
        preprocessor=Preprocessor(variant.min_size, variant.max_size, variant.train_min_sizes),
        criterion=FocalSetCriterion(variant.num_classes, matcher, variant.cost_class, variant.cost_bbox,
                                    variant.cost_giou),
        top_k=variant.top_k,
        aux_loss=variant.aux_loss,
        class_names=class_names,
        name=name,
        overrides=overrides,
        category_ids=category_ids,
        num_levels=variant.num_feature_levels,
    )


def build(name: str, num_classes: int | None = None, image_size: int | tuple[int, int] | None = None,
          class_names: list[str] | None = None, category_ids: list[int] | None = None,
          **overrides: Any) -> DeformableDETR:
    """Build Deformable DETR variant ``name`` (see :data:`VARIANTS`), randomly initialised.

    ``num_classes`` defaults to 91 (COCO ids 0..90, as transformers' COCO checkpoints);
    ``class_names`` to COCO's names for 91 classes, else ``"0"``, ``"1"``, ...; ``image_size`` and
    the multi-scale training sizes follow DETR's rules (:func:`scaledet.models.detr.build`).
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown Deformable DETR model {name!r}; choose one of {sorted(VARIANTS)}")
    overrides = typed_options(overrides, DeformableDetrVariant, "Deformable DETR")
    explicit_sizes = {key: overrides.pop(key) for key in _SIZE_FIELDS if key in overrides}
    row = VARIANTS[name]
    variant = dataclasses.replace(row, **overrides, **{**size_fields(image_size), **explicit_sizes})
    if "train_min_sizes" not in overrides:  # derived from the eval resize, not stored
        variant = dataclasses.replace(variant, train_min_sizes=scaled_train_sizes(
            row.train_min_sizes, row.min_size, variant.min_size))
    variant = dataclasses.replace(variant, num_classes=num_classes or variant.num_classes)
    if class_names is not None and len(class_names) != variant.num_classes:
        raise ValueError(f"{len(class_names)} class names given for num_classes={variant.num_classes}")
    return assemble(variant, class_names or default_class_names(variant.num_classes), name, overrides, category_ids)


#: weights files: ours and transformers' (:mod:`.convert`); K sigmoid classes, no background row.
#: No published-weights download: the official checkpoints are on Google Drive, transformers' on
#: the Hugging Face hub (SenseTime/deformable-detr*): download one and pass the file.
CHECKPOINT = CheckpointSpec(class_head=("class_heads.",), class_bias="class_heads.0.bias", background=0,
                            convert=to_scaledet,
                            coco_hint="the Hugging Face hub's SenseTime/deformable-detr* files and the official "
                                      "checkpoints load: download one elsewhere and give its path")


_PAPER = {  # Zhu et al. 2021, Table 1 (50 epochs; FLOPs as the DETR paper: averaged over COCO val sizes)
    "deformable_detr_r50": {"params_m": 40, "gflops": 173, "coco_ap": 43.8},
    "deformable_detr_r50_box_refine": {"params_m": 40, "gflops": 173, "coco_ap": 45.4},
    "deformable_detr_r50_two_stage": {"params_m": 40, "gflops": 173, "coco_ap": 46.2},
}


def _profile_forward(model: DeformableDETR, batch: Tensor):
    """Run the network on an unpadded batch (mask all False)."""
    mask = torch.zeros(batch.shape[0], *batch.shape[2:], dtype=torch.bool, device=batch.device)
    return model.forward_features(batch, mask)


def profile_info(name: str) -> dict:
    """What ``scaledet profile`` needs: native input size 800x1066 (a 4:3 COCO image at the eval
    resize, as DETR's), the paper's numbers and the network forward to count."""
    if name not in _PAPER:
        raise ValueError(f"unknown Deformable DETR model {name!r}; choose one of {sorted(_PAPER)}")
    variant = VARIANTS[name]
    return {"native_size": typical_input_size(variant.min_size, variant.max_size), "paper": _PAPER[name],
            "forward": _profile_forward}
