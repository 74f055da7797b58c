"""RT-DETR R18 / R34 / R50 / R101 (ResNet-vd), behind scaledet's detector contract.

``scaledet.create_model("rtdetr_r50vd", num_classes=None, pretrained=None, image_size=None, **overrides)``
builds :class:`~scaledet.models.rtdetr.model.RTDETR` (weights files: :data:`CHECKPOINT`, Hugging Face's
``RTDetrForObjectDetection`` files converted by :mod:`.convert`). ``image_size`` is the fixed input
(h, w), default 640x640 (an ``int`` for a square); ``overrides`` are fields of :class:`RtDetrVariant`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

from scaledet.models.checkpoints import CheckpointSpec
from scaledet.models.coco_names import COCO_NAMES_BY_ID
from scaledet.models.rtdetr.backbone import PResNet
from scaledet.models.rtdetr.convert import to_scaledet
from scaledet.models.deformable_detr.criterion import FocalHungarianMatcher
from scaledet.models.rtdetr.criterion import RtDetrCriterion
from scaledet.models.rtdetr.decoder import Decoder
from scaledet.models.rtdetr.encoder import HybridEncoder
from scaledet.models.rtdetr.model import RTDETR
from scaledet.models.rtdetr.recipes import RECIPES, from_scratch
from scaledet.models.rtdetr.variants import VARIANTS, RtDetrVariant
from scaledet.models.inputs import typed_options

__all__ = ["VARIANTS", "RECIPES", "from_scratch", "RtDetrVariant", "RTDETR", "build", "assemble", "profile_info", "CHECKPOINT"]

#: COCO's 80 class names in the order of the published RT-DETR heads (label i = i-th category id)
COCO80_CLASS_NAMES: list[str] = [name for name in COCO_NAMES_BY_ID if name != "N/A"]
#: the 80 COCO category ids of the published heads, label order
COCO80_CATEGORY_IDS: list[int] = [i for i, name in enumerate(COCO_NAMES_BY_ID) if name != "N/A"]


def assemble(variant: RtDetrVariant, class_names: list[str] | None = None, name: str = "rtdetr_r50vd",
             overrides: dict[str, Any] | None = None, category_ids: list[int] | None = None) -> RTDETR:
    """Build a randomly initialised RT-DETR from a variant row (``name`` / ``overrides`` go to its config)."""
    backbone = PResNet(variant.block, variant.depths, variant.widths, variant.stem_width, variant.backbone_norm,
                       variant.freeze_stem)
    levels = len(backbone.out_channels)
    encoder = HybridEncoder(backbone.out_channels, variant.encoder_dim, variant.encoder_heads, variant.encoder_ffn_dim,
                            variant.encoder_layers, variant.expansion, variant.dropout)
    decoder = Decoder([variant.encoder_dim] * levels, variant.decoder_dim, variant.decoder_heads,
                      variant.decoder_ffn_dim, variant.decoder_layers, variant.decoder_points, variant.num_classes,
                      variant.num_queries, variant.num_denoising, variant.dropout)
    matcher = FocalHungarianMatcher(variant.cost_class, variant.cost_bbox, variant.cost_giou)
    criterion = RtDetrCriterion(variant.num_classes, matcher, {"loss_vfl": variant.loss_vfl,
                                                               "loss_bbox": variant.loss_bbox,
                                                               "loss_giou": variant.loss_giou})
    return RTDETR(backbone, encoder, decoder, criterion, variant.num_classes, variant.image_size,
                  variant.num_denoising, variant.label_noise_ratio, variant.box_noise_scale,
                  class_names=class_names, name=name, overrides=overrides, category_ids=category_ids)


def _image_size(image_size: int | tuple[int, int] | list[int] | None, default: tuple[int, int]) -> tuple[int, int]:
    if image_size is None:
        return default
    size = (int(image_size), int(image_size)) if isinstance(image_size, int) else tuple(int(s) for s in image_size)
    if len(size) != 2 or any(s <= 0 or s % 32 for s in size):
        raise ValueError(f"RT-DETR image_size must be positive multiples of 32 (the top level's stride), "
                         f"got {image_size}")
    return size


def build(name: str, num_classes: int | None = None, image_size: int | tuple[int, int] | None = None,
          class_names: list[str] | None = None, category_ids: list[int] | None = None, **overrides: Any) -> RTDETR:
    """Build RT-DETR variant ``name`` (see :data:`VARIANTS`), randomly initialised.

    ``num_classes`` defaults to 80 (COCO, class names and category ids of the published heads);
    otherwise names ``"0"``, ``"1"``, ... and ids 1..K unless given.
    """
    if name not in VARIANTS:
        raise ValueError(f"unknown RT-DETR model {name!r}; choose one of {sorted(VARIANTS)}")
    overrides = typed_options(overrides, RtDetrVariant, "RT-DETR", exclude=("image_size",))
    row = VARIANTS[name]
    variant = dataclasses.replace(row, **overrides, image_size=_image_size(image_size, row.image_size))
    variant = dataclasses.replace(variant, num_classes=num_classes or variant.num_classes)
    tokens = sum((variant.image_size[0] // stride) * (variant.image_size[1] // stride) for stride in (8, 16, 32))
    if variant.num_queries > tokens:
        raise ValueError(f"RT-DETR at image_size {variant.image_size} has {tokens} encoder tokens to select "
                         f"num_queries={variant.num_queries} from; give num_queries <= {tokens} or a larger image_size")
    if class_names is not None and len(class_names) != variant.num_classes:
        raise ValueError(f"{len(class_names)} class names given for num_classes={variant.num_classes}")
    coco = variant.num_classes == len(COCO80_CLASS_NAMES)
    class_names = class_names or (list(COCO80_CLASS_NAMES) if coco else [str(i) for i in range(variant.num_classes)])
    if category_ids is None and coco:
        category_ids = list(COCO80_CATEGORY_IDS)
    return assemble(variant, class_names, name, overrides, category_ids)


#: RT-DETR weights files: ours and Hugging Face's (:mod:`.convert`); the class heads (the encoder's
#: proposal scores, one per decoder layer, the denoising label embedding) have K rows, no background
CHECKPOINT = CheckpointSpec(class_head=("decoder.enc_score_head.", "decoder.class_heads.",
                                        "decoder.denoising_class_embed."),
                            class_bias="decoder.enc_score_head.bias",
                            convert=lambda state_dict, model: to_scaledet(state_dict),
                            coco_hint="the Hugging Face hub's PekingU/rtdetr_* model.safetensors files load: download "
                                      "one elsewhere and give its path")


# Zhao et al. 2024, Table 2: COCO val2017 AP at 640x640, T4 TensorRT FP16 FPS, GFLOPs counted as
# 2 x multiply-accumulates (``flops_per_mac``: ``scaledet profile`` compares 2 x our MACs with them)
_PAPER = {
    "rtdetr_r18vd": {"flops_per_mac": 2, "params_m": 20, "gflops": 60, "coco_ap": 46.5, "t4_fps": 217},
    "rtdetr_r34vd": {"flops_per_mac": 2, "params_m": 31, "gflops": 92, "coco_ap": 48.9, "t4_fps": 161},
    "rtdetr_r50vd": {"flops_per_mac": 2, "params_m": 42, "gflops": 136, "coco_ap": 53.1, "t4_fps": 108},
    "rtdetr_r101vd": {"flops_per_mac": 2, "params_m": 76, "gflops": 259, "coco_ap": 54.3, "t4_fps": 74},
}


def _profile_forward(model: RTDETR, batch: Tensor):
    return model.forward_features(batch)


def profile_info(name: str) -> dict:
    """What ``scaledet profile`` needs: native input 640x640, the paper's numbers, the network forward."""
    if name not in _PAPER:
        raise ValueError(f"unknown RT-DETR model {name!r}; choose one of {sorted(_PAPER)}")
    return {"native_size": VARIANTS[name].image_size, "paper": _PAPER[name], "forward": _profile_forward}
