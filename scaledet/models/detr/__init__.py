"""DETR R50/R101 and their DC5 forms, behind scaledet's detector contract.

``scaledet.create_model("detr_r50", num_classes=None, pretrained=None, image_size=None, **overrides)``
builds :class:`~scaledet.models.detr.model.DETR` (weights files: :data:`CHECKPOINT`). ``image_size`` is DETR's eval resize
``(shorter side, longest side cap)``, default ``(800, 1333)``; an ``int`` sets the shorter side
(cap scaled by 1333/800). The multi-scale training sizes follow the shorter side (480..800 at
800, 77..128 at 128) unless ``train_min_sizes`` is given. ``overrides`` are fields of :class:`DetrVariant`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from scaledet import hub
from scaledet.models.checkpoints import CheckpointSpec
from scaledet.models.detr.accelerators import CLASS_DEPENDENT_PREFIXES, DenoisingSettings, align_training_only
from scaledet.models.detr.convert import to_scaledet
from scaledet.models.detr.criterion import SetCriterion
from scaledet.models.detr.matcher import HungarianMatcher
from scaledet.models.detr.model import DETR
from scaledet.models.detr.preprocess import Preprocessor, scaled_train_sizes, typical_input_size
from scaledet.models.detr.backbone import ResNetBackbone
from scaledet.models.detr.transformer import Transformer
from scaledet.models.detr.recipes import RECIPES, from_scratch
from scaledet.models.detr.variants import COCO91_CLASS_NAMES, VARIANTS, DetrVariant
from scaledet.models.inputs import typed_options

__all__ = ["VARIANTS", "RECIPES", "from_scratch", "DetrVariant", "DETR", "build", "assemble", "profile_info", "CHECKPOINT"]

_SIZE_FIELDS = ("min_size", "max_size")


def assemble(variant: DetrVariant, class_names: list[str] | None = None, name: str = "detr_r50",
             overrides: dict[str, Any] | None = None, category_ids: list[int] | None = None) -> DETR:
    """Build a randomly initialised DETR from a variant row (``name``/``overrides`` go to its config)."""
    matcher = HungarianMatcher(variant.cost_class, variant.cost_bbox, variant.cost_giou)
    if variant.denoising_groups < 0:
        raise ValueError(f"denoising_groups must be >= 0 (0 = off), got {variant.denoising_groups}")
    denoising = DenoisingSettings(variant.denoising_groups, variant.denoising_label_noise, variant.denoising_box_noise,
                                  variant.denoising_contrastive) if variant.denoising_groups else None
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
        query_groups=variant.query_groups,
        denoising=denoising,
    )


def size_fields(image_size: int | tuple[int, int] | list[int] | None) -> dict[str, int]:
    """The variant fields an ``image_size`` argument sets (shorter side, longer-side cap), shared by
    the DETR-family constructors; ``{}`` for ``None``."""
    if image_size is None:
        return {}
    if isinstance(image_size, int):
        return {"min_size": image_size, "max_size": max(image_size, round(image_size * 1333 / 800))}
    if len(image_size) != 2 or image_size[0] > image_size[1]:
        raise ValueError(f"DETR image_size is (shorter side, longest-side cap), got {image_size}")
    return {"min_size": int(image_size[0]), "max_size": int(image_size[1])}


def default_class_names(num_classes: int) -> list[str]:
    """COCO's 91 names for a 91-class head, else ``"0" .. "K-1"``."""
    return list(COCO91_CLASS_NAMES) if num_classes == len(COCO91_CLASS_NAMES) else [str(i) for i in range(num_classes)]


def build(name: str, num_classes: int | None = None, image_size: int | tuple[int, int] | None = None,
          class_names: list[str] | None = None, category_ids: list[int] | None = None, **overrides: Any) -> DETR:
    """Build DETR variant ``name`` (see :data:`VARIANTS`), randomly initialised (weights files:
    :data:`CHECKPOINT`, loaded by ``create_model(name, pretrained=...)``).

    ``num_classes`` defaults to the variant's (91, COCO's ids 1..90 plus an unused 0);
    ``class_names`` to COCO's names for 91 classes, else ``"0"``, ``"1"``, ...; ``category_ids``
    to :func:`~scaledet.models.detr.model.default_category_ids`. ``min_size`` / ``max_size``
    overrides win over ``image_size``.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown DETR model {name!r}; choose one of {sorted(VARIANTS)}")
    overrides = typed_options(overrides, DetrVariant, "DETR")
    explicit_sizes = {key: overrides.pop(key) for key in _SIZE_FIELDS if key in overrides}  # config keeps image_size
    row = VARIANTS[name]
    variant = dataclasses.replace(row, **overrides, **{**size_fields(image_size), **explicit_sizes})
    if "train_min_sizes" not in overrides:  # the multi-scale sizes follow the eval resize (derived, not stored)
        variant = dataclasses.replace(variant, train_min_sizes=scaled_train_sizes(
            row.train_min_sizes, row.min_size, variant.min_size))
    variant = dataclasses.replace(variant, num_classes=num_classes or variant.num_classes)
    if class_names is not None and len(class_names) != variant.num_classes:
        raise ValueError(f"{len(class_names)} class names given for num_classes={variant.num_classes}")
    return assemble(variant, class_names or default_class_names(variant.num_classes), name, overrides, category_ids)


def _coco_file(name: str) -> Path:
    """Local path of the published COCO weights of ``name`` (official ``.pth``, hash-checked)."""
    return hub.download_checkpoint(VARIANTS[name].url, VARIANTS[name].sha256_prefix)


def _convert_for(state_dict: dict[str, Tensor], model: DETR) -> dict[str, Tensor]:
    """Any supported DETR state dict -> our key names, its training-only entries fitted to ``model``."""
    converted = to_scaledet(state_dict)
    return align_training_only(converted, model, CHECKPOINT.num_classes(converted, model))


#: DETR weights files: ours, the official repository's and Hugging Face's (:mod:`.convert`); the
#: class head has K + 1 rows (the last is "no object"). The training accelerators' parameters are
#: fitted to the model (:func:`~scaledet.models.detr.accelerators.align_training_only`: fresh when the
#: file lacks them, dropped when the model has none), so published weights fine-tune with them on;
#: their label embedding is per class, re-initialised with the class head on a new class count
CHECKPOINT = CheckpointSpec(class_head=("class_head.", *CLASS_DEPENDENT_PREFIXES), class_bias="class_head.bias",
                            background=1, convert=_convert_for, coco=_coco_file)


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
