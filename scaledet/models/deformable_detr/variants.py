"""The Deformable DETR variant table (the training recipe: :mod:`scaledet.models.deformable_detr.recipes`).

Variants are rows of one table (:data:`VARIANTS`); ``create_model(name, **overrides)`` replaces
fields of the row with :func:`dataclasses.replace`, so every override is a typed field here. The
three rows are the three models of Zhu et al. 2021, Table 1: plain, with iterative bounding box
refinement, and two-stage (which refines boxes too).
"""

from __future__ import annotations

from dataclasses import dataclass

from scaledet.models.detr.variants import DETR_TRAIN_SCALES


@dataclass(frozen=True)
class DeformableDetrVariant:
    """One Deformable DETR configuration. All fields can be overridden through ``create_model(**overrides)``.

    Architecture fields follow the paper / official code (``main.py`` defaults); ``min_size`` /
    ``max_size`` are the eval resize (shorter side, cap on the longer side) and ``train_min_sizes``
    the shorter sides drawn per batch in training, as DETR's.
    """

    backbone: str = "resnet50"  # torchvision ResNet; C3-C5 (layer2-4) feed the transformer
    backbone_norm: str = "frozen"  # "frozen" (FrozenBatchNorm2d, as published) or "batch" (from scratch)
    backbone_trainable_layers: int = 3  # layer2-4 train, stem + layer1 frozen (official); 5 = all
    num_classes: int = 91  # sigmoid classes, no background (the COCO head predicts ids 0..90)
    hidden_dim: int = 256  # multiple of 32 (GroupNorm(32) in the input projections)
    num_heads: int = 8
    ffn_dim: int = 1024
    enc_layers: int = 6
    dec_layers: int = 6
    enc_points: int = 4  # sampling points per head and level in the encoder
    dec_points: int = 4  # ... in the decoder's cross-attention
    num_feature_levels: int = 4  # C3-C5 and one extra stride-2 level from C5 (at least 3)
    num_queries: int = 300  # object queries (two-stage: proposals kept from the encoder)
    dropout: float = 0.1
    box_refine: bool = False  # iterative bounding box refinement (one class / box head per decoder layer)
    two_stage: bool = False  # encoder proposals as decoder queries (needs box_refine)
    min_size: int = 800
    max_size: int = 1333
    train_min_sizes: tuple[int, ...] = DETR_TRAIN_SCALES  # at min_size 800; scaled with min_size unless given
    top_k: int = 100  # detections per image: the best (query, class) pairs by sigmoid score
    aux_loss: bool = True
    # matcher costs and loss weights (official: focal class 2, L1 5, GIoU 2; focal alpha 0.25, gamma 2)
    cost_class: float = 2.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


VARIANTS: dict[str, DeformableDetrVariant] = {
    "deformable_detr_r50": DeformableDetrVariant(),
    "deformable_detr_r50_box_refine": DeformableDetrVariant(box_refine=True),
    "deformable_detr_r50_two_stage": DeformableDetrVariant(box_refine=True, two_stage=True),
}
